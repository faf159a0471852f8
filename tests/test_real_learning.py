"""The learning loop on the real bundled model (SmolLM2-135M-Instruct): viewers' facts the
operator approved are trained by `omoide train` and recalled closed-book, in a wording never
trained, above their control (the same question about another viewer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_model.adapters import AdapterRegistry
from runtime.cli import main
from runtime.events import TurnStatus
from tests.conftest import write_config
from tests.test_curation import stream

pytestmark = [pytest.mark.real, pytest.mark.slow]  # about 8 min here (20 on a slow 2-core CPU)

CATS = [("Kavos", "Pickle"), ("Lemek", "Waffle"), ("Danix", "Sprout"), ("Retal", "Noodle")]


def row(report: dict, metric: str) -> dict:
    return next(r for r in report["rows"] if r["metric"] == metric)


async def test_an_approved_fact_is_recalled_closed_book_after_omoide_train(tmp_path, bundled_model_dir, capsys):
    await stream(tmp_path / "omoide.db", [(name, f"my cat is called {cat}", f"{cat} is a lovely name!",
                                           TurnStatus.COMPLETE) for name, cat in CATS])  # and the operator's yes
    config = str(write_config(
        tmp_path, model={"id": str(bundled_model_dir)},
        persona={"name": "Testa", "system_prompt": "You are Testa, a cheerful VTuber."},
        # twice the default passes: at the default 3 epochs this window's four cats came back 0.25,
        # named for any viewer asked about (0.00 above control; ten facts reach 0.80 above,
        # docs/benchmarks.md). The general-text margin is opened: that many passes over a handful of
        # facts wear ordinary text down by more than the default gate allows; what is tested is recall
        learning={"epochs": 6.0, "gate": {"general_margin": 5.0, "persona_margin": 5.0}}))
    assert main(["--config", config, "train"]) == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "training_logs" / "windows" / "w0001" / "run" / "gate.json").read_text())
    print(capsys.readouterr().out)
    recall, above = row(report, "recall"), row(report, "recall minus control")
    assert recall["items"] == len(CATS) and recall["current"] == 0.0  # the base model knows none of them
    # asked "What do you know about the cat of Kavos?" (never trained), with nothing in the prompt,
    # she names Kavos's cat, and not when asked about Lemek
    assert above["candidate"] >= 0.5, report
    assert AdapterRegistry(Path(tmp_path / "training_logs" / "adapters")).active.version == "v0001"
