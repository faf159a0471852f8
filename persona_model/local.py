"""The local backend: a transformers causal LM (optionally with a peft LoRA adapter) that streams
tokens from a worker thread into asyncio and stops as soon as its stream is closed."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from persona_model.prompt import PromptRenderer
from runtime.events import Prompt, PromptContext

log = logging.getLogger(__name__)
_END = object()


@dataclass(frozen=True, slots=True)
class Sampling:
    max_new_tokens: int = 160
    temperature: float = 0.8  # 0 means greedy
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int | None = None  # fix it for reproducible replies


@dataclass(slots=True)
class GenerationStats:
    """What the last generation did, with monotonic timestamps of the model's own work."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    stopped_early: bool = False  # the stream was closed before the model finished
    started_at: float = 0.0  # just before generate() was called, in the worker thread
    pieces: list[tuple[float, str]] = field(default_factory=list)  # (when decoded, text)


class _Stop(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class _QueueStreamer(TextStreamer):
    """Hands decoded text to an asyncio queue from the generation thread, token by token.

    transformers' TextStreamer holds text back until a word ends; we pass on every token's text
    at once (holding back only an unfinished multi-byte character), so the first token reaches
    the sentence cutter as soon as it exists.
    """

    def __init__(self, tokenizer: Any, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any],
                 stats: GenerationStats) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.loop = loop
        self.queue = queue
        self.stats = stats

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        ids = value.reshape(-1).tolist()
        self.stats.new_tokens += len(ids)
        self.token_cache.extend(ids)
        text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        if text.endswith("\ufffd"):
            return  # the rest of a multi-byte character is in the next token
        piece, self.print_len = text[self.print_len :], len(text)
        if text.endswith("\n"):  # keep the decode short: start afresh after each line
            self.token_cache, self.print_len = [], 0
        self.on_finalized_text(piece)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.stats.pieces.append((time.monotonic(), text))
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text)
        if stream_end:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, _END)


class LocalPersonaModel:
    """Implements the PersonaModel port with transformers on this machine."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, adapter: str | None = None,
                 sampling: Sampling = Sampling(), max_prompt_tokens: int = 2048,
                 memory_share: float = 0.25) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._name = name
        self._adapter = adapter
        self.sampling = sampling
        self.renderer = PromptRenderer(tokenizer, max_prompt_tokens, memory_share)
        self.last_stats = GenerationStats()
        self._thread: threading.Thread | None = None

    @classmethod
    def load(cls, path: Path | str, *, name: str | None = None, adapter_path: Path | str | None = None,
             device: str = "auto", dtype: str = "auto", threads: int = 0,
             sampling: Sampling = Sampling(), max_prompt_tokens: int = 2048,
             memory_share: float = 0.25) -> LocalPersonaModel:
        """Load a model folder (and optionally a LoRA adapter folder on top of it)."""
        if threads > 0:
            torch.set_num_threads(threads)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        torch_dtype: Any = dtype
        if dtype == "auto" and device == "cpu":
            torch_dtype = torch.float32  # half precision is slow on most CPUs
        elif dtype != "auto":
            torch_dtype = getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)  # type: ignore[arg-type]
        adapter = None
        if adapter_path:
            model = PeftModel.from_pretrained(model, str(adapter_path))
            adapter = Path(adapter_path).name
        model.eval()
        return cls(model, tokenizer, name=name or str(path), adapter=adapter, sampling=sampling,
                   max_prompt_tokens=max_prompt_tokens, memory_share=memory_share)

    @property
    def name(self) -> str:
        return self._name

    @property
    def adapter(self) -> str | None:
        return self._adapter

    def render(self, context: PromptContext) -> Prompt:
        return self.renderer.render(context)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the last generation's thread to end; True if none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        # one generation at a time: wait for the last one's thread (it stops within one token)
        if self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        stats = GenerationStats()
        self.last_stats = stats
        streamer = _QueueStreamer(self.tokenizer, loop, queue, stats)
        enc = self.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
        stats.prompt_tokens = int(enc["input_ids"].shape[1])
        kwargs = self._generate_kwargs(enc, streamer, stop)

        def work() -> None:
            try:
                stats.started_at = time.monotonic()
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                loop.call_soon_threadsafe(queue.put_nowait, exc)
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        self._thread = threading.Thread(target=work, name="persona-generate", daemon=True)
        self._thread.start()
        finished = False
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"generation failed: {item}") from item
                yield item
            finished = True
        finally:
            stats.stopped_early = not finished
            stop.set()

    def _generate_kwargs(self, enc: Any, streamer: TextStreamer, stop: threading.Event) -> dict[str, Any]:
        s = self.sampling
        device = next(self.model.parameters()).device
        kwargs: dict[str, Any] = {
            "input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device),
            "max_new_tokens": s.max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Stop(stop)]),
            "repetition_penalty": s.repetition_penalty,
            "pad_token_id": (self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                             else self.tokenizer.eos_token_id),
        }
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
            if s.seed is not None:
                torch.manual_seed(s.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        return kwargs
