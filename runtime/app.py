"""App wiring: the only place that reads the configuration and picks concrete classes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import io
import logging
import os
import re
import signal
import threading
import urllib.parse
import webbrowser
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from transformers import AutoTokenizer

from memory import review as memory_review
from memory.embed import Embedder, EmbeddingError
from memory.embed import resolve as resolve_embedder
from memory.schema import SchemaError
from memory.store import RecallSettings, SqliteMemory
from persona_model.adapters import AdapterFollower, AdapterRegistry, RegistryError
from persona_model.card import CardError, load_card
from persona_model.generation import Sampling
from persona_model.gguf_import import GgufError, convert_once
from persona_model.hub import resolve
from persona_model.local import LocalPersonaModel
from persona_model.server import ServerPersonaModel, ServerSettings
from plugins.audio import EchoGate, PlaybackLog, SynthesizerError
from plugins.avatar_vts import VtsAvatar, VtsClient
from plugins.avatar_ws import AvatarServer, Command
from plugins.chat_console import ConsoleChatSource, ConsoleSubtitles
from plugins.chat_twitch import TwitchChatSource, TwitchError, TwitchReplies, load_account
from plugins.game_neuro import GameServer
from plugins.game_tictactoe import TicTacToe
from plugins.guard import is_loopback
from plugins.listening import ListenerSettings, Microphone, MicrophoneError
from plugins.mic_file import FileMicrophone
from plugins.mic_sounddevice import SoundDeviceMicrophone
from plugins.speakers_silent import SilentSpeakers
from plugins.speakers_sounddevice import open_speakers
from plugins.stt_whisper import WhisperListener, load_whisper
from plugins.tts_coqui import CoquiSynthesizer
from plugins.tts_espeak import EspeakSynthesizer
from plugins.tts_piper import PiperSynthesizer, piper_voice_path
from runtime import bundled
from runtime.bundled import BUNDLED, BundledError
from runtime.config import Config, settings
from runtime.director import Director, DirectorSettings
from runtime.events import TYPED, Control, InputEvent, InputKind, Persona, Priority
from runtime.fallback import FallbackModel
from runtime.game import GameSettings
from runtime.inbox import DEFAULT_MAX_AGE, DEFAULT_WEIGHTS, Inbox, Scoring
from runtime.moderation import ChatFilter, Moderator
from runtime.ports import Clock, MonotonicClock, OutputSink, PersonaModel, Source, Synthesizer
from runtime.reflection import ReflectionSettings, Reflector
from runtime.sentences import EXPRESSIONS, TAG, tag_name
from runtime.turn import Cast, TurnSettings
from runtime.voices import FallbackSynthesizer

log = logging.getLogger(__name__)
# transformers' from_pretrained patches torch globally while it builds a model (meta device, init
# functions): two threads loading at once can leave weights on the meta device. The language model
# and the embedding model (loaded in the background) take turns.
_LOADING = threading.Lock()


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
HEAP_TRIM_S = 60.0  # how often a running character hands free heap memory back


@functools.cache
def _libc(name: str) -> Any:
    """A function of the C library this process runs on, or None where it has none by that name
    (looked up once: the heap trim asks every minute)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # Windows cannot open the process itself by None
        return None


def cap_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for this process, as `MALLOC_ARENA_MAX=2` would, unless the
    environment already sets it. Call it first thing, before threads allocate.

    glibc gives threads arenas of their own (up to 8 per core); a model, its tokenizer, the
    database and the voices each allocate from worker threads, and memory freed into many arenas
    stays fragmented: over a long stream RSS climbs in steps (docs/benchmarks.md, soak). Two
    arenas keep fewer of those steps; the threads rarely contend for them, as one generation runs
    at a time. True if the cap was set; False where the C library is not glibc or the user chose.
    """
    if "MALLOC_ARENA_MAX" in os.environ or (mallopt := _libc("mallopt")) is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, arenas))  # glibc answers 1; musl's stub answers 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_bytes() -> tuple[int, int] | None:
    """(bytes malloc has handed out, bytes it holds free) from glibc ≥ 2.33, else None."""
    if (info := _libc("mallinfo2")) is None:
        return None
    info.restype = _MallInfo2
    m = info()
    return m.uordblks + m.hblkhd, m.fordblks


def trim_heap() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False elsewhere."""
    if (trim := _libc("malloc_trim")) is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    return bool(trim(0))


