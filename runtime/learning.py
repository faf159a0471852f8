"""The learning loop's commands and schedule (docs/learning.md): `omoide dataset build`,
`omoide train` (curate -> train -> gate -> register -> activate), `omoide adapters ...`, and the
running character's schedule that starts `omoide train` in its own process. runtime/cli.py holds
their arguments.

Like cli.py, this is wiring (layer 3): it reads the configuration and picks the concrete pieces.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from memory import admin as memory_admin
from memory.export import count_turns, export_jsonl, export_memories
from persona_model.adapters import AdapterRegistry, AdapterVersion, RegistryError, diff
from persona_model.prompt import system_text
from persona_model.sliders import SliderError, traits_from
from persona_model.train.curate import CurationSettings, Window, curate, fact_items
from persona_model.train.gate import GateSettings, evaluate_gate
from persona_model.train.jsonl import read_jsonl
from persona_model.train.merge import lineage_parts, merge
from persona_model.train.preference import Marks, PreferenceSettings, marks_from, split, train_preferences
from persona_model.train.rehearsal import with_rehearsal
from persona_model.train.sft import SftSettings
from persona_model.train.sft import train as train_sft
from persona_model.traits import Trait
from runtime import models, parts
from runtime.cli_common import config_from, database_from
from runtime.config import Config, ScheduleConfig, settings
from runtime.errors import StartupError

log = logging.getLogger(__name__)

EXIT_GATE = 4  # `omoide train`: the candidate failed its gate and was not activated


def windows(config: Config) -> list[Path]:
    """The curated update windows, oldest first."""
    folder = config.path(config.learning.folder)
    return sorted(p for p in folder.glob("w[0-9][0-9][0-9][0-9]") if (p / "manifest.json").is_file())


def registry(config: Config) -> AdapterRegistry:
    return models.adapter_registry(config)


def accepted(config: Config, before: Path | None = None) -> list[Path]:
    """Earlier windows whose adapter passed its gate (or that were never trained: a window curated
    before the registry existed). What failed its gate is neither replayed nor a yardstick."""
    versions = registry(config).versions()
    tried = {v.window for v in versions}
    passed = {v.window for v in versions if v.passed}
    return [w for w in windows(config) if (before is None or w.name < before.name)
            and (w.name in passed or w.name not in tried)]


def last_until(config: Config) -> float | None:
    found = windows(config)
    return json.loads((found[-1] / "manifest.json").read_text())["window"]["until"] if found else None


def card_system(config: Config) -> str:
    """The card's system prompt as training and the gate see it."""
    persona, _ = parts.persona_from(config)
    return system_text(persona, "Chat")


def gate_traits(config: Config) -> list[Trait]:
    """The traits the drift gate holds steady ([learning.gate] traits)."""
    try:
        return list(traits_from(config.learning.gate.traits, config.base_dir, "learning.gate.traits").values())
    except SliderError as exc:
        raise StartupError(str(exc)) from None


def build_window(config: Config) -> tuple[Path, Window]:
    """Curate the next update window: everything logged since the last one."""
    database = config.path(config.memory.database)
    since = last_until(config)
    until = dt.datetime.now().timestamp()
    folder = config.path(config.learning.folder) / f"w{len(windows(config)) + 1:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "turns.jsonl", "w", encoding="utf-8") as out:
        export_jsonl(database, out, since=since, scrub=config.learning.scrub_viewers)
    with open(folder / "memories.jsonl", "w", encoding="utf-8") as out:
        export_memories(database, out, since=since, scrub=config.learning.scrub_viewers)
    persona, _ = parts.persona_from(config)
    lc = config.learning
    window = curate(
        folder, folder / "turns.jsonl", folder / "memories.jsonl", system=card_system(config),
        persona_name=persona.name, persona_examples=persona.examples,
        earlier=[p / "train.jsonl" for p in accepted(config, folder)],
        # a merged window's adapter is its own: the earlier ones are merged in, not replayed
        settings=settings(CurationSettings, lc, **({} if lc.method == "replay" else {"replay_share": 0.0})),
        forgotten=memory_admin.forgotten(database),
        window={"id": folder.name, "since": since, "until": until, "database": str(database)})
    return folder, window


