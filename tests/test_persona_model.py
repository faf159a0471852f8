"""The local backend on a tiny Llama model built on the spot (no network)."""

import asyncio
import gc
import threading
import time

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model

from persona_model.generation import Sampling
from persona_model.local import LocalPersonaModel
from persona_model.prompt import PromptRenderer, memory_text
from runtime.events import ChatMessage, InputEvent, InputKind, Memory, Persona, PromptContext
from tests.test_adapters import fake_adapter

pytestmark = pytest.mark.model


def ctx(text="hello there", history=(), memories=()):
    return PromptContext(Persona("Aiko", description="A test streamer."),
                         (InputEvent(InputKind.CHAT, text, "test", 0.0, "bob"),), tuple(history), tuple(memories))


async def collect(model, prompt):
    return [piece async for piece in model.stream(prompt)]


async def test_a_reply_streams_in_pieces_and_is_reproducible_with_a_seed(tiny_model):
    prompt = tiny_model.render(ctx())
    assert prompt.text.startswith("<|im_start|>system\n")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert "bob: hello there" in prompt.text
    pieces = await collect(tiny_model, prompt)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert pieces == await collect(tiny_model, prompt)


async def test_closing_the_stream_stops_generation_promptly(tiny_model_dir):
    model = LocalPersonaModel.load(tiny_model_dir, sampling=Sampling(max_new_tokens=2000, temperature=1.0, seed=1,
                                                                     repetition_penalty=1.0))
    model.model.generation_config.eos_token_id = None  # never ends by itself
    stream = model.stream(model.render(ctx()))
    await anext(stream)
    await stream.aclose()
    t = time.monotonic()
    assert await asyncio.to_thread(model.join, 5), "generation went on after the stream was closed"
    assert time.monotonic() - t < 1.0
    assert model.last_stats.stopped_early
    assert model.last_stats.new_tokens < 100


async def test_replies_run_on_one_long_lived_thread_that_ends_with_the_model(tiny_model_dir):
    # a thread per reply made a night's stream grow in native memory (docs/benchmarks.md, soak)
    model = LocalPersonaModel.load(tiny_model_dir, sampling=Sampling(max_new_tokens=8, seed=1))
    before = set(threading.enumerate())  # the threads themselves: an ended thread's id is given again
    for i in range(6):
        stream = model.stream(model.render(ctx(f"message {i}")))
        await anext(stream)
        if i % 2:
            await stream.aclose()  # closed early, as an interrupted turn does
        else:
            async for _ in stream:
                pass
    assert model.join(5)
    made = [t for t in threading.enumerate() if t not in before and t.name == "persona-generate"]
    assert len(made) == 1, f"{len(made)} generation threads for six replies"
    thread = made[0]
    del model, stream
    gc.collect()
    thread.join(5)
    assert not thread.is_alive(), "the generation thread outlived its model"


async def test_the_prompt_and_the_reply_fit_in_the_models_positions(tiny_model_dir):
    # a 300-position model asked for 2,048-token prompts and 100-token replies
    loaded = LocalPersonaModel.load(tiny_model_dir)
    loaded.model.config.max_position_embeddings = 300
    model = LocalPersonaModel(loaded.model, loaded.tokenizer, name="small", max_prompt_tokens=2048,
                              sampling=Sampling(max_new_tokens=100, temperature=0))
    model.model.generation_config.eos_token_id = None  # every reply runs to its limit
    history = [ChatMessage("user", f"message number {i} " + "blah " * 20) for i in range(40)]
    prompt = model.render(ctx(history=history))
    assert 150 < prompt.tokens <= 200 and prompt.history_dropped > 0
    await collect(model, prompt)
    assert model.last_stats.new_tokens == 100
    # a prompt rendered for a bigger budget elsewhere: its reply is cut to the positions left
    long = PromptRenderer(model.tokenizer, 280).render(ctx(history=history))
    await collect(model, long)
    assert 0 < model.last_stats.new_tokens <= 300 - long.tokens


