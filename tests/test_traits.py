"""Traits measured as behaviour (docs/traits.md): the trait files, the two measures on the bundled
SmolLM2-135M (the likelihood of hand-written high and low replies; a classifier on MiniLM
embeddings of replies), each beside its control, and steering vectors that move a trait and load
in llama.cpp's control-vector format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_model import steering
from persona_model.card import load_card
from persona_model.prompt import system_text
from persona_model.traits import TraitError, bundled_traits, load_trait, parse_trait, steering_prompts
from persona_model.traits.classify import held_out_accuracy
from persona_model.traits.measure import likelihood_score

pytestmark = pytest.mark.model

KOMOREBI = "persona_model/characters/komorebi.json"
UNRELATED = "You like to mention the weather now and then."  # an instruction about no trait: the control


@pytest.fixture(scope="module")
def card() -> str:
    persona, _ = load_card(KOMOREBI)
    return system_text(persona, "viewer")


def test_each_trait_has_forty_situations_with_replies_of_about_the_same_length():
    traits = bundled_traits()
    assert list(traits) == ["energy", "warmth", "sass"]
    for trait in traits.values():
        assert len(trait.situations) >= 40
        assert len({s.prompt for s in trait.situations}) == len(trait.situations)
        high = np.mean([len(s.high.split()) for s in trait.situations])
        low = np.mean([len(s.low.split()) for s in trait.situations])
        assert abs(high - low) / low < 0.1, (trait.name, high, low)  # length is not what separates them


def test_a_broken_trait_file_is_refused_naming_what_is_wrong(tmp_path):
    good = {
        "trait": "t", "definition": "d", "high": {"label": "h", "instruction": "be h"},
        "low": {"label": "l", "instruction": "be l"}, "situations": [["s", "h", "l"]] * 40}
    assert len(parse_trait(good).situations) == 40
    with pytest.raises(TraitError, match="situations\\[3\\] must be"):
        parse_trait({**good, "situations": [["s", "h", "l"]] * 3 + [["s", "h"]] + [["s", "h", "l"]] * 40})
    with pytest.raises(TraitError, match="12 situations; a trait needs at least 40"):
        parse_trait({**good, "situations": [["s", "h", "l"]] * 12})
    with pytest.raises(TraitError, match="high.instruction must be a non-empty string"):
        parse_trait({**good, "high": {"label": "h", "instruction": " "}})
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(TraitError, match="broken.json: not a readable JSON trait file"):
        load_trait(bad)


def instructed(model, tok, card, trait, situations=None):
    return {label: likelihood_score(model, tok, f"{card}\n\n{line}" if line else card, trait, situations)
            for label, line in (("plain", ""), ("high", trait.high.instruction), ("low", trait.low.instruction),
                                ("unrelated", UNRELATED))}


def test_the_likelihood_measure_follows_an_explicit_instruction_on_the_real_model(real_model, card):
    """Asked for energy in the prompt, the character prefers the energetic replies; asked for calm,
    the calm ones; an instruction about no trait moves the score far less than either. (Every
    other situation, to keep the default run short; the slow test scores all of every trait.)"""
    energy = bundled_traits()["energy"]
    s = instructed(real_model.model, real_model.tokenizer, card, energy, energy.situations[::2])
    assert s["high"].score > s["plain"].score > s["low"].score, {k: str(v) for k, v in s.items()}
    assert s["high"].high_share > s["low"].high_share
    assert s["high"].score - s["low"].score > 3 * abs(s["unrelated"].score - s["plain"].score)


@pytest.mark.slow
def test_every_traits_likelihood_measure_follows_an_explicit_instruction(real_model, card):
    for trait in bundled_traits().values():
        s = instructed(real_model.model, real_model.tokenizer, card, trait)
        assert s["high"].score > s["low"].score, (trait.name, {k: str(v) for k, v in s.items()})
        assert s["high"].score - s["low"].score > 3 * abs(s["unrelated"].score - s["plain"].score), trait.name


def test_the_reply_classifier_separates_held_out_pairs_and_shuffled_labels_do_not():
    from memory.embed import Embedder, bundled_path

    embed = Embedder(bundled_path()).encode
    for trait in bundled_traits().values():
        result = held_out_accuracy(embed, trait)
        assert result.pairs >= 0.8, (trait.name, result)
        assert result.shuffled <= 0.65, (trait.name, result)  # chance is 0.5


def test_a_steering_vector_moves_its_trait_on_the_real_model_in_the_intended_direction(real_model, card):
    m, tok = real_model.model, real_model.tokenizer
    trait = bundled_traits()["energy"]
    vector = steering.compute(m, tok, trait, steering_prompts(), layer=12, system=card)
    steer = steering.Steerer(m)
    steer.add(vector)
    try:
        scores = {}
        for c in (-4.0, 0.0, 4.0):
            steer.set("energy", c)
            scores[c] = likelihood_score(m, tok, card, trait, trait.situations[1::2]).score
    finally:
        steer.close()
    assert scores[4.0] > scores[0.0] > scores[-4.0], scores


def test_steering_is_added_where_llama_cpp_adds_it_and_the_file_reads_back(tiny_model, tmp_path):
    m, tok = tiny_model.model, tiny_model.tokenizer
    hidden = m.config.hidden_size
    direction = np.linspace(-1, 1, hidden).astype(np.float32)
    vec = steering.SteeringVector("energy", 0, direction)
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    layers = steering.decoder_layers(m)
    seen = []  # what layer 1 reads: layer 0's output as the model passes it on
    watch = layers[1].register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        (args[0] if args else kwargs["hidden_states"]).clone()), with_kwargs=True)
    try:
        with torch.inference_mode():
            before = m(input_ids=ids).logits
            steer = steering.Steerer(m)
            steer.add(vec)
            steer.set("energy", 0.5)
            m(input_ids=ids)
            steer.close()
            assert torch.equal(m(input_ids=ids).logits, before)  # close() takes it all back
    finally:
        watch.remove()
    assert torch.allclose(seen[1] - seen[0], torch.from_numpy(direction * 0.5).expand_as(seen[0]), atol=1e-5)

    one = steering.SteeringVector("energy", 1, direction)  # llama.cpp's files start at layer 1
    path = steering.export_gguf([(one, 0.5), (steering.SteeringVector("sass", 1, direction), 1.0)],
                                tmp_path / "komorebi.gguf", model_hint="llama")
    assert steering.read_gguf(path).keys() == {1}
    np.testing.assert_allclose(steering.read_gguf(path)[1], direction * 1.5, rtol=1e-6)
    with pytest.raises(steering.SteeringError, match="shape \\(3,\\) does not fit this model"):
        steer.add(steering.SteeringVector("warmth", 1, direction[:3]))
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(steering.SteeringError, match="junk.gguf: not a GGUF file"):
        steering.read_gguf(tmp_path / "junk.gguf")


@pytest.mark.slow
def test_a_trait_lora_moves_its_trait_on_the_real_model_with_its_scale(bundled_model_dir, real_model, card, tmp_path):
    """Trained on hand-written energetic replies to messages the measure never scores, with the card
    alone in the prompt: scale 1 scores higher than the plain model, scale -1 lower."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from persona_model.train.sft import SftSettings, train
    from persona_model.traits.lora import set_scale, written_examples

    trait = bundled_traits()["energy"]
    examples = written_examples(card, "energy")
    scored = {s.prompt for s in trait.situations}
    assert not scored & {e["messages"][1]["content"] for e in examples}  # never a measured situation
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    result = train(bundled_model_dir, data, tmp_path / "adapter", SftSettings(epochs=2.0), progress=False)
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bundled_model_dir), str(result.adapter)).eval()
    tok = real_model.tokenizer
    scores = {}
    for scale in (-1.0, 0.0, 1.0):
        set_scale(lora, scale)
        scores[scale] = likelihood_score(lora, tok, card, trait).score
    assert scores[1.0] > scores[0.0] > scores[-1.0], scores


