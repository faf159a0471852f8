"""Coverage-guided fuzzing of one parser with atheris (pip install atheris):

    python tests/fuzz/run.py card -max_total_time=120 /tmp/corpus-card

TARGET is one of card, schema, config, game_frame (tests/fuzz/targets.py). An input that breaks
the rule (anything but the parser's own error) is written to tests/fuzz/corpus/TARGET/, where
tests/test_fuzz_corpus.py replays it in every test run; the other arguments are libFuzzer's.
Seed the corpus with good inputs (a card, config.toml, frames of each command) to start deep.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["persona_model", "plugins", "runtime", "tomllib"]):
    from tests.fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        raise SystemExit(f"usage: run.py TARGET [libFuzzer options] [corpus dirs]; TARGET: {', '.join(TARGETS)}")
    name = sys.argv.pop(1)
    crashes = ROOT / "tests" / "fuzz" / "corpus" / name
    crashes.mkdir(parents=True, exist_ok=True)
    atheris.Setup([sys.argv[0], f"-artifact_prefix={crashes}/", *sys.argv[1:]], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