def _describe(folder: Path, window: Window) -> str:
    c = window.counts
    return (f"{folder}: {len(window.train)} training examples ({c.get('reply', 0)} replies,"
            f" {c.get('fact_qa', 0)} fact questions{_sources(c)}, {c.get('persona', 0)} persona lines,"
            f" {c.get('replay', 0)} replayed); held out {c['heldout_facts']} fact questions and"
            f" {c['heldout_replies']} replies; left out {c.get('excluded_bad', 0)} bad and"
            f" {c.get('excluded_interrupted', 0)} interrupted replies, {c.get('corrected', 0)} corrected"
            + (f"; {c['facts_pending']} facts from chat wait for your approval (omoide memory pending)"
               if c.get("facts_pending") else "")
            + (f"; {c['facts_blocked']} held back for personal data" if c.get("facts_blocked") else "")
            + (f"; {c['facts_over_cap']} over the per-viewer cap" if c.get("facts_over_cap") else "")
            + (f"; {c['facts_unshaped']} facts with no sentence a question can ask for (\"X is Y\", \"X plays Y\")"
               if c.get("facts_unshaped") else ""))


def _sources(counts: dict[str, int]) -> str:
    """" (from facts: 3 viewers', 1 yours)": where the window's facts came from."""
    names = (("viewer", "viewers'"), ("reflection", "reflections'"), ("operator", "yours"), ("card", "the card's"))
    parts = [f"{counts[f'facts_from_{k}']} {what}" for k, what in names if counts.get(f"facts_from_{k}")]
    return f" (from facts: {', '.join(parts)})" if parts else ""


def cmd_dataset_build(args: argparse.Namespace) -> int:
    config = config_from(args)
    folder, window = build_window(config)
    print(_describe(folder, window))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the next window at low priority, gate it against the live adapter, register it, and
    activate it if it passed. Resumes an interrupted run of the same window."""
    config = config_from(args)
    gate_traits(config)  # a wrong trait list stops here, not after the training
    if args.retrain:
        return cmd_retrain(config, args.steps or 0)
    reg = registry(config)
    found = windows(config)
    if args.window:
        window = config.path(config.learning.folder) / args.window
        if window not in found:
            raise FileNotFoundError(f"no curated window {args.window} in {config.path(config.learning.folder)}")
    elif found and found[-1].name not in {v.window for v in reg.versions()}:
        window = found[-1]  # curated (`omoide dataset build`) but not trained yet
    else:
        window, curated = build_window(config)
        print(_describe(window, curated))
        if not curated.counts.get("reply") and not curated.counts.get("fact_qa") and not curated.counts.get("corrected"):
            shutil.rmtree(window)
            print("nothing new to learn since the last window")
            return 0
    pinned = config.path(config.model.adapter) if config.model.adapter else None
    live = reg.active if reg.active is not None and reg.fits(reg.active) else None  # never train on a misfit
    current = pinned or (reg.path(live.version) if live else None)
    current_name = pinned.name if pinned else (live.version if live else None)
    if config.learning.method == "replay":
        return _train_and_gate(config, window / "train.jsonl", window / "run", window, args.steps or 0,
                               start=current, current=current, current_name=current_name, parent=current_name)
    earlier = lineage_parts(_chain(reg, live) if live and not pinned else [current] if current else [])
    return _train_and_gate(config, window / "train.jsonl", window / "run", window, args.steps or 0, start=None,
                           current=current, current_name=current_name, parent=current_name, merge_with=earlier)


def _chain(reg: AdapterRegistry, version: AdapterVersion) -> list[Path]:
    """A version's folder and its parents', newest first (as far as the registry has them)."""
    out = [reg.path(version.version)]
    while version.parent:
        try:
            version = reg.get(version.parent)
        except RegistryError:  # a pinned adapter outside the registry: its data is not ours to read
            break
        out.append(reg.path(version.version))
    return out


def _train_and_gate(config: Config, data: Path, run: Path, window: Path, steps: int, *, start: Path | None,  # noqa: PLR0913 (the one place every kind of run ends)
                    current: Path | None, current_name: str | None, parent: str | None,
                    merge_with: list[Path] | None = None) -> int:
    """Train `data` (on top of `start`, or a fresh adapter), gate the result against `current` on
    `window`'s held-out sets and the earlier accepted windows', register it, and activate it if it
    passed (and nothing pins another). With `merge_with` (learning.method "ties" or "dare"), what
    is gated and served is the new adapter merged with those earlier windows' adapters."""
    with contextlib.suppress(OSError):
        os.nice(10)  # the live character keeps the CPU it needs
    base = models.model_path(config)
    lc = config.learning
    sft = settings(SftSettings, lc, alpha=2 * lc.rank, max_steps=steps)
    data = with_rehearsal(base, start, data, run / "data.jsonl", lc.rehearsal, lc.seed)  # against forgetting
    result = train_sft(base, data, run, sft, start_adapter=start)
    print(f"{window.name}: {result.steps} steps, {result.tokens} tokens ({result.target_tokens} trained on),"
          f" {result.tokens_per_s:.0f} tokens/s, loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}")
    adapter = result.adapter
    if merge_with is not None and lc.method != "replay":
        adapter = merge(base, [*merge_with, result.adapter], lc.method, run / "merged", lc.seed)
        print(f"merged with {len(merge_with)} earlier window adapter(s) ({lc.method.upper()})")
    held = None
    if lc.preference.enabled:
        adapter, held = preference_stage(config, window, base, adapter, run)
    g = lc.gate
    report = evaluate_gate(base, adapter, current, window, accepted(config, window),
                           settings(GateSettings, g, trait_targets=dict(g.trait_targets),
                                    min_accuracy=lc.preference.min_accuracy),
                           current_name=current_name, traits=gate_traits(config), system=card_system(config),
                           marks=held)
    reg = registry(config)
    entry = reg.register(adapter, parent=parent, window=window.name, base=models.base_of(config),
                         passed=report.passed, metrics=report.metrics())
    report.candidate = entry.version
    report.save(run)
    report.save(reg.path(entry.version))
    print(report.table(), end="")
    if not report.passed:
        print(f"{entry.version} is registered but not activated; the live adapter stays"
              f" {current_name or 'the base model'}. Its report: {run / 'gate.txt'}")
        return EXIT_GATE
    pinned = config.path(config.model.adapter) if config.model.adapter else None
    if lc.activate and pinned is None:
        reg.activate(entry.version)
        print(f"{entry.version} is active: a running character swaps it in before its next reply")
    else:
        why = f"model.adapter pins {pinned}" if pinned else "learning.activate = false"
        print(f"{entry.version} passed and is registered; not activated ({why}):"
              f" `omoide adapters activate {entry.version}`")
    return 0


