"""The character's parts, each built from its section of the configuration: the persona, the
moderation lists, the inbox, the voice, the ears, VTube Studio, the game API. runtime/app.py
puts them together."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from memory.recall import RecallSettings
from persona_model.card import CardError, load_card
from plugins.audio import EchoGate, PlaybackLog, SynthesizerError
from plugins.avatar_vts import VtsAvatar, VtsClient
from plugins.game_neuro import GameServer
from plugins.guard import is_loopback
from plugins.listening import ListenerSettings, Microphone, MicrophoneError
from plugins.mic_file import FileMicrophone
from plugins.mic_sounddevice import SoundDeviceMicrophone
from plugins.stt_whisper import WhisperListener, load_whisper
from plugins.tts_coqui import CoquiSynthesizer
from plugins.tts_espeak import EspeakSynthesizer
from plugins.tts_piper import PiperSynthesizer
from runtime.config import Config, settings
from runtime.errors import MicrophoneUnavailable, StartupError
from runtime.events import Persona
from runtime.inbox import DEFAULT_MAX_AGE, DEFAULT_WEIGHTS, Inbox, Scoring
from runtime.models import piper_voice, whisper_model
from runtime.moderation import ChatFilter, Moderator
from runtime.ports import Clock, Synthesizer
from runtime.sentences import EXPRESSIONS, TAG, tag_name
from runtime.voices import FallbackSynthesizer


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


def inbox_from(config: Config, clock: Clock, names: Sequence[str]) -> Inbox:
    """The inbox; a line naming a character (`names`) scores higher."""
    i = config.inbox
    scoring = settings(Scoring, i, weights={**DEFAULT_WEIGHTS, **i.weights}, max_age_s={
        **DEFAULT_MAX_AGE, "chat": i.max_chat_age_s, "message": i.max_chat_age_s, **i.max_age_s})
    return Inbox(clock, i.capacity, scoring=scoring, names=tuple(names))


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


def recall_settings(config: Config) -> RecallSettings:
    return settings(RecallSettings, config.memory)


def control_token(config: Config) -> str:
    """The avatar channel's control token: read from avatar.control_token_file, made there (mode
    0600, readable by this user alone) at the first start."""
    path = config.path(config.avatar.control_token_file)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as exc:
        raise StartupError(f"avatar.control_token_file {path}: {exc.strerror or exc}") from None
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token
