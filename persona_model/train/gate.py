"""The gate: a candidate adapter is compared with the live one (or the base model) on sets it never
trained on, and passes only if it beats or holds it on each, within margins.

| metric | set | passes when |
|---|---|---|
| recall | this window's held-out fact questions, closed-book, answered in the model's own words | candidate >= current - recall_margin |
| recall minus control | the same, less its control (how often it names that value when asked about someone else) | candidate >= current - recall_margin |
| retention recall | every earlier window's held-out fact questions | candidate >= current - retention_margin |
| retention minus control | the same, less their control | candidate >= current - retention_margin |
| persona NLL | this window's held-out replies | candidate <= current + persona_margin |
| persona retention NLL | earlier windows' held-out replies | candidate <= current + persona_margin |
| general NLL | a fixed plain text (general.txt) | candidate <= current + general_margin |

Recall is a share (greedy answers that name the fact's value and none of its distractors,
evaluate.generated_recall: a forced choice on the bare value barely moves on a model that always
answers in sentences, docs/benchmarks.md); NLL is the mean
negative log-likelihood per token, in nats (a rise of 0.1 is perplexity x1.105). A set with nothing
in it is not scored. The report is written as gate.json and gate.txt either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model.train.evaluate import generated_recall, reply_nll, text_nll
from persona_model.train.jsonl import read_jsonl

GENERAL_TEXT = Path(__file__).with_name("general.txt")
CONTROL = "control_question"  # the held-out question about someone else (curate._recall_item)


@dataclass(frozen=True, slots=True)
class GateSettings:
    recall_margin: float = 0.0  # shares of questions the candidate may lose on this window's facts
    retention_margin: float = 0.05  # ... on earlier windows' facts
    persona_margin: float = 0.1  # nats per token the persona NLLs may rise
    general_margin: float = 0.05  # nats per token the general text NLL may rise


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    items: int
    current: float
    candidate: float
    allowed: float  # the bound the candidate must meet
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        return self.candidate >= self.allowed if self.higher_is_better else self.candidate <= self.allowed


@dataclass
class GateReport:
    window: str
    candidate: str
    current: str  # a version, or "base"
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    settings: GateSettings = GateSettings()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failures(self) -> list[str]:
        return [f"{r.metric} {r.current:.3f} -> {r.candidate:.3f} (allowed {'>=' if r.higher_is_better else '<='}"
                f" {r.allowed:.3f})" for r in self.rows if not r.passed]

    def metrics(self) -> dict[str, Any]:
        """What the registry keeps: each metric for the candidate and for what it was compared with."""
        return {"candidate": {r.metric: round(r.candidate, 4) for r in self.rows},
                "current": {r.metric: round(r.current, 4) for r in self.rows}, "compared_with": self.current}

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "candidate": self.candidate, "current": self.current, "passed": self.passed,
                "failures": self.failures, "seconds": round(self.seconds, 2), "settings": asdict(self.settings),
                "rows": [{**asdict(r), "passed": r.passed} for r in self.rows]}

    def table(self) -> str:
        lines = [f"gate for window {self.window}: candidate {self.candidate} against {self.current}",
                 f"{'metric':<24}{'items':>6}{'current':>10}{'candidate':>11}   {'allowed':<10}verdict"]
        for r in self.rows:
            bound = f"{'>=' if r.higher_is_better else '<='} {r.allowed:.3f}"
            lines.append(f"{r.metric:<24}{r.items:>6}{r.current:>10.3f}{r.candidate:>11.3f}   {bound:<10}"
                         f"{'pass' if r.passed else 'FAIL'}")
        lines.append("=> passed: the candidate may be activated" if self.passed
                     else "=> failed: " + "; ".join(self.failures))
        return "\n".join(lines) + "\n"

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gate.json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
        (folder / "gate.txt").write_text(self.table())


def _read(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def evaluate_gate(base: Path | str, candidate: Path, current: Path | None, window: Path,
                  earlier: Sequence[Path] = (), settings: GateSettings = GateSettings(), *,
                  candidate_name: str = "candidate", current_name: str | None = None) -> GateReport:
    """Score `candidate` against `current` (None: the base model) on `window`'s held-out sets and
    the earlier windows' (folders as curation writes them)."""
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(base)
    plain: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model: Any = PeftModel.from_pretrained(plain.to(device), str(candidate), adapter_name="candidate")
    if current is not None:
        model.load_adapter(str(current), adapter_name="current")
    model.eval()

    facts = _read(window / "heldout_facts.jsonl")
    old_facts = [f for w in earlier for f in _read(w / "heldout_facts.jsonl")]
    replies = _read(window / "heldout_replies.jsonl")
    persona = [r for w in earlier for r in _read(w / "heldout_replies.jsonl")]  # never trained on, like every set here
    general = GENERAL_TEXT.read_text(encoding="utf-8")

    def measure(which: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if which == "current" and current is None:
            with model.disable_adapter():
                return measure_now(out)
        model.set_adapter(which)
        return measure_now(out)

    def measure_now(out: dict[str, float]) -> dict[str, float]:
        if facts:
            out["recall"] = generated_recall(model, tokenizer, facts).share
            out["recall minus control"] = out["recall"] - generated_recall(model, tokenizer, facts, CONTROL).share
        if old_facts:
            out["retention recall"] = generated_recall(model, tokenizer, old_facts).share
            out["retention minus control"] = (out["retention recall"]
                                              - generated_recall(model, tokenizer, old_facts, CONTROL).share)
        if replies:
            out["persona NLL"] = reply_nll(model, tokenizer, replies)
        if persona:
            out["persona retention NLL"] = reply_nll(model, tokenizer, persona)
        out["general NLL"] = text_nll(model, tokenizer, general)
        return out

    now, cand = measure("current"), measure("candidate")
    s = settings
    report = GateReport(window.name, candidate_name, current_name or ("base" if current is None else current.name),
                        settings=settings)
    sizes = {"recall": len(facts), "recall minus control": len(facts), "retention recall": len(old_facts),
             "retention minus control": len(old_facts), "persona NLL": len(replies),
             "persona retention NLL": len(persona), "general NLL": len(tokenizer(general)["input_ids"])}
    bounds = {"recall": (-s.recall_margin, True), "recall minus control": (-s.recall_margin, True),
              "retention recall": (-s.retention_margin, True), "retention minus control": (-s.retention_margin, True),
              "persona NLL": (s.persona_margin, False), "persona retention NLL": (s.persona_margin, False),
              "general NLL": (s.general_margin, False)}
    for metric, value in now.items():
        margin, higher = bounds[metric]
        report.rows.append(Row(metric, sizes[metric], value, cand[metric], value + margin, higher))
    report.seconds = time.perf_counter() - started
    return report