def preference_stage(config: Config, window: Path, base: Path, adapter: Path, run: Path) -> tuple[Path, Marks | None]:
    """Train `adapter` on the operator's marks (every accepted window's and this one's), some held
    out for the gate; returns the adapter to gate and the held-out marks (None: too few marks)."""
    pc = config.learning.preference
    turns = [w / "turns.jsonl" for w in [*accepted(config, window), window]]
    marks = marks_from(row for path in turns if path.is_file() for row in read_jsonl(path))
    if len(marks) < pc.min_marks:
        if len(marks):
            print(f"{len(marks)} marked replies: the preference stage waits for {pc.min_marks}"
                  " (learning.preference.min_marks)")
        return adapter, None
    train, held = split(marks, pc.heldout)
    print(f"preference stage: {len(train.marks)} good/bad marks (KTO), {len(train.pairs)} corrections (DPO);"
          f" {len(held)} held out for the gate")
    tuned = train_preferences(base, adapter, train, run / "preference",
                              settings(PreferenceSettings, pc, seed=config.learning.seed))
    return tuned, held


def _row(v: AdapterVersion, active: str | None, fits: bool = True) -> str:
    c = v.metrics.get("candidate", {})
    recall = f"{c['recall']:.2f}" if "recall" in c else "-"
    persona = f"{c['persona retention NLL']:.3f}" if "persona retention NLL" in c else "-"
    general = f"{c['general NLL']:.3f}" if "general NLL" in c else "-"
    return (f"{'*' if v.version == active else ' '} {v.version:7} {v.window:7} {v.parent or 'base':9}"
            f" {'passed' if v.passed else 'FAILED':7} {recall:>7} {persona:>9} {general:>8}  {v.created}"
            + ("" if fits else f"  (trained on {v.base}: does not fit the model configured now)"))


def cmd_adapters(args: argparse.Namespace) -> int:
    config = config_from(args)
    reg = registry(config)
    what = args.adapters_command
    if what == "list":
        active = reg.active
        versions = reg.versions()
        if not versions:
            print(f"(no adapters in {reg.folder}; `omoide train` makes the first)")
            return 0
        print(f"  {'version':7} {'window':7} {'parent':9} {'gate':7} {'recall':>7} {'persona':>9} {'general':>8}"
              "  created")
        for v in versions:
            print(_row(v, active.version if active else None, reg.fits(v)))
        print(f"active: {active.version if active else 'none (the base model)'}")
    elif what == "activate":
        print(f"{reg.activate(args.version, force=args.force).version} is active")
    elif what == "rollback":
        back = reg.rollback()
        print(f"rolled back: {back.version if back else 'the base model'} is active")
    elif what == "diff":
        a, b = reg.get(args.a), reg.get(args.b)
        rows = diff(a, b)
        print(f"{'':24}{a.version:>22}{b.version:>22}")
        for name, x, y in rows:
            print(f"{name:<24}{_cell(x):>22}{_cell(y):>22}")
        if not rows:
            print("(no differences)")
    return 0


