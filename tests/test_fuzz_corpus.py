"""Every input kept in tests/fuzz/corpus (found by fuzzing or by hand: each broke a parser once)
goes through its parser again: only the parser's own error may come out (tests/fuzz/targets.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
CASES = sorted((d.name, f) for d in CORPUS.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())


def test_every_target_keeps_a_corpus():
    assert {target for target, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_a_kept_input_gets_a_clear_error(target, path):
    TARGETS[target](path.read_bytes())