async def keep_heap_trimmed(every_s: float = HEAP_TRIM_S) -> None:
    """Beside the turns: free memory that glibc would keep inside its heaps (a long reply's
    tensors, freed below live ones) goes back to the system every minute, so the process's size
    follows what it uses (docs/benchmarks.md, soak)."""
    if _libc("malloc_trim") is None:
        return
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(trim_heap)


class StartupError(Exception):
    """Something the user must fix before the character can start; the message says what."""


class MicrophoneUnavailable(StartupError):
    """No microphone to listen with, or no speech model to hear it."""


IF_POSSIBLE = "if-possible"  # build(listen=...): listen where there is a microphone, else take typed text


def persona_from(config: Config) -> tuple[Persona, tuple[str, ...]]:
    """The persona (and lorebook texts) from the card named in the config, or its [persona]."""
    if config.character.card:
        try:
            return load_card(config.path(config.character.card))
        except CardError as exc:
            raise StartupError(f"character card: {exc}") from None
    p = config.persona
    return Persona(p.name, p.description, p.personality, p.scenario, p.first_message, p.examples,
                   p.system_prompt, p.post_history_instructions, source="config [persona]"), ()


def greeting(persona: Persona) -> str:
    """The card's first message, said when the character starts ({{user}} is chat: nobody has
    spoken yet)."""
    text = re.sub(r"\{\{user\}\}|<user>", "chat", persona.first_message, flags=re.IGNORECASE)
    return re.sub(r"\{\{char\}\}|<bot>", persona.name, text, flags=re.IGNORECASE).strip()


def expressions(persona: Persona, config: Config) -> frozenset[str]:
    """The expression tags the character has: the common ones, those its card's text shows
    ("[happy]"), and those mapped to VTube Studio hotkeys. Other bracketed words in a reply are a
    template's placeholders."""
    text = " ".join((persona.system_prompt, persona.description, persona.personality, persona.scenario,
                     persona.examples, persona.first_message, persona.post_history_instructions))
    return EXPRESSIONS | {tag_name(m) for m in TAG.finditer(text)} | {"_".join(tag.lower().split()) for tag in config.vts.hotkeys}


def _list_files(config: Config, key: str, value: str | list[str]) -> list[Path]:
    """Moderation list files that must exist at start (they are re-read when they change)."""
    paths = [config.path(v) for v in ([value] if isinstance(value, str) else value) if v]
    for path in paths:
        if not path.is_file():
            raise StartupError(f"{key} {path} does not exist")
    return paths


def moderator_from(config: Config) -> Moderator:
    m = config.moderation
    return Moderator(m.blocklist, m.action, m.replacement,
                     _list_files(config, "moderation.blocklist_file", m.blocklist_file))


def chat_filter_from(config: Config) -> ChatFilter:
    f = config.chat.filter
    return ChatFilter(f.max_chars, f.blocklist, _list_files(config, "chat.filter.blocklist_file", f.blocklist_file))


def inbox_from(config: Config, clock: Clock, persona: Persona) -> Inbox:
    i = config.inbox
    scoring = settings(Scoring, i, weights={**DEFAULT_WEIGHTS, **i.weights}, max_age_s={
        **DEFAULT_MAX_AGE, "chat": i.max_chat_age_s, "message": i.max_chat_age_s, **i.max_age_s})
    return Inbox(clock, i.capacity, scoring=scoring, names=(persona.name,))


def synthesizer_from(config: Config) -> Synthesizer:
    """The configured voice, with espeak-ng behind it for any sentence it fails on."""
    t = config.tts
    espeak = EspeakSynthesizer(t.espeak.voice, t.espeak.speed, t.espeak.pitch, t.chunk_ms)
    if t.engine == "espeak":
        return espeak
    try:
        voice: Synthesizer
        if t.engine == "piper":
            voice = PiperSynthesizer(piper_voice(config), t.piper.speaker, t.piper.length_scale, t.chunk_ms)
        else:
            voice = CoquiSynthesizer(t.coqui.model, str(config.path(t.coqui.speaker_wav)) if t.coqui.speaker_wav
                                     else "", t.coqui.language, t.coqui.device, t.chunk_ms)
    except SynthesizerError as exc:
        raise StartupError(f"tts.engine = {t.engine!r}: {exc}") from None
    return FallbackSynthesizer(voice, espeak, t.engine, stall_s=config.turn.tts_stall_s / 2) if t.fallback else voice


MicrophoneFactory = Callable[[PlaybackLog | None], Microphone]


