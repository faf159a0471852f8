"""What a generation is asked for (sampling) and what it reports, for every backend."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Sampling:
    """How tokens are drawn. These defaults are [model]'s in config.toml (runtime/config.py reads them here)."""

    max_new_tokens: int = 160
    temperature: float = 0.6  # 0 means greedy
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None  # fix it for reproducible replies


@dataclass(slots=True)
class GenerationStats:
    """What the last generation did, with monotonic timestamps of the model's own work."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, taken from the kept prefix cache instead of computed
    prepared_tokens: int = 0  # of those, computed ahead by `prepare` (while the last reply was spoken)
    new_tokens: int = 0
    stopped_early: bool = False  # the stream was closed before the model finished
    asked_at: float = 0.0  # when the stream was asked for; until started_at it waited for the model
    started_at: float = 0.0  # just before generate() was called, in the worker thread
    pieces: list[tuple[float, str]] = field(default_factory=list)  # (when decoded, text)
    # when the model's stream ended (its end-of-text token computed; 0: not known): a sentence
    # the reply ends on is cut only then, one forward pass after its last words
    ended_at: float = 0.0
