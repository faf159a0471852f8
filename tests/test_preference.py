"""Learning from the operator's marks (docs/learning.md#marks): the marks a streamer gives replies
reach the preference stage as KTO's unpaired thumbs and DPO's corrected pairs, some held out; and
on the bundled model, trained on a generated set of marks (warm replies liked, cold ones disliked
or corrected), the adapter ranks held-out liked replies above disliked ones, where the start
adapter could not and where the same marks with their labels shuffled do not teach it."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from memory.export import export_jsonl
from memory.review import review
from persona_model.train.preference import Mark, Marks, Pair, PreferenceSettings, marks_from, split
from tests.conftest import running, write_config
from tests.fakes import ScriptedModel
from tests.harness import until
from tests.test_live_loop import say


async def test_the_operators_marks_become_unpaired_thumbs_and_corrected_pairs(tmp_path):
    async with running(write_config(tmp_path), ScriptedModel("Whatever, I guess.")) as (app, records):
        for n, text in enumerate(["hi!", "I failed my exam", "what's your name?", "good night"], 1):
            say(app, text)
            await until(lambda n=n: len(records) == n)
        await app.memory.flush()
    db = tmp_path / "omoide.db"
    review(db, records[0].turn_id, "good")
    review(db, records[1].turn_id, "corrected", "Oh no, I'm sorry. You'll get it next time!")
    review(db, records[2].turn_id, "bad")  # the fourth is not marked
    out = io.StringIO()
    export_jsonl(db, out)
    marks = marks_from(json.loads(line) for line in out.getvalue().splitlines())
    assert [(m.reply, m.liked) for m in marks.marks] == [("Whatever, I guess.", True), ("Whatever, I guess.", False)]
    assert [(p.chosen, p.rejected) for p in marks.pairs] == [
        ("Oh no, I'm sorry. You'll get it next time!", "Whatever, I guess.")]
    assert marks.pairs[0].prompt[-1] == ("user", "viewer: I failed my exam")  # what she was answering
    assert marks.marks[1].turn_id == records[2].turn_id


def test_held_out_marks_are_never_trained_on_and_stay_held_out_as_marks_come():
    prompt = (("user", "hi"),)
    marks = Marks([Mark(prompt, f"liked {i}", i % 3 > 0, f"turn{i}") for i in range(60)],
                  [Pair(prompt, f"fixed {i}", f"said {i}", f"pair{i}") for i in range(20)])
    train, held = split(marks, 0.25)
    assert 0.15 < len(held) / len(marks) < 0.35 and len(train) + len(held) == len(marks)
    assert not {m.turn_id for m in train.marks} & {m.turn_id for m in held.marks}
    assert not {p.turn_id for p in train.pairs} & {p.turn_id for p in held.pairs}
    more = Marks(marks.marks + [Mark(prompt, f"new {i}", True, f"new{i}") for i in range(40)], marks.pairs)
    assert {m.turn_id for m in held.marks} <= {m.turn_id for m in split(more, 0.25)[1].marks}  # a later window too


SHORT_CARD = "You are Komorebi, a VTuber who streams cozy games. Answer the viewer in one or two sentences."


def generated_marks(situations, system: str, shuffle: bool = False, seed: int = 0) -> Marks:
    """Marks a streamer who likes warmth would give: every third reply liked (warm), every third
    disliked (cold), every third corrected from cold to warm; `shuffle`: which of each two replies
    is liked drawn at random (the control)."""
    rng = random.Random(seed)
    out = Marks()
    for i, s in enumerate(situations):
        good, bad = (s.high, s.low) if not (shuffle and rng.random() < 0.5) else (s.low, s.high)
        prompt = (("system", system), ("user", s.prompt))
        if i % 3 == 0:
            out.marks.append(Mark(prompt, good, True))
        elif i % 3 == 1:
            out.marks.append(Mark(prompt, bad, False))
        else:
            out.pairs.append(Pair(prompt, good, bad))
    return out


@pytest.mark.slow
def test_the_preference_stage_lifts_held_out_reward_accuracy_and_shuffled_marks_do_not(bundled_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_model.train.preference import reward_accuracy, train_preferences
    from persona_model.traits import bundled_traits

    card = SHORT_CARD  # her whole card makes each of the 80 rows five times as long: minutes more, same lesson
    warmth = bundled_traits()["warmth"].situations
    held = generated_marks(warmth[30:], card)  # 12 situations no mark in training comes from
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    start = tmp_path / "start"
    get_peft_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir),
                   LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).save_pretrained(str(start))

    def accuracy(adapter: Path) -> float:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bundled_model_dir), str(adapter)).eval()
        return reward_accuracy(model, tok, held)[0]

    before = accuracy(start)
    assert before == 0.5  # a new LoRA is the base model: every reward is 0
    learned = accuracy(train_preferences(bundled_model_dir, start, generated_marks(warmth[:30], card),
                                         tmp_path / "liked", PreferenceSettings(epochs=2.0)))
    shuffled = accuracy(train_preferences(bundled_model_dir, start, generated_marks(warmth[:30], card, shuffle=True),
                                          tmp_path / "shuffled", PreferenceSettings(epochs=2.0)))
    print(f"held-out reward accuracy: start {before:.2f}, liked marks {learned:.2f}, shuffled marks {shuffled:.2f}")
    assert learned >= 0.7 and learned > before, (before, learned, shuffled)
    assert shuffled < learned - 0.15, (learned, shuffled)


async def test_omoide_train_runs_the_preference_stage_on_the_marks_and_gates_it(tiny_model_dir, tmp_path, capsys):
    """Plumbing, on the tiny model: twelve marked replies reach KTO and DPO inside `omoide train`,
    the held-out ones are scored in the same gate report, and too few marks skip the stage."""
    from memory.review import review as mark
    from runtime.cli import main
    from runtime.events import TurnStatus
    from tests.test_curation import stream

    db = tmp_path / "omoide.db"
    lines = [(f"Viewer{i}", f"question number {i}?", f"Answer number {i}.", TurnStatus.COMPLETE) for i in range(12)]
    ids = await stream(db, lines)
    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)}, learning={
        "seq_len": 256, "rows": 2, "gate": {"recall_margin": 1.0, "persona_margin": 99.0, "general_margin": 99.0},
        "preference": {"min_marks": 13, "epochs": 1.0, "min_accuracy": 0.0}}))
    for turn in ids[:4]:
        mark(db, turn, "good")
    for turn in ids[4:8]:
        mark(db, turn, "bad")
    for turn in ids[8:]:
        mark(db, turn, "corrected", "A better answer, kinder and shorter.")
    assert main(["--config", config, "train", "--steps", "2"]) == 0
    assert "12 marked replies: the preference stage waits for 13" in capsys.readouterr().out

    from persona_model.train.preference import held_out
    held = [t for t in ids if held_out(t, 0.25)]
    config = str(write_config(tmp_path, model={"id": str(tiny_model_dir)}, learning={
        "seq_len": 256, "rows": 2, "gate": {"recall_margin": 1.0, "persona_margin": 99.0, "general_margin": 99.0},
        "preference": {"min_marks": 8, "epochs": 1.0, "min_accuracy": 0.0}}))
    assert main(["--config", config, "train", "--window", "w0001", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"preference stage: {8 - sum(t in held for t in ids[:8])} good/bad marks (KTO)" in out, out
    assert f"{4 - sum(t in held for t in ids[8:])} corrections (DPO); {len(held)} held out for the gate" in out
    report = json.loads((tmp_path / "training_logs" / "windows" / "w0001" / "run" / "gate.json").read_text())
    liked, disliked = sum(t in held for t in ids[:4]), sum(t in held for t in ids[4:8])
    duels = liked * disliked + sum(t in held for t in ids[8:])
    rows = [r for r in report["rows"] if r["metric"] == "marks: reward accuracy"]
    assert [r["items"] for r in rows] == ([duels] if duels else []), report["rows"]
    assert (tmp_path / "training_logs" / "windows" / "w0001" / "run" / "preference" / "adapter").is_dir()