def listener_from(config: Config, clock: Clock, playback: PlaybackLog | None,
                  microphone: MicrophoneFactory | None = None) -> WhisperListener:
    """The microphone (or files played as one), VAD and Whisper, from [stt]. `microphone` builds
    another input from the playback log (tests feed the character's own voice back with it)."""
    c = config.stt
    gate = EchoGate(playback, c.echo_threshold) if (c.echo_gate and playback is not None) else None
    try:
        mic: Microphone
        if microphone is not None:
            mic = microphone(playback)
        elif c.input == "microphone":
            device = int(c.input_device) if c.input_device.isdigit() else (c.input_device or None)
            mic = SoundDeviceMicrophone(clock, device)
        else:
            files = [c.input] if isinstance(c.input, str) else c.input
            mic = FileMicrophone([config.path(f) for f in files], clock)
        model = load_whisper(whisper_model(config), config.path(config.model.models_dir), c.device,
                             c.compute_type, c.threads, config.model.download)
    except MicrophoneError as exc:
        raise MicrophoneUnavailable(f"stt.input: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a Whisper model that is not there or not loadable
        raise MicrophoneUnavailable(
            f"stt.model {c.model!r} cannot be loaded ({type(exc).__name__}: {exc}); fetch it with"
            " `omoide models pull`, or set stt.model to a local CTranslate2 folder"
            " (`omoide model tiny-whisper DIR` builds one offline)") from None
    heard = settings(ListenerSettings, c, author=c.name, language=c.language or None,
                     drop_phrases=tuple(c.drop_phrases))
    return WhisperListener(mic, model, clock, heard, gate)


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


def adapter_registry(config: Config) -> AdapterRegistry:
    return AdapterRegistry(config.path(config.learning.adapters))


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


def model_from(config: Config) -> LocalPersonaModel:
    """The base model with `model.adapter` pinned on top, or else the registry's active version."""
    m = config.model
    path = model_path(config)
    adapter = config.path(m.adapter) if m.adapter else None
    name: str | None = None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise StartupError(f"model.adapter {adapter} is not a peft adapter folder (no adapter_config.json)")
    if adapter is None:
        registry = adapter_registry(config)
        try:
            active = registry.active
        except RegistryError as exc:
            raise StartupError(f"learning.adapters: {exc}") from None
        if active is not None:
            adapter, name = registry.path(active.version), active.version
    return LocalPersonaModel.load(
        path, name=BUNDLED_NAME if m.id == BUNDLED else m.id, adapter_path=adapter, adapter_name=name,
        device=m.device, dtype=m.dtype, threads=m.threads, sampling=sampling_from(config),
        max_prompt_tokens=m.max_prompt_tokens, memory_share=config.memory.prompt_share,
        prefix_cache=m.prefix_cache,
    )


@dataclass
class App:
    """A running character: its director and everything it owns."""

    config: Config
    director: Director
    memory: SqliteMemory
    avatar: AvatarServer | None
    sinks: list[OutputSink] = field(default_factory=list)
    reflector: Reflector | None = None
    follower: AdapterFollower | None = None  # swaps in newly activated adapters
    games: GameServer | None = None  # the game API, when on

    async def aclose(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()
        for model in backends(self.director.cast.model):
            if isinstance(model, ServerPersonaModel):
                await model.aclose()
        await self.memory.aclose()


def _locked(load: Callable[[Config], PersonaModel], config: Config) -> PersonaModel:
    with _LOADING:
        return load(config)


def backends(model: PersonaModel) -> tuple[PersonaModel, ...]:
    """The models behind the character's: a server and its local stand-in, or just the one."""
    return (model.primary, model.fallback) if isinstance(model, FallbackModel) else (model,)


async def build(
    config: Config,
    *,
    model: PersonaModel | None = None,
    console: bool | None = None,
    listen: bool | Literal["if-possible"] | None = None,
    microphone: MicrophoneFactory | None = None,
    exit_when_sources_end: bool = False,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    clock: Clock | None = None,
    sources: list[Source] | None = None,
    background: Sequence[Callable[[], Coroutine[None, None, None]]] = (),
) -> App:
    """Assemble a character from its configuration. `model` skips loading one (tests, benches).
    `background` jobs run beside the turns (the training schedule)."""
    clock = clock or MonotonicClock()
    listen = config.stt.enabled if listen is None else listen
    bundled.check(bundled_kinds(config, listen is True, model is None))  # every missing one named at once
    persona, lore = persona_from(config)
    moderator = moderator_from(config)
    chat_filter = chat_filter_from(config)  # a missing list file stops the start here
    synthesizer = synthesizer_from(config)
    try:  # before the slow model load: a wrong database file should stop the start at once
        memory = await SqliteMemory.open(config.path(config.memory.database), encoder_from(config),
                                         recall_settings(config))
    except SchemaError as exc:
        raise StartupError(f"memory.database {config.path(config.memory.database)}: {exc}") from None
    opened: list[SqliteMemory | AvatarServer | GameServer | VtsAvatar] = [memory]  # closed again if the start fails
    try:
        playback = PlaybackLog() if listen else None  # what the speakers play, for the echo gate
        listener = None
        if listen:  # before the model loads: without a microphone, a companion starts once, typing only
            try:
                listener = await asyncio.to_thread(listener_from, config, clock, playback, microphone)
            except MicrophoneUnavailable as exc:
                if listen != IF_POSSIBLE:
                    raise
                log.warning("no microphone (or no speech model): the companion takes typed text only",
                            extra={"reason": str(exc)})
                playback = None
        if model is None:
            model = await asyncio.to_thread(_locked, persona_model_from, config)
        for text in lore:
            await memory.add_memory(text, source=persona.source)

        playout: OutputSink
        if config.audio.output == "speakers":
            playout = open_speakers(clock, config.audio.device or None, playback)
        else:
            playout = SilentSpeakers(clock, playback)
        observers: list[OutputSink] = []
        sources = list(sources or [])
        games = None
        if config.game.enabled:
            games = await game_server_from(config, clock, persona.name)
            opened.append(games)
            sources.append(games)
        late: list[Director] = []  # the director, once it exists: what the page's commands go to
        commands = {"review": review_command(config.path(config.memory.database)),
                    **page_commands(late, clock, config.chat.console.name)}
        if games is not None:
            commands["game_shutdown"] = shutdown_command(games)
        avatar = None
        if config.avatar.enabled:
            a = config.avatar
            if not a.token and not is_loopback(a.host):
                raise StartupError(f"avatar.host = {a.host!r} lets other machines connect: set avatar.token too"
                                   " (clients then connect with ?token=..., the overlay at /overlay?token=...)")
            avatar = AvatarServer(a.host, a.port, audio_format=a.audio_format, character=persona.name,
                                  queue_size=a.queue_size, commands=commands, token=a.token,
                                  allowed_origins=a.allowed_origins, rate=a.rate)
            try:
                await avatar.start()
            except OSError as exc:
                raise StartupError(
                    f"avatar channel cannot listen on {config.avatar.host}:{config.avatar.port}"
                    f" ({exc.strerror or exc}); set avatar.port to a free port or avatar.enabled = false"
                ) from None
            opened.append(avatar)
            observers.append(avatar)
        if config.vts.enabled:
            vts = vts_from(config, clock)
            await vts.start()  # connects in the background: VTube Studio may start later
            opened.append(vts)
            observers.append(vts)
        if config.twitch.enabled:
            try:
                twitch = TwitchChatSource(clock, load_account(config.path(config.twitch.token_file)),
                                          config.twitch.events)
            except TwitchError as exc:
                raise StartupError(f"twitch: {exc}") from None
            sources.append(twitch)
            if config.twitch.reply_in_chat:
                observers.append(TwitchReplies(twitch, clock, config.twitch.bot_is_moderator))
        if listener is not None:
            sources.append(listener)
    except BaseException:
        for thing in reversed(opened):
            with contextlib.suppress(Exception):
                await thing.aclose()
        raise
    use_console = config.chat.console.enabled if console is None else console
    if use_console:
        sources.append(ConsoleChatSource(clock, config.chat.console.name, stdin, stdout, persona.name))
        observers.append(ConsoleSubtitles(persona.name, stdout))

    t = config.turn
    cast = Cast(
        persona=persona, model=model, synthesizer=synthesizer, playout=playout, memory=memory,
        moderator=moderator, clock=clock, observers=tuple(observers),
        settings=settings(TurnSettings, t, expressions=expressions(persona, config)),
        games=games, game_settings=settings(GameSettings, config.game),
    )
    director = Director(
        cast,
        inbox_from(config, clock, persona),
        sources,
        settings(
            DirectorSettings, t, exit_when_sources_end=exit_when_sources_end, barge_in=config.barge_in.mode,
            barge_in_min_dbfs=config.barge_in.min_dbfs,
            idle_after_s=config.idle.after_s, idle_min_interval_s=config.idle.min_interval_s,
            thanks=dict(config.chat.thanks),
            greeting=greeting(persona) if config.character.greet else "",
            **({"idle_prompt": config.idle.prompt} if config.idle.prompt else {}),
        ),
        chat_filter=chat_filter,
    )
    late.append(director)
    reflector = None
    if config.memory.reflection.enabled:
        r = config.memory.reflection
        reflector = Reflector(model, memory, persona, clock, lambda: director.busy,
                              settings(ReflectionSettings, r))
        director.background += (reflector.run,)
    follower = None
    if config.learning.follow and not config.model.adapter:
        # the server and the local stand-in each follow the registry
        for backend in backends(model):
            if isinstance(backend, LocalPersonaModel | ServerPersonaModel):
                follower = AdapterFollower(adapter_registry(config), backend)
                director.background += (follower.run,)
    director.background += (keep_heap_trimmed, *background)
    return App(config, director, memory, avatar, [playout, *observers], reflector, follower, games)


def vts_client_from(config: Config) -> VtsClient:
    v = config.vts
    return VtsClient(v.url, config.path(v.token_file), plugin=v.plugin_name)


def vts_from(config: Config, clock: Clock) -> VtsAvatar:
    v = config.vts
    return VtsAvatar(vts_client_from(config), clock, mouth_parameter=v.mouth_parameter, hotkeys=v.hotkeys,
                     rate_hz=v.rate_hz, gain=v.gain)


async def game_server_from(config: Config, clock: Clock, character: str) -> GameServer:
    """The game API server, listening. Beyond this machine only with a token."""
    g = config.game
    if not g.token and not is_loopback(g.host):
        raise StartupError(f"game.host = {g.host!r} lets other machines connect: set game.token too"
                           " (games then connect with ?token=... in NEURO_SDK_WS_URL)")
    server = GameServer(clock, g.host, g.port, token=g.token, result_timeout_s=g.result_timeout_s,
                        character=character, allowed_origins=g.allowed_origins, rate=g.rate)
    try:
        await server.start()
    except OSError as exc:
        raise StartupError(f"game API cannot listen on {g.host}:{g.port} ({exc.strerror or exc});"
                           " set game.port to a free port or game.enabled = false") from None
    return server


def page_commands(late: list[Director], clock: Clock, author: str) -> dict[str, Command]:
    """The overlay page's companion controls: `say` (a typed line, as in the terminal) and
    `control` (mute, unmute, talk_start, talk_stop, interrupt)."""

    async def say(message: dict[str, Any]) -> dict[str, Any]:
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError('needs "text", a non-empty string')
        event = InputEvent(InputKind.CHAT, text.strip()[:2000], "overlay", clock.now(), author, Priority.NORMAL,
                           meta={"event": TYPED})
        late[0].submit(event)
        return {"input_id": event.id}

    async def control(message: dict[str, Any]) -> dict[str, Any]:
        command = message.get("command")
        allowed = {str(c) for c in Control} - {str(Control.STOP)}
        if command not in allowed:
            raise ValueError(f'"command" must be one of {", ".join(sorted(allowed))}')
        late[0].submit(InputEvent(InputKind.CONTROL, str(command), "overlay", clock.now(), author, Priority.CRITICAL))
        return {"command": command}

    return {"say": say, "control": control}


def shutdown_command(games: GameServer) -> Command:
    """The avatar channel's `game_shutdown`: ask a game to save and quit (the Neuro API's proposed
    shutdown/graceful, or shutdown/immediate with "immediate": true)."""

    async def shutdown(message: dict[str, Any]) -> dict[str, Any]:
        game, immediate, cancel = message.get("game"), message.get("immediate", False), message.get("cancel", False)
        if not isinstance(game, str) or not isinstance(immediate, bool) or not isinstance(cancel, bool):
            raise ValueError('needs "game" (a string); "immediate" and "cancel" are true or false')
        if not await games.shutdown(game, graceful=not immediate, wants=not cancel):
            raise ValueError(f"no game {game!r} is connected")
        return {"game": game, "immediate": immediate, "cancel": cancel}

    return shutdown


def review_command(database: Path) -> Command:
    """The avatar channel's `review`: an operator marks a reply good, bad or corrected, as with
    `omoide logs review` (docs/protocols/avatar.md)."""

    async def review(message: dict[str, Any]) -> dict[str, Any]:
        turn, verdict, text = message.get("turn_id"), message.get("verdict"), message.get("text")
        if not isinstance(turn, str) or not isinstance(verdict, str) or not isinstance(text, str | None):
            raise ValueError('needs "turn_id" and "verdict" as strings (and "text", a string, with "corrected")')
        turn_id = await asyncio.to_thread(memory_review.review, database, turn, verdict, text)
        return {"turn_id": turn_id, "verdict": verdict}

    return review


def encoder_from(config: Config) -> Callable[[], Embedder] | None:
    """A loader of the embedding model (run in the background by the store), or None for recall
    by words only. A model that is not on this machine stops the start here."""
    name = config.memory.embedding_model
    if name == "none":
        return None
    try:
        folder = config.path(name)
        path = (bundled.locate("embedding") if name == BUNDLED else
                resolve_embedder(str(folder) if folder.is_dir() else name, config.path(config.model.models_dir)))
    except EmbeddingError as exc:
        raise StartupError(f"memory.embedding_model: {exc}") from None

    def load() -> Embedder:
        with _LOADING:
            return Embedder(path)

    return load


def recall_settings(config: Config) -> RecallSettings:
    return settings(RecallSettings, config.memory)


async def play(config: Config, seed: int | None = None, show: Callable[[str], None] = print,
               opponent: str = "blocker", **kwargs: object) -> str:
    """`omoide play tictactoe`: the character with its game API on, and the example game connected
    to it, played to the end. Returns the winner ("X" is the character). `kwargs` go to build()."""
    kwargs = {"console": True, "stdin": io.StringIO(), **kwargs}  # subtitles; nothing to read
    app = await build(config, **kwargs)  # type: ignore[arg-type]
    assert app.games is not None
    show(f"{app.director.cast.persona.name} plays X and moves first; the opponent plays O"
         f" ({'at random' if opponent == 'random' else 'it wins when it can and blocks when it must'})")
    task = asyncio.create_task(app.director.run(), name="director")
    try:
        token = f"?token={config.game.token}" if config.game.token else ""
        game = TicTacToe(f"ws://127.0.0.1:{app.games.port}/{token}", seed=seed, show=show, opponent=opponent)
        winner = await game.run()
        while app.director.busy:  # the last words about the game
            await asyncio.sleep(0.1)
        return winner
    finally:
        app.director.stop()
        await task
        await app.aclose()


async def run(config: Config, on_ready: Callable[[App], None] | None = None, **kwargs: object) -> None:
    """Build the character and run it until it is stopped (Ctrl-C, SIGTERM, /quit)."""
    app = await build(config, **kwargs)  # type: ignore[arg-type]
    await serve(app, on_ready)


def say_overlay(app: App) -> None:
    """`omoide run`: where the overlay is, for OBS."""
    if app.avatar is not None:
        host = app.config.avatar.host if app.config.avatar.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        token = f"?token={urllib.parse.quote(app.config.avatar.token)}" if app.config.avatar.token else ""
        print(f"overlay (an OBS browser source): http://{host}:{app.avatar.port}/overlay{token}", flush=True)


async def serve(app: App, on_ready: Callable[[App], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, app.director.stop)
    log.info("character ready", extra={"character": app.director.cast.persona.name,
                                       "model": app.director.cast.model.name,
                                       "database": str(Path(app.memory.path))})
    if on_ready is not None:
        on_ready(app)
    try:
        await app.director.run()
    finally:
        await app.aclose()


def companion_config(config: Config) -> Config:
    """The desktop companion: no Twitch, the avatar channel on (the page needs it)."""
    return config.model_copy(update={"twitch": config.twitch.model_copy(update={"enabled": False}),
                                     "avatar": config.avatar.model_copy(update={"enabled": True})})


async def companion(config: Config, open_page: Callable[[str], object] = webbrowser.open,
                    **kwargs: object) -> None:
    """`omoide companion`: talk by voice where there is a microphone, and by typing in the terminal
    or the overlay page (opened in the browser); the page plays the voice when there are no speakers."""
    config = companion_config(config)
    app = await build(config, console=True, listen=IF_POSSIBLE, **kwargs)  # type: ignore[arg-type]

    def ready(app: App) -> None:
        assert app.avatar is not None
        page_audio = isinstance(app.sinks[0], SilentSpeakers)
        url = f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1" + ("&audio=1" if page_audio else "")
        if config.avatar.token:
            url += "&token=" + urllib.parse.quote(config.avatar.token)
        print(f"companion page: {url}" + (" (no speakers here: the page plays the voice)" if page_audio else ""),
              flush=True)
        threading.Thread(target=open_page, args=(url,), name="open-page", daemon=True).start()

    await serve(app, ready)
