"""How the default character sounds: the twenty viewer lines of tests/data/viewer_lines.txt sent as
Twitch chat, one after the other, to the character built from config.toml as a user runs it (the
bundled model, the card, memory recall and history on), and each reply printed as it was spoken.

Beside the replies, two figures that can say no:
  english: the share of a reply's words in Debian's English word list (wamerican), against the
           tiny plumbing model's replies to the same lines (it babbles) as the control;
  on topic: MiniLM cosine between a line and its reply, against the same reply paired with
           another line (shuffled): a model that ignores what it is asked scores the same on both.

    python bench/replies.py [--config config.toml] [--lines tests/data/viewer_lines.txt] [--no-control]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory.embed import Embedder  # noqa: E402
from persona_model import tiny  # noqa: E402
from persona_model.generation import Sampling  # noqa: E402
from persona_model.local import LocalPersonaModel  # noqa: E402
from runtime import bundled  # noqa: E402
from runtime.app import build  # noqa: E402
from runtime.config import Config, load  # noqa: E402
from runtime.events import InputEvent, InputKind, Priority, TurnRecord  # noqa: E402
from tests.conftest import FastClock  # noqa: E402
from tests.quality import english_share  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["mika", "juno_", "pixelfox", "tea_time", "ravenclaw99", "bun", "orbit", "leafy"]


def bench_config(path: str | Path, work: Path, **sections: dict[str, object]) -> Config:
    """config.toml as a user has it, but for what must differ on a bench: a fresh database and
    adapter registry in `work`, silent speakers (they keep real-time pace), no greeting (each
    input gets its reply), no log file; `sections` change more, e.g. game={"enabled": True}."""
    config = load(path)
    changes: dict[str, dict[str, object]] = {
        "memory": {"database": str(work / "bench.db")}, "audio": {"output": "silent"},
        "learning": {"adapters": str(work / "adapters")}, "character": {"greet": False}, "log": {"file": ""},
        "avatar": {"enabled": False}}
    for name, values in sections.items():
        changes[name] = {**changes.get(name, {}), **values}
    return config.model_copy(update={name: getattr(config, name).model_copy(update=values)
                                     for name, values in changes.items()})


def viewer_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


async def conversation(config: Config, lines: list[str], model: LocalPersonaModel | None = None) -> list[TurnRecord]:
    """Each line as Twitch chat from a viewer, answered before the next is sent (speech plays on a
    clock 50x faster than real time: what is said does not depend on it)."""
    app = await build(config, model=model, console=False, clock=FastClock(50))
    records: list[TurnRecord] = []
    done = asyncio.Event()

    def on_turn(record: TurnRecord) -> None:
        records.append(record)
        done.set()

    app.director.on_turn = on_turn
    task = asyncio.create_task(app.director.run(), name="bench-director")
    try:
        for i, line in enumerate(lines):
            done.clear()
            app.director.submit(InputEvent(InputKind.CHAT, line, "twitch", app.director.cast.clock.now(),
                                           NAMES[i % len(NAMES)], Priority.NORMAL,
                                           meta={"untrusted": True, "user_id": str(1000 + i % len(NAMES))}))
            await done.wait()
    finally:
        app.director.stop()
        await task
        await app.aclose()
    return records


def on_topic(embedder: Embedder, lines: list[str], replies: list[str]) -> tuple[float, float]:
    """Mean cosine of each line with its reply, and with the next line's reply (the control)."""
    a, b = embedder.encode(lines), embedder.encode([r or "-" for r in replies])
    own = [float(a[i] @ b[i]) for i in range(len(lines))]
    shuffled = [float(a[i] @ b[(i + 1) % len(lines)]) for i in range(len(lines))]
    return statistics.mean(own), statistics.mean(shuffled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "config.toml"))
    p.add_argument("--lines", default=str(ROOT / "tests" / "data" / "viewer_lines.txt"))
    p.add_argument("--no-control", action="store_true", help="skip the tiny model's control run")
    args = p.parse_args()
    lines = viewer_lines(Path(args.lines))
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(args.config, Path(tmp))
        started = time.monotonic()
        records = asyncio.run(conversation(config, lines))
        took = time.monotonic() - started
        print(f"{len(lines)} viewer lines to {records[0].persona} ({records[0].model}), default configuration,"
              f" temperature {config.model.temperature}, {took:.0f} s\n")
        for line, rec, name in zip(lines, records, NAMES * 3, strict=False):
            print(f"{name}: {line}\n{rec.persona}: {rec.spoken_text}\n")
        replies = [r.spoken_text for r in records]
        control: list[str] = []
        if not args.no_control:
            tiny_dir = Path(tmp) / "tiny"
            tiny.build(tiny_dir)
            model = LocalPersonaModel.load(tiny_dir, name="tiny", sampling=Sampling(max_new_tokens=60, seed=1))
            control_config = bench_config(args.config, Path(tmp), memory={"database": str(Path(tmp) / "control.db")})
            control = [r.spoken_text for r in asyncio.run(conversation(control_config, lines, model))]
        embedder = Embedder(bundled.locate("embedding"))
        own, shuffled = on_topic(embedder, lines, replies)
        words = [len(r.split()) for r in replies]
        print(f"words per reply: median {statistics.median(words):.0f} (min {min(words)}, max {max(words)})")
        share = statistics.mean(english_share(r) for r in replies)
        print(f"english words: {share:.2f}" + (f" (control, the tiny plumbing model: "
                                               f"{statistics.mean(english_share(r) for r in control):.2f})"
                                               if control else ""))
        print(f"on topic (MiniLM cosine, line to its reply): {own:.3f}; the same replies shuffled: {shuffled:.3f}")
        failed = [dataclasses.asdict(r)["status"] for r in records if str(r.status) != "complete"]
        if failed:
            print(f"turns not complete: {failed}")


if __name__ == "__main__":
    main()
