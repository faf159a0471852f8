"""App wiring: the only place that reads the configuration and picks concrete classes.

`build` puts a character together in one short composition: its parts (runtime/parts.py, each
from its config section), where a reply goes (`outputs`), where inputs come from (`inputs`), and
what runs beside the turns (`background`); then the director, built last, with all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import threading
import urllib.parse
import webbrowser
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TextIO

from omoide_game.tictactoe import TicTacToe

from memory.db import owner
from memory.schema import SchemaError
from memory.store import SqliteMemory
from persona_model.adapters import AdapterFollower, AdapterTarget, AdapterView
from plugins.audio import PlaybackLog
from plugins.avatar_vts import VtsAvatar
from plugins.avatar_ws import AvatarServer
from plugins.chat_console import ConsoleChatSource, ConsoleSubtitles
from plugins.chat_twitch import TwitchChatSource, TwitchError, TwitchReplies, load_account
from plugins.game_neuro import GameServer
from plugins.guard import is_loopback
from plugins.speakers_silent import SilentSpeakers
from plugins.speakers_sounddevice import open_speakers
from plugins.stt_whisper import WhisperListener
from runtime import bundled
from runtime.avatar_commands import channel_commands, collab_command
from runtime.characters import cast_of, homed
from runtime.collab import CollabSettings, Troupe, voiced
from runtime.config import Config, settings
from runtime.director import Activity, Director, DirectorSettings
from runtime.embedding import encoder_from
from runtime.errors import MicrophoneUnavailable, StartupError
from runtime.game import GameSettings
from runtime.heap import keep_heap_trimmed
from runtime.models import adapter_registry, backends, bundled_kinds, load_persona_model, starting_adapter
from runtime.parts import (
    MicrophoneFactory,
    chat_filter_from,
    control_token,
    expressions,
    game_server_from,
    greeting,
    inbox_from,
    listener_from,
    moderator_from,
    persona_from,
    recall_settings,
    synthesizer_from,
    vts_from,
)
from runtime.ports import Clock, MonotonicClock, OutputSink, PersonaModel, Source
from runtime.reflection import ReflectionSettings, Reflector
from runtime.sliders import LiveSliders, live_sliders, slider_commands, slider_system
from runtime.turn import Cast, TurnSettings

log = logging.getLogger(__name__)

IF_POSSIBLE = "if-possible"  # build(listen=...): listen where there is a microphone, else take typed text
Job = Callable[[], Coroutine[None, None, None]]


class Closeable(Protocol):
    async def aclose(self) -> None: ...


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
    sliders: LiveSliders | None = None  # the trait sliders, when the model can be steered
    memories: list[SqliteMemory] = field(default_factory=list)  # each character's (memory is the first's)

    async def aclose(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()
        if self.sliders is not None:
            await self.sliders.aclose()
        for member in self.director.troupe.members:
            if isinstance(member.cast.model, AdapterView):
                await member.cast.model.aclose()  # her view: what it was preparing stops
        model = self.director.cast.model
        await (model.model if isinstance(model, AdapterView) else model).aclose()  # the one the characters share
        for memory in self.memories or [self.memory]:
            await memory.aclose()


@dataclass
class Outputs:
    """Where a reply goes: the pacing sink (the speakers, or silence kept at their pace) and the
    sinks that watch it (the avatar channel, VTube Studio)."""

    playout: OutputSink
    observers: list[OutputSink]
    avatar: AvatarServer | None  # built, listening once its commands are known (after the director)


@dataclass
class Inputs:
    """Where inputs come from, and the sinks that belong to a source (Twitch replies, the
    terminal's subtitles)."""

    sources: list[Source]
    observers: list[OutputSink]
    games: GameServer | None


@dataclass
class Background:
    """What runs beside the turns: reflection, the adapter follower, the heap trim, and the caller's."""

    jobs: tuple[Job, ...]
    reflector: Reflector | None
    follower: AdapterFollower | None


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
    sources: Sequence[Source] = (),
    background: Sequence[Job] = (),
) -> App:
    """Assemble the character (or, with [[characters]], the characters of one stream) from the
    configuration. `model` skips loading one (tests, benches). `background` jobs run beside the
    turns (the training schedule)."""
    clock = clock or MonotonicClock()
    listen = config.stt.enabled if listen is None else listen
    cast = cast_of(config)  # one configuration per character: her card, voice and home
    bundled.check(sorted({k for c in cast for k in bundled_kinds(c, listen is True, model is None)}))
    personas = [persona_from(c) for c in cast]
    cast = [homed(c, p.name) for c, (p, _) in zip(cast, personas, strict=True)]  # her own history, memories, adapters
    lead, solo = cast[0], len(cast) == 1
    moderator, chat_filter = moderator_from(config), chat_filter_from(config)  # a missing list stops it here
    synthesizers = [synthesizer_from(c) for c in cast]
    opened: list[Closeable] = []  # closed again if the start fails
    try:
        memories = []
        for c, (persona, _) in zip(cast, personas, strict=True):
            # before the slow model load: a wrong database stops the start at once
            memories.append(await memory_from(c, clock, persona.name))
            opened.append(memories[-1])
        playback, listener = await hearing(config, clock, listen, microphone)
        if model is None:
            model = await asyncio.to_thread(load_persona_model, lead)
        for memory, (persona, lore) in zip(memories, personas, strict=True):
            for text in lore:
                await memory.add_memory(text, source=persona.source)
        sliders = live_sliders(lead, model, slider_system(personas[0][0])) if solo else None
        if sliders is not None:
            opened.append(sliders)
        names = [p.name for p, _ in personas]
        own_vts = any(e.vts for e in config.characters)  # each her own VTube Studio, not one for all
        out = await outputs(config.model_copy(update={"vts": config.vts.model_copy(update={"enabled": False})})
                            if own_vts else config, clock, names[0], playback, opened)
        theirs = [await her_vts(c, clock, opened) if own_vts else [] for c in cast]
        ins = await inputs(config, clock, " & ".join(names), [*sources, *([listener] if listener else [])],
                           console, stdin, stdout, opened)
        inbox = inbox_from(config, clock, names)
        activity = Activity(inbox)
        views = views_of(model, cast)
        casts = [Cast(
            persona=persona, model=view, synthesizer=synthesizer, playout=out.playout, memory=memory,
            moderator=moderator, clock=clock,
            observers=(*voiced((*out.observers, *ins.observers), persona.name, solo), *her_own),
            settings=settings(TurnSettings, config.turn, expressions=expressions(persona, c)),
            games=ins.games, game_settings=settings(GameSettings, config.game),
        ) for c, (persona, _), view, synthesizer, memory, her_own in zip(cast, personas, views, synthesizers,
                                                                         memories, theirs, strict=True)]
        jobs = background_from(cast, casts, clock, activity,
                               [*background, *([lambda: sliders.watch(clock)] if sliders else [])])
        troupe = Troupe(casts, settings(CollabSettings, config.collab))
        for member, (persona, _), c in zip(troupe.members, personas, cast, strict=True):
            member.greeting = greeting(persona) if c.character.greet else ""
        director = Director(casts[0], inbox, ins.sources, director_settings(lead, exit_when_sources_end),
                            chat_filter=chat_filter, activity=activity, background=jobs.jobs, troupe=troupe)
        if out.avatar is not None:
            out.avatar.commands.update(channel_commands(
                director.submit, clock, config.chat.console.name, lead.path(lead.memory.database), ins.games))
            if sliders is not None:
                out.avatar.commands.update(slider_commands(sliders))
            if not solo:
                out.avatar.commands["collab"] = collab_command(director)
                out.avatar.characters = names
            await start_avatar(config, out.avatar)
            opened.append(out.avatar)
    except BaseException:
        for thing in reversed(opened):
            with contextlib.suppress(Exception):
                await thing.aclose()
        raise
    return App(lead, director, memories[0], out.avatar, [out.playout, *out.observers, *ins.observers,
                                                          *(v for own in theirs for v in own)],
               jobs.reflector, jobs.follower, ins.games, sliders, memories=memories)