def _cell(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class TrainingSchedule:
    """Starts `omoide train` in its own process (low priority, its output appended to train.log)
    once `after_turns` new turns are logged, and/or daily at `at` local time. A running character
    picks the result up through its AdapterFollower. Stopping the character stops a run in
    progress; the next one resumes it from its checkpoint."""

    def __init__(self, settings: ScheduleConfig, new_turns: Callable[[], Awaitable[int]], command: list[str],
                 log_file: Path, check_s: float = 30.0, now: Callable[[], dt.datetime] = dt.datetime.now) -> None:
        self.settings = settings
        self.new_turns = new_turns
        self.command = command
        self.log_file = log_file
        self.check_s = check_s
        self.now = now
        self.runs: list[int] = []  # exit codes of the runs started
        self._daily_done: dt.date | None = None

    def due(self, new: int) -> str | None:
        s = self.settings
        if s.after_turns and new >= s.after_turns:
            return f"{new} new turns"
        if s.at and new >= s.min_turns:
            now = self.now()
            hour, minute = map(int, s.at.split(":"))
            if self._daily_done != now.date() and (now.hour, now.minute) >= (hour, minute):
                self._daily_done = now.date()
                return f"daily at {s.at}"
        return None

    async def run(self) -> None:
        if self.settings.at:  # a character started after today's time waits for tomorrow's
            now = self.now()
            if (now.hour, now.minute) >= tuple(map(int, self.settings.at.split(":"))):
                self._daily_done = now.date()
        while True:
            await asyncio.sleep(self.check_s)
            reason = self.due(await self.new_turns())
            if reason is not None:
                self.runs.append(await self._train(reason))

    async def _train(self, reason: str) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("scheduled training starts", extra={"reason": reason, "log": str(self.log_file)})
        out = await asyncio.to_thread(open, self.log_file, "ab")
        try:
            out.write(f"\n== {dt.datetime.now().isoformat(timespec='seconds')}: {reason}\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(*self.command, stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                        stdin=asyncio.subprocess.DEVNULL)
            try:
                code = await proc.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
                raise
        finally:
            out.close()
        log.info("scheduled training ended", extra={"exit_code": code, "activated": code == 0})
        return code


def schedule_from(config: Config) -> TrainingSchedule | None:
    s = config.learning.schedule
    if not s.after_turns and not s.at:
        return None
    database = config.path(config.memory.database)

    async def new_turns() -> int:
        return await asyncio.to_thread(lambda: count_turns(database, last_until(config)))

    command = [sys.executable, "-m", "runtime.cli", *(["--config", str(config.file)] if config.file else []),
               *(["--character", config.chosen] if config.chosen else []), "train"]
    return TrainingSchedule(s, new_turns, command, config.path(config.learning.folder) / "train.log")


def trained_on(config: Config, turns: set[str], memories: set[int]) -> list[AdapterVersion]:
    """The registered adapter versions that learned from any of these turns or memories: those
    whose window held them, and every version trained on top of one of those."""
    hit: list[AdapterVersion] = []
    for v in registry(config).versions():  # oldest first: a parent before its children
        train = config.path(config.learning.folder) / v.window / "train.jsonl"
        examples = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()] if train.is_file() else []
        if v.parent in {h.version for h in hit} or any(
                turns & set(ex.get("source_turns") or []) or ex.get("memory_id") in memories for ex in examples):
            hit.append(v)
    return hit


def cmd_forget(args: argparse.Namespace) -> int:
    """`omoide memory forget VIEWER`, and what it cannot take back: the adapters trained on them."""
    config = config_from(args)
    database = database_from(args, config)
    gone = memory_admin.forget_viewer(database, args.viewer)
    print(f"forgot {gone.viewer}: {len(gone.memories)} memories deleted, {gone.inputs} lines blanked in the log;"
          f" the {len(gone.turns)} turns that answered them are in no later training window or replay,"
          " and nothing they say from now on is learned")
    hit = trained_on(config, set(gone.turns), set(gone.memories))  # before the windows are scrubbed
    rows = scrub_windows(config, set(gone.turns), set(gone.memories))
    if rows:
        print(f"took {rows} rows about them out of the training windows on disk"
              f" ({config.path(config.learning.folder)})")
    if hit:
        active = registry(config).active
        print("adapters already trained on them (their weights still carry it): "
              + ", ".join(f"{v.version} ({v.window}){' live' if active and v.version == active.version else ''}"
                          for v in hit))
        before = [v.version for v in registry(config).versions() if v not in hit and v.passed]
        print("to serve none of it: `omoide train --retrain` (a new adapter from the base model on the live one's"
              " windows as they are now, gated like any), or at once `omoide adapters "
              + (f"activate {before[-1]}`" if before else "rollback` until the base model is live"))
    return 0


def _drop(row: dict[str, Any], name: str, turns: set[str], memories: set[int], said: tuple[set[str], set[str]]) -> bool:
    """Whether a window file's row holds a forgotten viewer: their turns, their memories, and, in
    a gate item about someone else, their name in its control question."""
    if name == "turns.jsonl":
        return row.get("metadata", {}).get("turn_id") in turns
    if name == "memories.jsonl":
        return row.get("id") in memories
    if row.get("memory_id") in memories or turns & set(row.get("source_turns") or []):
        return True
    names, values = said
    if name == "heldout_facts.jsonl":
        row["distractors"] = [d for d in row.get("distractors", []) if d not in values]  # their facts' values
        return not row["distractors"] or any(n in str(row.get("control_question", "")) for n in names)
    return False


def scrub_windows(config: Config, turns: set[str], memories: set[int]) -> int:
    """Take a forgotten viewer out of every curated window on disk (its exports, training set and
    held-out sets; the manifest's hashes follow and it says what was scrubbed). Returns the rows
    removed. What it cannot reach: other turns that had their lines as context keep them."""
    removed = 0
    for folder in windows(config):
        theirs = [m for m in read_jsonl(folder / "memories.jsonl") if m.get("id") in memories] \
            if (folder / "memories.jsonl").is_file() else []
        said = ({str(m["viewer_name"]) for m in theirs if m.get("viewer_name")},
                {qa.value for m in theirs for qa in fact_items(m)})
        manifest = json.loads((folder / "manifest.json").read_text())
        cut = 0
        files = [folder / name for name in ("turns.jsonl", "memories.jsonl", "train.jsonl", "heldout_facts.jsonl",
                                            "heldout_replies.jsonl")]
        for path in [*files, *sorted(folder.glob("retrain-*/train.jsonl"))]:  # and every retrain's set
            if not path.is_file():
                continue
            rows = read_jsonl(path)
            before = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows]
            kept = [r for r in rows if not _drop(r, path.name, turns, memories, said)]  # may edit a row
            after = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in kept]
            if after != before:
                data = "".join(line + "\n" for line in after).encode()
                path.write_bytes(data)
                cut += max(len(rows) - len(kept), 1)
                if path.parent == folder and path.name in manifest.get("hashes", {}):
                    manifest["hashes"][path.name] = hashlib.sha256(data).hexdigest()
        if cut:
            manifest.setdefault("scrubbed", []).append({"at": dt.datetime.now().isoformat(timespec="seconds"),
                                                        "rows": cut, "why": "a viewer was forgotten"})
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            removed += cut
    return removed


