"""The local backend: a transformers causal LM (optionally with a peft LoRA adapter) that streams
tokens from a worker thread into asyncio and stops as soon as its stream is closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from persona_model.constrained import SchemaProcessor, ll_tokenizer
from persona_model.generation import GenerationStats, Sampling
from persona_model.json_schema import TruncatedJson, grammar, tighten, validate
from persona_model.prompt import PromptRenderer
from persona_model.steering import Sliders
from runtime.events import Prompt, PromptContext
from runtime.ports import ThreadStream, Worker

log = logging.getLogger(__name__)
MIN_REUSE = 16  # tokens a prompt must share with the last one for its cache to be reused
WARM_CHUNK = 64  # tokens `prepare` (and an aside prompt) computes at a time: one layer of it is what a turn waits


class _Stop(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.fired = False  # the reader left before the model had finished

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or self.event.is_set()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool)


class _Aborted(Exception):
    """A forward pass stopped between two decoder layers (see _Brake)."""


class _Brake:
    """Stops work that may be cut short (an aside prompt such as reflection's, `prepare`'s
    chunks) between two decoder layers, not at the end of its forward pass: a turn that wants the
    model waits for one layer (a millisecond or two on the bundled model), not a token or a chunk.
    A forward pre-hook on every decoder layer; the model holds it, not the LocalPersonaModel."""

    def __init__(self) -> None:
        self.when: Callable[[], bool] | None = None  # set on the generation thread while such work runs

    def __call__(self, module: Any, args: Any) -> None:
        when = self.when
        if when is not None and when():
            raise _Aborted

    @contextlib.contextmanager
    def armed(self, when: Callable[[], bool]) -> Iterator[None]:
        self.when = when
        try:
            yield
        finally:
            self.when = None


def _decoder_layers(model: Any) -> torch.nn.ModuleList | None:
    """The model's stack of decoder layers (the ModuleList as long as config.num_hidden_layers)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not n:
        return None
    return next((m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)


def _roll_back(cache: Any, length: int) -> bool:
    """Cut every layer of `cache` to `length` positions: a pass stopped between layers leaves the
    first ones a step ahead of the rest. False where a layer cannot be cut (then do not keep it)."""
    try:
        for layer in cache.layers:
            extra = int(layer.get_seq_length()) - length
            if extra > 0:
                layer.crop(-extra)
    except (AttributeError, RuntimeError, ValueError):
        return False
    return True


def _consistent_length(cache: Any) -> int:
    """The positions every layer of `cache` holds (after a pass stopped between layers)."""
    return min((int(layer.get_seq_length()) for layer in getattr(cache, "layers", ())), default=0)


class _StreamStreamer(TextStreamer):
    """Hands decoded text to the reply's ThreadStream from the generation thread, token by token.

    transformers' TextStreamer holds text back until a word ends; we pass on every token's text
    at once (holding back only an unfinished multi-byte character), so the first token reaches
    the sentence cutter as soon as it exists.
    """

    def __init__(self, tokenizer: Any, stream: ThreadStream[str], stats: GenerationStats) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream
        self.stats = stats
        self.ids: list[int] = []  # every new token, in order

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        ids = value.reshape(-1).tolist()
        self.ids.extend(ids)
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
            self.stream.put(text)
        if stream_end:
            self.stats.ended_at = time.monotonic()
            self.stream.end()


# what must match for a new adapter's weights to be copied into the live one's tensors
_SHAPE_KEYS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "bias", "modules_to_save",
               "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "fan_in_fan_out")


def _shape_of(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is None:
        return None
    out = {k: config.get(k) for k in _SHAPE_KEYS}
    if isinstance(out["target_modules"], list | set | tuple):
        out["target_modules"] = sorted(out["target_modules"])
    return out


@dataclass(slots=True)
class _Kept:
    """A prompt start whose keys and values are kept: under which weights, its token ids, the
    cache, and how many of its tokens `prepare` computed since a generation last used it."""

    weights: str | None
    ids: list[int]
    cache: Any
    prepared: int = 0


def _shared(a: list[int], b: list[int]) -> int:
    """How many tokens two id lists share from their start."""
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@dataclass(slots=True)
class _Staged:
    """An adapter read into memory beside the live one, waiting to be swapped in."""

    version: str | None  # None: back to the base model
    path: Path | None
    config: dict[str, Any] | None
    tensors: dict[str, torch.Tensor] | None
    # each tensor paired with the live parameter it replaces, when every one has its place
    copies: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    into: tuple[int, str] | None = None  # (id of the model, adapter slot) the copies were matched to


class LocalPersonaModel:
    """Implements the PersonaModel port with transformers on this machine.

    Adapters swap between generations: `stage_adapter` (a worker thread) reads the new weights
    beside the running model; the swap itself (`swap_when_free`, or the next `stream`) copies them
    into the live LoRA tensors when no generation is running, so a reply is never generated by two
    adapters and a turn waits at most for the copy.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, adapter: str | None = None,
                 sampling: Sampling = Sampling(), max_prompt_tokens: int = 2048,
                 memory_share: float = 0.25, prefix_cache: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._name = name
        self._adapter = adapter
        self.sampling = sampling
        # the prompt and the reply share the model's positions: a prompt that filled them all
        # would be answered past what the model was trained on
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        reply = min(sampling.max_new_tokens, self.context // 2)  # kept free for the reply
        if self.context and max_prompt_tokens > self.context - reply:
            log.info("prompts kept to %d tokens: the model reads %d positions, %d of them kept for the"
                     " reply (model.max_prompt_tokens is %d)", self.context - reply, self.context, reply,
                     max_prompt_tokens)
            max_prompt_tokens = self.context - reply
        self.renderer = PromptRenderer(tokenizer, max_prompt_tokens, memory_share)
        self.last_stats = GenerationStats()
        self._worker = Worker("persona-generate")  # every generation runs on this one thread
        weakref.finalize(self, self._worker.close)
        self._staged: _Staged | None = None
        self._staging = threading.Lock()
        self._swap_done: asyncio.Future[None] | None = None  # set while a swap is in progress
        self._streaming = False  # a reply is being generated (between stream's start and close)
        self._slot = "default"  # the peft adapter name that holds the live weights
        self._shape = _shape_of(_peft_config(model))
        self.swaps: list[float] = []  # seconds each swap held the model
        self.prefix_cache = prefix_cache
        # prompt starts kept with their keys and values, the most recently used last: one for each
        # character sharing this model (`shared_by`, a duo's 2), each under the weights that computed it
        self._kept: list[_Kept] = []
        self.shared_by = 1
        self._weights: str | None = adapter  # what the live adapter is known by in `_kept` (None: base)
        self._hurry = threading.Event()  # a generation is waiting: `prepare`'s work stops
        self._aside: _Kept | None = None  # an aside prompt (reflection) left unfinished for a turn: resumed from
        self.sliders: Sliders | None = None  # the traits a running character can set (attach_sliders)
        self._traits: dict[str, float] = {}  # the slider settings replies are generated with now
        self._brake = _Brake()
        layers = _decoder_layers(model)
        for layer in layers if layers is not None else ():
            layer.register_forward_pre_hook(self._brake)

    @classmethod
    def load(cls, path: Path | str, *, name: str | None = None, adapter_path: Path | str | None = None,
             device: str = "auto", dtype: str = "auto", threads: int = 0,
             sampling: Sampling = Sampling(), max_prompt_tokens: int = 2048,
             memory_share: float = 0.25, adapter_name: str | None = None,
             prefix_cache: bool = True) -> LocalPersonaModel:
        """Load a model folder (and optionally a LoRA adapter folder on top of it, known by
        `adapter_name`, default its folder's name)."""
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
            adapter = adapter_name or Path(adapter_path).name
        model.eval()
        loaded = cls(model, tokenizer, name=name or str(path), adapter=adapter, sampling=sampling,
                     max_prompt_tokens=max_prompt_tokens, memory_share=memory_share, prefix_cache=prefix_cache)
        loaded._weights = str(adapter_path) if adapter_path else None
        return loaded

    # ---- adapters ----------------------------------------------------------------------------
    def stage_adapter(self, path: Path | None, version: str | None) -> None:
        """Read an adapter (None: the base model) into memory, ready to swap in. Blocking: call it
        from a worker thread; the running model is not touched."""
        staged = _Staged(None, None, None, None)
        if path is not None:
            config = json.loads((Path(path) / "adapter_config.json").read_text())
            device = next(self.model.parameters()).device
            dtype = next(self.model.parameters()).dtype
            tensors = {k: v.to(dtype) for k, v in load_file(Path(path) / "adapter_model.safetensors",
                                                            device=str(device)).items()}
            staged = _Staged(version or Path(path).name, Path(path), config, tensors)
            model, slot = self.model, self._slot
            if isinstance(model, PeftModel) and _shape_of(config) == self._shape:
                live = dict(model.named_parameters())
                names = [_live_name(k, slot) for k in tensors]
                if all(n in live and live[n].shape == t.shape for n, t in zip(names, tensors.values(), strict=True)):
                    staged.copies = [(live[n], t) for n, t in zip(names, tensors.values(), strict=True)]
                    staged.into = (id(model), slot)
        with self._staging:
            self._staged = staged

    async def swap_when_free(self) -> float | None:
        """Swap the staged adapter in now if no generation is running; otherwise the next
        generation does it first. Returns the seconds the swap took, or None if it was left."""
        if self._staged is None or self._swap_done is not None or self._streaming:
            return None
        if self._worker.busy:  # a closed stream's generation, ending, or `prepare`'s work
            self._hurry.set()
            await asyncio.to_thread(self._worker.idle)
            self._hurry.clear()
            if self._staged is None or self._swap_done is not None or self._streaming:
                return None
        return await self._swap()

    async def _swap(self) -> float:
        done = self._swap_done = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.to_thread(self._apply_staged)
        finally:
            self._swap_done = None
            done.set_result(None)

    def _apply_staged(self) -> float:
        with self._staging:
            staged, self._staged = self._staged, None
        if staged is None:
            return 0.0
        started = time.perf_counter()
        model: Any = self.model
        if staged.path is None:
            if isinstance(model, PeftModel):
                _lora(model).disable_adapter_layers()
        elif not isinstance(model, PeftModel):  # the first adapter: LoRA layers are added (slower, once)
            self.model = PeftModel.from_pretrained(model, str(staged.path)).eval()
        elif staged.copies is not None and staged.into == (id(model), self._slot):  # the usual case
            with torch.no_grad():
                for live, new in staged.copies:
                    live.copy_(new)
            _lora(model).enable_adapter_layers()
        elif _shape_of(staged.config) == self._shape:  # the same shape, matched by peft's own loader
            set_peft_model_state_dict(model, staged.tensors, adapter_name=self._slot)
            _lora(model).enable_adapter_layers()
        else:  # another rank or other layers: load it as a second adapter, then drop the old one
            old, self._slot = self._slot, f"swap{len(self.swaps) + 1}"
            model.load_adapter(str(staged.path), adapter_name=self._slot)
            model.set_adapter(self._slot)
            model.delete_adapter(old)
            _lora(model).enable_adapter_layers()
            model.eval()
        # kept prefixes stay, each under the weights that computed it: a duo's two characters
        # keep theirs across the swaps between their turns
        self._weights = str(staged.path) if staged.path is not None else None
        if staged.config is not None:
            self._shape = _shape_of(staged.config)
        self._adapter = staged.version
        held = time.perf_counter() - started
        self.swaps.append(held)
        return held

    # ---- sliders -----------------------------------------------------------------------------
    def attach_sliders(self, sliders: Sliders) -> None:
        """Let `set_traits` steer this model with `sliders`' vectors (built on this model)."""
        self.sliders = sliders

    def set_traits(self, settings: dict[str, float]) -> None:
        """Take these slider settings (those not named: 0) between replies: queued on the
        generation thread, so a reply being generated keeps the ones it started with and the next
        one starts with these. Checked now: SliderError for a bad one."""
        if self.sliders is None:
            raise ValueError("this model has no sliders")
        wanted = self.sliders.check(settings)
        self._worker.submit(lambda: self._apply_traits(wanted))

    @property
    def traits(self) -> dict[str, float]:
        """The slider settings replies are generated with now (those not at 0)."""
        return dict(self._traits)

    def _apply_traits(self, wanted: dict[str, float]) -> None:
        assert self.sliders is not None
        try:
            self.sliders.model = self.model  # an adapter swap may have wrapped it
            now = {k: v for k, v in self.sliders.apply(wanted).items() if v}
        except Exception as exc:  # noqa: BLE001 - on the generation thread: say it, keep the settings before
            log.error("the sliders could not be set; replies keep the settings before",
                      extra={"error": str(exc), "settings": wanted})
            return
        if now != self._traits:
            self._kept.clear()  # the kept prefixes were computed with the old settings
            self._aside = None
        self._traits = now

    @property
    def name(self) -> str:
        return self._name

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def weights(self) -> str | None:
        """The live adapter's folder (None: the base model); two characters' registries may both
        have a "v0001"."""
        return self._weights

    def render(self, context: PromptContext) -> Prompt:
        return self.renderer.render(context)

    async def aclose(self) -> None:
        """Nothing to let go of: the weights stay with whoever holds this object (tests and benches
        share one across characters), and the generation thread ends with the process."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the last generation to end; True if none is running."""
        return self._worker.idle(timeout)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        async with contextlib.aclosing(self._generate(prompt)) as pieces:
            async for piece in pieces:
                yield piece

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        """A JSON document that validates against `schema`, decoded under its grammar
        (persona_model/constrained.py, persona_model/json_schema.py). Raises SchemaError for a schema the engine cannot use and
        TruncatedJson when the model ran out of tokens first."""
        processor = SchemaProcessor(ll_tokenizer(self.tokenizer, int(self.model.config.vocab_size)),
                                    grammar(tighten(schema)))
        async with contextlib.aclosing(self._generate(prompt, processor, max_new_tokens)) as pieces:
            text = "".join([piece async for piece in pieces])
        try:
            validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            raise TruncatedJson(f"no complete document in {max_new_tokens} tokens ({exc})") from None
        return text

    async def _generate(self, prompt: Prompt, processor: SchemaProcessor | None = None,  # noqa: C901 (the generation thread: stop, cancel, prefix cache and adapter swap in one place)
                        max_new_tokens: int | None = None) -> AsyncGenerator[str, None]:
        # one generation at a time: wait for the last one (it stops within one token; an aside
        # one, such as reflection's, between two layers) or for `prepare` (between two layers)
        asked = time.monotonic()
        if self._worker.busy:
            self._hurry.set()
            await asyncio.to_thread(self._worker.idle)
        self._hurry.clear()
        while (swap := self._swap_done) is not None:  # this generation uses the adapter being swapped in
            await asyncio.shield(swap)
        if self._staged is not None:
            await self._swap()
        if self._worker.busy:  # slider settings given while the adapter was swapped: taken first
            await asyncio.to_thread(self._worker.idle)
        stream: ThreadStream[str] = ThreadStream()
        stats = GenerationStats(asked_at=asked)
        self.last_stats = stats
        streamer = _StreamStreamer(self.tokenizer, stream, stats)
        enc = self.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=False)
        stats.prompt_tokens = int(enc["input_ids"].shape[1])
        kwargs = self._generate_kwargs(enc, streamer, stream.stop)
        ids = enc["input_ids"][0].tolist()
        keep = self.prefix_cache and not prompt.aside
        # a kept cache, cut to what this prompt shares: the conversation's, or for an aside prompt
        # what its last try computed before a turn took the model
        reuse = self._reusable(ids) if keep else self._resumable(ids) if self.prefix_cache else None
        weights = self._weights
        if reuse is not None:  # the generation owns it now; it is kept again only if generation ends well
            kwargs["past_key_values"] = reuse.cache
            stats.cached_tokens = int(reuse.cache.get_seq_length())
            stats.prepared_tokens = min(reuse.prepared, stats.cached_tokens)
        if processor is not None:  # JSON: the grammar decides what may come; no repetition penalty
            kwargs.update(logits_processor=LogitsProcessorList([processor]), repetition_penalty=None)
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max_new_tokens
        if self.context and stats.prompt_tokens + kwargs["max_new_tokens"] > self.context:
            room = self.context - stats.prompt_tokens  # a prompt rendered elsewhere, or a long JSON answer
            if room <= 0:
                raise ValueError(f"the prompt ({stats.prompt_tokens} tokens) fills the model's"
                                 f" {self.context} positions")
            kwargs["max_new_tokens"] = room

        def work() -> None:
            try:
                stats.started_at = time.monotonic()
                with torch.inference_mode(), (self._brake.armed(stream.stop.is_set) if prompt.aside
                                              else contextlib.nullcontext()):
                    if prompt.aside and not self._prefill_aside(kwargs, stream.stop, weights):
                        return  # its reader left (a turn started): the turn waited one layer at most
                    try:
                        out = self.model.generate(**kwargs, return_dict_in_generate=True)
                    except _Aborted:  # an aside's reader left mid-token: kept up to its last whole token
                        self._keep_aside(kwargs.get("past_key_values"), ids + streamer.ids, weights)
                        return
                if out.past_key_values is None:
                    return
                kept = _Kept(weights, out.sequences[0].tolist()[:int(out.past_key_values.get_seq_length())],
                             out.past_key_values)
                if keep:
                    self._keep(kept)
                elif prompt.aside and self.prefix_cache and kwargs["stopping_criteria"][0].fired:
                    self._aside = kept  # left for a turn: the next try goes on from its last token
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                failed = RuntimeError(f"generation failed: {exc}")
                failed.__cause__ = exc
                stream.fail(failed)

        self._streaming = True  # no await since the swap check: nothing can swap in between
        self._worker.submit(work)
        finished = False
        try:
            async for piece in stream:
                yield piece
            finished = True
        finally:
            self._streaming = False
            stats.stopped_early = not finished
            stream.close()

    def _prefill_aside(self, kwargs: dict[str, Any], stop: threading.Event, weights: str | None) -> bool:
        """Compute a prompt off the conversation (reflection's: a thousand tokens, seconds of work
        in one forward pass) a chunk at a time into `kwargs`' cache (or what a last try left there),
        so that a turn starting meanwhile waits one layer of a chunk (_Brake), not a layer of the whole
        prompt. False if its reader left first: what was computed is kept for the next try."""
        ids = kwargs["input_ids"]
        cache = kwargs["past_key_values"] if "past_key_values" in kwargs else DynamicCache(config=self.model.config)
        done, end = int(cache.get_seq_length()), ids.shape[1] - 1  # the last token is generate()'s to compute
        while done < end:
            try:
                if stop.is_set():
                    raise _Aborted
                self.model(input_ids=ids[:, done:min(done + WARM_CHUNK, end)], past_key_values=cache, use_cache=True)
            except _Aborted:  # stopped between chunks or between two layers of one
                self._keep_aside(cache, ids[0, :done].tolist(), weights)
                return False
            done = min(done + WARM_CHUNK, end)
        if done:
            kwargs["past_key_values"] = cache
        return True

    def _keep_aside(self, cache: Any, ids: list[int], weights: str | None) -> None:
        """Keep what a stopped aside prompt computed, for its next try: every layer cut to the
        positions all of them hold (`ids` covers at least those)."""
        if cache is None or not self.prefix_cache:
            return
        length = _consistent_length(cache)
        if length >= MIN_REUSE and length <= len(ids) and _roll_back(cache, length):
            self._aside = _Kept(weights, ids[:length], cache)

    def prepare(self, context: PromptContext) -> None:
        """Compute the key/value cache of the start every next prompt will have (the persona, the
        rules, constant lore and `context`'s history), on the generation thread once it is free:
        a turn asks while its last words are spoken, with its own exchange in the history, so the
        next reply computes only its memories and input. With several characters on this model
        (`shared_by`), the next speaker's is computed under her adapter, beside the one who
        speaks now. A generation asked meanwhile stops it between two layers (_Brake); an
        adapter being swapped in skips it."""
        if not self.prefix_cache or self._staged is not None or self._swap_done is not None:
            return
        text = self.renderer.prefix(context)
        if text is None:
            return
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        weights = self._weights
        self._worker.submit(lambda: self._warm(ids, weights))

    def _warm(self, ids: list[int], weights: str | None) -> None:
        if weights != self._weights or self._hurry.is_set():  # swapped since it was asked
            return
        found = self._closest(ids)
        shared = _shared(found.ids, ids) if found is not None else 0
        if shared == len(ids):
            return
        if found is None or shared < MIN_REUSE:  # another prompt (another character's): kept as it is
            found = _Kept(weights, [], DynamicCache(config=self.model.config))
            shared = 0
        else:
            self._kept.remove(found)  # while it changes
            if shared < found.cache.get_seq_length():
                found.cache.crop(shared - found.cache.get_seq_length())
        done = shared
        device = next(self.model.parameters()).device
        try:
            with torch.inference_mode(), self._brake.armed(self._hurry.is_set):
                while done < len(ids) and not self._hurry.is_set():
                    chunk = ids[done:done + WARM_CHUNK]
                    self.model(input_ids=torch.tensor([chunk], device=device), past_key_values=found.cache,
                               use_cache=True)
                    done += len(chunk)
        except _Aborted:  # a generation wants the model: stopped between two layers of a chunk
            if not _roll_back(found.cache, done):
                return
        except Exception as exc:  # noqa: BLE001 - on the generation thread: the next reply computes it all
            log.warning("the next prompt could not be prepared", extra={"error": str(exc)})
            return
        if done >= MIN_REUSE:
            self._keep(_Kept(weights, ids[:done], found.cache, found.prepared + done - shared))

    def _closest(self, ids: list[int]) -> _Kept | None:
        """The kept prefix, under the live weights, that shares the most tokens with `ids`."""
        mine = [k for k in self._kept if k.weights == self._weights]
        return max(mine, key=lambda k: _shared(k.ids, ids), default=None)

    def _keep(self, kept: _Kept) -> None:
        """Keep a prefix, the most recently used last; past `shared_by`, the oldest goes."""
        self._kept.append(kept)
        del self._kept[:-max(1, self.shared_by)]

    def _resumable(self, ids: list[int]) -> _Kept | None:
        """What the last try of an aside prompt computed, taken out and cut to what `ids` shares
        with it (reflection tries again on the same turns, with the text it had written), or None."""
        found, self._aside = self._aside, None
        if found is None or found.weights != self._weights:
            return None
        shared = min(_shared(found.ids, ids), len(ids) - 1)
        if shared < MIN_REUSE:
            return None
        if shared < found.cache.get_seq_length():
            found.cache.crop(shared - found.cache.get_seq_length())
        return found

    def _reusable(self, ids: list[int]) -> _Kept | None:
        """The kept cache, taken out, cut to the longest prefix this prompt shares with what it
        holds (at least MIN_REUSE tokens, and never the whole prompt: its last token is always
        computed), or None."""
        found = self._closest(ids)
        if found is None:
            return None
        shared = min(_shared(found.ids, ids), len(ids) - 1)
        if shared < MIN_REUSE:
            return None
        self._kept.remove(found)
        if shared < found.cache.get_seq_length():
            found.cache.crop(shared - found.cache.get_seq_length())  # transformers 5 takes how many to drop
        return found

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


def _peft_config(model: Any) -> dict[str, Any] | None:
    """The live adapter's config as a dict (None for a plain model)."""
    if not isinstance(model, PeftModel):
        return None
    return dict(model.peft_config[model.active_adapter].to_dict())


def _live_name(key: str, slot: str) -> str:
    """A saved adapter's tensor name as the live model calls it: peft saves
    "...q_proj.lora_A.weight" and holds "...q_proj.lora_A.<slot>.weight"."""
    head, _, last = key.rpartition(".")
    return f"{head}.{slot}.{last}" if last == "weight" and head.rsplit(".", 1)[-1].startswith("lora_") else key


def _lora(model: PeftModel) -> Any:
    """The LoRA layer holder inside a PeftModel (where adapters are switched on and off)."""
    return model.base_model