def views_of(model: PersonaModel, cast: list[Config]) -> list[PersonaModel]:
    """Each character's model: the one model itself for one character; for several, a view of
    it each, and room in its prefix cache for each one's prompt start."""
    if len(cast) == 1:
        return [model]
    for backend in backends(model):  # room for each one's prompt start, or adapter on the server
        if hasattr(backend, "shared_by"):
            backend.shared_by = len(cast)
    return [view_of(model, c) for c in cast]


def view_of(model: PersonaModel, config: Config) -> AdapterView:
    """One character's view of the model the characters share, on her own adapter."""
    path, name = starting_adapter(config)
    return AdapterView(model, name or (path.name if path else None), path)


async def memory_from(config: Config, clock: Clock, character: str) -> SqliteMemory:
    database = config.path(config.memory.database)
    found = owner(database)
    if found not in (None, character):  # a [[characters]] home given by hand
        log.warning("%s holds %s's memories; %s uses it, as configured", database, found, character)
    try:
        return await SqliteMemory.open(database, encoder_from(config), recall_settings(config), clock,
                                       approve_restated_after_s=config.learning.approve_restated_after_h * 3600,
                                       character=character)
    except SchemaError as exc:
        raise StartupError(f"memory.database {config.path(config.memory.database)}: {exc}") from None


async def hearing(config: Config, clock: Clock, listen: bool | str, microphone: MicrophoneFactory | None,
                  ) -> tuple[PlaybackLog | None, WhisperListener | None]:
    """The ears, and the log of what the speakers play (for the echo gate), when listening. Before
    the model loads: without a microphone, a companion starts once, typing only."""
    if not listen:
        return None, None
    playback = PlaybackLog()
    try:
        return playback, await asyncio.to_thread(listener_from, config, clock, playback, microphone)
    except MicrophoneUnavailable as exc:
        if listen != IF_POSSIBLE:
            raise
        log.warning("no microphone (or no speech model): the companion takes typed text only",
                    extra={"reason": str(exc)})
        return None, None