def cmd_retrain(config: Config, steps: int) -> int:
    """`omoide train --retrain`: a fresh adapter from the base model on every window the live
    adapter learned from (its own and its parents'), as they are on disk now, so without forgotten
    viewers; gated against the live one on its window's held-out sets, registered and activated
    like any. It learns the same data in one run, not night by night: close, not identical."""
    reg = registry(config)
    live = reg.active
    if live is None or not reg.fits(live):
        print("no adapter of this base model is live: nothing was learned that could be retrained")
        return 0
    lineage = [reg.get(p.name).window for p in _chain(reg, live)]
    root = config.path(config.learning.folder)
    window = root / live.window
    out = window / f"retrain-{len(list(window.glob('retrain-*'))) + 1}"
    examples = [ex for w in sorted(set(lineage)) for ex in read_jsonl(root / w / "train.jsonl")
                if ex.get("kind") != "replay"]  # the originals are all here
    out.mkdir(parents=True)
    (out / "train.jsonl").write_text("".join(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n"
                                             for ex in examples), encoding="utf-8")
    print(f"retraining {live.version} from the base model: {len(examples)} examples from {', '.join(sorted(set(lineage)))}")
    return _train_and_gate(config, out / "train.jsonl", out / "run", window, steps, start=None,
                           current=reg.path(live.version), current_name=live.version, parent=None)
