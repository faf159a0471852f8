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
| trait: NAME | the trait's 42 situations under the card (traits.measure.likelihood_score) | within trait_margin of its target (default: the current one's score), or no further than the current one |
| marks: reward accuracy | the operator's held-out marks (preference.reward_accuracy) | candidate >= max(min_accuracy, current) |

Recall is a share (greedy answers that name the fact's value and none of its distractors,
evaluate.generated_recall: a forced choice on the bare value barely moves on a model that always
answers in sentences, docs/benchmarks.md); NLL is the mean
negative log-likelihood per token, in nats (a rise of 0.1 is perplexity x1.105). A set with nothing
in it is not scored. A trait score is in nats per token (docs/traits.md): the strongest prompt
instruction moves one by about 0.1, a trait LoRA by about 1; the trait rows are the drift gate,
which keeps what she learns from chat from changing who she is. The report is written as
gate.json and gate.txt either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model.train.evaluate import generated_recall, reply_nll, text_nll
from persona_model.train.jsonl import read_jsonl
from persona_model.train.preference import Marks, reward_accuracy
from persona_model.traits import Trait
from persona_model.traits.measure import likelihood_score

GENERAL_TEXT = Path(__file__).with_name("general.txt")
CONTROL = "control_question"  # the held-out question about someone else (curate._recall_item)


@dataclass(frozen=True, slots=True)
class GateSettings:
    recall_margin: float = 0.0  # shares of questions the candidate may lose on this window's facts
    retention_margin: float = 0.05  # ... on earlier windows' facts
    persona_margin: float = 0.1  # nats per token the persona NLLs may rise
    general_margin: float = 0.05  # nats per token the general text NLL may rise
    trait_margin: float = 0.1  # nats per token a trait score may move from its target
    trait_targets: Mapping[str, float] = field(default_factory=dict)  # trait -> score; unnamed: the current one's
    min_accuracy: float = 0.7  # held-out marks: the share of (liked, disliked) pairs ranked right, at least


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    items: int
    current: float
    candidate: float
    allowed: float  # the bound the candidate must meet (with a target: how far from it it may be)
    higher_is_better: bool
    target: float | None = None  # two-sided: |candidate - target| <= allowed

    @property
    def passed(self) -> bool:
        if self.target is not None:
            return abs(self.candidate - self.target) <= self.allowed + 1e-9
        return self.candidate >= self.allowed if self.higher_is_better else self.candidate <= self.allowed

    @property
    def bound(self) -> str:
        if self.target is not None:
            return f"{self.target:+.3f} ± {self.allowed:.3f}"
        return f"{'>=' if self.higher_is_better else '<='} {self.allowed:.3f}"


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
        return [f"{r.metric} {r.current:.3f} -> {r.candidate:.3f} (allowed {r.bound})" for r in self.rows if not r.passed]

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
                 f"{'metric':<24}{'items':>6}{'current':>10}{'candidate':>11}   {'allowed':<16}verdict"]
        for r in self.rows:
            lines.append(f"{r.metric:<24}{r.items:>6}{r.current:>10.3f}{r.candidate:>11.3f}   {r.bound:<16}"
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
                  candidate_name: str = "candidate", current_name: str | None = None,
                  traits: Sequence[Trait] = (), system: str = "", marks: Marks | None = None) -> GateReport:
    """Score `candidate` against `current` (None: the base model) on `window`'s held-out sets and
    the earlier windows' (folders as curation writes them), on `traits` under `system` (the
    card's prompt), and on the operator's held-out `marks`."""
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
    duels = 0 if marks is None else marks.duels

    def measure(which: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if which == "current" and current is None:
            with model.disable_adapter():
                return measure_now(out, base=True)
        model.set_adapter(which)
        return measure_now(out)

    def measure_now(out: dict[str, float], base: bool = False) -> dict[str, float]:
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
        for trait in traits:
            out[f"trait: {trait.name}"] = likelihood_score(model, tokenizer, system, trait).score
        if marks is not None and duels:  # the base model is its own reference: every reward 0, every pair a tie
            out["marks: reward accuracy"] = 0.5 if base else reward_accuracy(model, tokenizer, marks)[0]
        return out

    now, cand = measure("current"), measure("candidate")
    report = GateReport(window.name, candidate_name, current_name or ("base" if current is None else current.name),
                        settings=settings)
    sizes = {"recall": len(facts), "recall minus control": len(facts), "retention recall": len(old_facts),
             "retention minus control": len(old_facts), "persona NLL": len(replies),
             "persona retention NLL": len(persona), "general NLL": len(tokenizer(general)["input_ids"])}
    report.rows = _rows(now, cand, sizes, settings, {t.name: len(t.situations) for t in traits}, duels)
    report.seconds = time.perf_counter() - started
    return report


def _rows(now: dict[str, float], cand: dict[str, float], sizes: dict[str, int], s: GateSettings,
          traits: dict[str, int], duels: int) -> list[Row]:
    """Each metric's row: the candidate's value, the current one's, and the bound it must meet."""
    bounds = {"recall": (-s.recall_margin, True), "recall minus control": (-s.recall_margin, True),
              "retention recall": (-s.retention_margin, True), "retention minus control": (-s.retention_margin, True),
              "persona NLL": (s.persona_margin, False), "persona retention NLL": (s.persona_margin, False),
              "general NLL": (s.general_margin, False)}
    rows = []
    for metric, value in now.items():
        if metric.startswith("trait: "):
            name = metric.removeprefix("trait: ")
            target = s.trait_targets.get(name, value)
            allowed = max(s.trait_margin, abs(value - target))  # within the margin, or no further than now
            rows.append(Row(metric, traits[name], value, cand[metric], allowed, False, target))
        elif metric == "marks: reward accuracy":  # at least min_accuracy, and no worse than the live one
            rows.append(Row(metric, duels, value, cand[metric], max(s.min_accuracy, value), True))
        else:
            margin, higher = bounds[metric]
            rows.append(Row(metric, sizes[metric], value, cand[metric], value + margin, higher))
    return rows