async def outputs(config: Config, clock: Clock, character: str, playback: PlaybackLog | None,
                  opened: list[Closeable]) -> Outputs:
    playout: OutputSink
    if config.audio.output == "speakers":
        playout = open_speakers(clock, config.audio.device or None, playback)
    else:
        playout = SilentSpeakers(clock, playback)
    observers: list[OutputSink] = []
    avatar = None
    if config.avatar.enabled:
        a = config.avatar
        if not a.token and not is_loopback(a.host):
            raise StartupError(f"avatar.host = {a.host!r} lets other machines connect: set avatar.token too"
                               " (clients then connect with ?token=..., the overlay at /overlay?token=...)")
        avatar = AvatarServer(a.host, a.port, audio_format=a.audio_format, character=character,
                              queue_size=a.queue_size, token=a.token, control_token=control_token(config),
                              allowed_origins=a.allowed_origins, rate=a.rate)
        observers.append(avatar)
    if config.vts.enabled:
        vts: VtsAvatar = vts_from(config, clock)
        await vts.start()  # connects in the background: VTube Studio may start later
        opened.append(vts)
        observers.append(vts)
    return Outputs(playout, observers, avatar)


async def her_vts(config: Config, clock: Clock, opened: list[Closeable]) -> list[OutputSink]:
    """One character's own VTube Studio (a [[characters]] entry's `vts`), when it is enabled."""
    if not config.vts.enabled:
        return []
    vts = vts_from(config, clock)
    await vts.start()  # connects in the background: VTube Studio may start later
    opened.append(vts)
    return [vts]


async def start_avatar(config: Config, avatar: AvatarServer) -> None:
    try:
        await avatar.start()
    except OSError as exc:
        raise StartupError(
            f"avatar channel cannot listen on {config.avatar.host}:{config.avatar.port}"
            f" ({exc.strerror or exc}); set avatar.port to a free port or avatar.enabled = false") from None


async def inputs(config: Config, clock: Clock, character: str, given: list[Source], console: bool | None,
                 stdin: TextIO | None, stdout: TextIO | None, opened: list[Closeable]) -> Inputs:
    sources, observers = list(given), list[OutputSink]()
    games = None
    if config.game.enabled:
        games = await game_server_from(config, clock, character)
        opened.append(games)
        sources.append(games)
    if config.twitch.enabled:
        try:
            twitch = TwitchChatSource(clock, load_account(config.path(config.twitch.token_file)), config.twitch.events)
        except TwitchError as exc:
            raise StartupError(f"twitch: {exc}") from None
        sources.append(twitch)
        if config.twitch.reply_in_chat:
            observers.append(TwitchReplies(twitch, clock, config.twitch.bot_is_moderator))
    if config.chat.console.enabled if console is None else console:
        sources.append(ConsoleChatSource(clock, config.chat.console.name, stdin, stdout, character))
        observers.append(ConsoleSubtitles(character, stdout))
    return Inputs(sources, observers, games)


def background_from(cast: Sequence[Config], casts: Sequence[Cast], clock: Clock, activity: Activity,
                    given: Sequence[Job]) -> Background:
    """Each character's reflection and adapter follower, the heap trim, and the caller's jobs."""
    reflectors, followers = [], []
    for config, c in zip(cast, casts, strict=True):
        if config.memory.reflection.enabled:
            reflectors.append(Reflector(c.model, c.memory, c.persona, clock, activity.busy,  # type: ignore[arg-type]
                                        settings(ReflectionSettings, config.memory.reflection)))
        if config.learning.follow and not config.model.adapter:  # the server and its local stand-in each follow
            followers += [AdapterFollower(adapter_registry(config), backend) for backend in backends(c.model)
                          if isinstance(backend, AdapterTarget)]
    jobs = (*(r.run for r in reflectors), *(f.run for f in followers), keep_heap_trimmed, *given)
    return Background(jobs, reflectors[0] if reflectors else None, followers[-1] if followers else None)


def director_settings(config: Config, exit_when_sources_end: bool) -> DirectorSettings:
    return settings(
        DirectorSettings, config.turn, exit_when_sources_end=exit_when_sources_end,
        barge_in=config.barge_in.mode, barge_in_min_dbfs=config.barge_in.min_dbfs,
        idle_after_s=config.idle.after_s, idle_min_interval_s=config.idle.min_interval_s,
        thanks=dict(config.chat.thanks), **({"idle_prompt": config.idle.prompt} if config.idle.prompt else {}))


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
        url = (f"http://127.0.0.1:{app.avatar.port}/overlay?companion=1&control={app.avatar.control_token}"
               + ("&audio=1" if page_audio else ""))
        if config.avatar.token:
            url += "&token=" + urllib.parse.quote(config.avatar.token)
        print(f"companion page: {url}" + (" (no speakers here: the page plays the voice)" if page_audio else ""),
              flush=True)
        threading.Thread(target=open_page, args=(url,), name="open-page", daemon=True).start()

    await serve(app, ready)
