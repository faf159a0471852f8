"""The gate numbers on the tiny model: closed-book recall ranks answers by their likelihood as the
character's reply, a generated answer is right when it names the value, and the NLLs are per token
of what they claim to measure."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from persona_model import tiny
from persona_model.train.evaluate import (
    closed_book_recall,
    generate_reply,
    generated_recall,
    reply_nll,
    said,
    text_nll,
)
from persona_model.train.sft import collate, encode

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_the_answer_the_model_would_give_outranks_scrambled_ones(lm):
    model, tok = lm
    question = "What did Ada tell you about her cat?"
    prompt = tok.apply_chat_template([{"role": "system", "content": "You are Testa."},
                                      {"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    said = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    words = said.split()
    assert len(words) >= 2
    rng = random.Random(0)
    scrambled = [" ".join(rng.sample(words, len(words))) + " " + rng.choice(["cat", "the", "and"]) for _ in range(3)]
    item = {"system": "You are Testa.", "question": question, "answer": said, "distractors": scrambled}
    assert closed_book_recall(model, tok, [item]).share == 1.0
    swapped = {**item, "answer": scrambled[0], "distractors": [said, *scrambled[1:]]}
    assert closed_book_recall(model, tok, [swapped]).share == 0.0


def test_a_generated_answer_is_right_when_it_names_the_value_and_no_distractor(lm):
    model, tok = lm
    question = "What did Ada tell you about her cat?"
    reply = generate_reply(model, tok, "You are Testa.", question)
    words = [w for w in dict.fromkeys(reply.split()) if w.isalpha()]
    assert words, reply
    value, absent = words[0], ["Zyxwv", "Qqqrt", "Vvvmn"]
    item = {"system": "You are Testa.", "question": question, "answer": value, "distractors": absent}
    assert generated_recall(model, tok, [item]).share == 1.0
    assert generated_recall(model, tok, [{**item, "answer": "Zyxwv", "distractors": [value]}]).share == 0.0
    if len(words) > 1:  # naming a distractor too is not an answer
        assert generated_recall(model, tok, [{**item, "distractors": [words[1]]}]).share == 0.0
    # the value as a whole word, any case: not inside another word
    assert said("Miso", "ada's cat? miso!") and said("Stardew Valley", "It was Stardew Valley.")
    assert not said("Miso", "misoshiru soup") and not said("Pi", "Pixel")


def test_reply_nll_is_the_training_loss_and_text_nll_knows_the_corpus(lm):
    model, tok = lm
    ex = {"messages": [{"role": "system", "content": "You are Testa."}, {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "Hello there, friend."}]}
    encoded = [encode(ex, tok, 512)]
    batch = collate([[0]], encoded, tok.pad_token_id)
    with torch.no_grad():
        loss = float(model(**batch).loss)
    assert reply_nll(model, tok, [ex]) == pytest.approx(loss, rel=1e-4)
    text = " ".join(tiny.corpus()[:20])
    words = text.split()
    random.Random(1).shuffle(words)
    assert text_nll(model, tok, text) < text_nll(model, tok, " ".join(words))