def test_the_budget_trims_oldest_history_first_then_memories(tiny_model):
    history = [ChatMessage("user" if i % 2 == 0 else "assistant", f"message number {i} " + "blah " * 20)
               for i in range(20)]
    memories = [Memory(i, f"memory {i} " + "fact " * 30) for i in range(3)]
    full = PromptRenderer(tiny_model.tokenizer, 100_000).render(ctx(history=history, memories=memories))
    budget = full.tokens - 200
    p = PromptRenderer(tiny_model.tokenizer, budget).render(ctx(history=history, memories=memories))
    assert p.tokens <= budget
    assert p.history_dropped > 0 and p.memories_dropped == 0
    assert "message number 19" in p.text and "message number 0 " not in p.text
    kept = [m.content for m in p.messages[1:-2]]
    assert kept == [m.content for m in history[p.history_dropped:]]  # a suffix: newest kept
    # the persona and system prompt stay first and unchanged; the memories come after the history
    assert p.messages[0].content == full.messages[0].content and "Things you remember" not in p.messages[0].content
    assert p.messages[-2].content.startswith("Things you remember")
    tight = PromptRenderer(tiny_model.tokenizer, 230).render(ctx(history=history, memories=memories))
    assert tight.history_dropped == 20 and tight.memories_dropped > 0


def test_memories_keep_to_their_share_of_the_budget_best_ranked_first(tiny_model):
    memories = [Memory(i, f"memory {i} " + "fact " * 30) for i in range(10)]  # ~35 tokens each
    history = [ChatMessage("user", "an old message")]
    renderer = PromptRenderer(tiny_model.tokenizer, 1000, memory_share=0.2)
    p = renderer.render(ctx(history=history, memories=memories))
    kept = 10 - p.memories_dropped
    assert p.tokens < 1000 and p.history_dropped == 0 and 0 < kept < 10  # room for all, but not for them
    assert [f"memory {i} " in p.text for i in range(10)] == [i < kept for i in range(10)]  # best first
    assert renderer.count(memory_text(memories[:kept])) <= 200 < renderer.count(memory_text(memories[:kept + 1]))
    wide = PromptRenderer(tiny_model.tokenizer, 1000, memory_share=0.5).render(ctx(history=history, memories=memories))
    assert wide.memories_dropped < p.memories_dropped


def test_an_input_too_long_for_the_budget_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptRenderer(tiny_model.tokenizer, 50).render(ctx("word " * 500))


async def test_a_lora_adapter_loads_on_the_same_code_path(tiny_model_dir, tmp_path):
    base = LocalPersonaModel.load(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type=TaskType.CAUSAL_LM)
    peft_model = get_peft_model(base.model, cfg)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter changes the output
    peft_model.save_pretrained(tmp_path / "adapter-v1")
    tuned = LocalPersonaModel.load(tiny_model_dir, adapter_path=tmp_path / "adapter-v1", sampling=Sampling(temperature=0))
    plain = LocalPersonaModel.load(tiny_model_dir, sampling=Sampling(temperature=0))
    assert tuned.adapter == "adapter-v1" and plain.adapter is None
    prompt = plain.render(ctx())
    assert "".join(await collect(tuned, prompt)) != "".join(await collect(plain, prompt))


@pytest.mark.model
async def test_the_prefix_cache_gives_the_same_replies_and_is_dropped_with_the_weights(tiny_model_dir, tmp_path):
    greedy = Sampling(max_new_tokens=12, temperature=0)
    cached = LocalPersonaModel.load(tiny_model_dir, sampling=greedy)
    plain = LocalPersonaModel.load(tiny_model_dir, sampling=greedy, prefix_cache=False)
    card = Persona("Testa", "A cheerful robot who loves puzzles and tea. " * 15)
    edited = Persona("Testa", "A grumpy robot who hates everything. " * 15)  # the operator edits the card
    reused = []
    for persona, text in ((card, "hello"), (card, "what do you like?"), (card, "and games?"), (edited, "hello")):
        prompt = cached.render(PromptContext(persona, (InputEvent(InputKind.CHAT, text, "test", 0.0, "you"),)))
        with_cache = "".join([p async for p in cached.stream(prompt)])
        assert with_cache == "".join([p async for p in plain.stream(prompt)]), text  # greedy: identical
        reused.append(cached.last_stats.cached_tokens)
    assert reused[0] == 0 and reused[1] > 200 and reused[2] > 200  # the persona prefix was not recomputed
    assert reused[3] < reused[2]  # an edited card: only what is still the same is reused

    adapter = fake_adapter(tmp_path / "a", tiny_model_dir, seed=1)
    cached.stage_adapter(adapter, "a")
    assert await cached.swap_when_free() is not None
    tuned = LocalPersonaModel.load(tiny_model_dir, adapter_path=adapter, sampling=greedy, prefix_cache=False)
    after = "".join([p async for p in cached.stream(prompt)])
    assert cached.last_stats.cached_tokens == 0  # computed with the old weights: dropped on the swap
    assert after == "".join([p async for p in tuned.stream(prompt)])