@pytest.mark.slow
def test_the_drift_gate_refuses_a_candidate_that_moves_a_trait_unless_the_target_asks_for_it(
        bundled_model_dir, card, tmp_path):
    """A candidate trained on energetic replies moves energy far past the margin: refused, in the
    same report as the other gates; a new LoRA (no change) passes; and with a target that asks for
    more energy the same energetic candidate passes, the live one being further from it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from persona_model.train.gate import GateSettings, evaluate_gate
    from persona_model.train.sft import SftSettings, train
    from persona_model.traits.lora import written_examples

    energy = bundled_traits()["energy"]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in written_examples(card, "energy")))
    energetic = train(bundled_model_dir, data, tmp_path / "energetic", SftSettings(epochs=2.0), progress=False).adapter
    unchanged = tmp_path / "unchanged"
    get_peft_model(AutoModelForCausalLM.from_pretrained(bundled_model_dir),
                   LoraConfig(r=8, target_modules="all-linear")).save_pretrained(str(unchanged))
    window = tmp_path / "w0001"
    window.mkdir()  # no facts or replies: the general text and the trait are scored

    def gate(candidate, **targets):
        report = evaluate_gate(bundled_model_dir, candidate, None, window, settings=GateSettings(
            trait_margin=0.1, trait_targets=targets), traits=[energy], system=card)
        return report, next(r for r in report.rows if r.metric == "trait: energy")

    report, row = gate(energetic)
    assert not report.passed and not row.passed and row.candidate - row.current > 0.3, report.table()
    assert "trait: energy" in report.table() and "FAIL" in report.table() and "general NLL" in report.table()
    same, row0 = gate(unchanged)
    assert row0.passed and abs(row0.candidate - row0.current) < 1e-6
    wanted, row2 = gate(energetic, energy=row.candidate)  # the streamer asks for her more energetic
    assert row2.passed and row2.allowed > 0.3, wanted.table()


def test_separability_says_no_to_two_speakers_who_say_the_same_and_yes_to_two_who_do_not():
    import numpy as np

    from persona_model.traits.classify import separability

    rng = np.random.default_rng(3)
    topics = rng.normal(size=(24, 16))  # what each question is about
    same = np.vstack([topics, topics + rng.normal(scale=0.01, size=topics.shape)])  # twins, one per speaker
    labels, groups = [0] * 24 + [1] * 24, list(range(24)) * 2
    assert separability(same, labels, groups) == 0.5  # nothing tells them apart: chance, not below
    assert separability(same, labels) < 0.3  # twins split across folds would call it worse than chance
    style = np.zeros(16)
    style[0] = 3.0  # one speaker's lines lean one way, whatever the topic
    apart = np.vstack([topics + style, topics - style])
    assert separability(apart, labels, groups) >= 0.9
    assert 0.25 <= np.mean([separability(apart, labels, groups, shuffle_seed=s) for s in range(5)]) <= 0.75
