"""The adapter registry: every LoRA version the character has trained, which one is live, and the
order they were made live in (for rollback).

A folder (`[learning] adapters`, default training_logs/adapters):

    registry.json   {"active": "v0002", "history": ["v0001", "v0002"], "versions": {"v0001": {...}}}
    v0001/          the peft adapter (adapter_config.json, adapter_model.safetensors) and gate.json

Each version records its parent (the adapter it was trained on top of), its data window, the
base model, its gate metrics and verdict, and when it was made. Writers (the CLI, a scheduled
training run) take a file lock around read-modify-write and replace registry.json atomically, so a
reader (the running character) never sees half a file. The runtime follows `active`: see
`AdapterFollower`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

REGISTRY = "registry.json"


class RegistryError(ValueError):
    """A version that does not exist, or an action the registry refuses; the message says which."""


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    version: str
    parent: str | None  # the version it was trained on top of (None: the base model)
    window: str  # the update window it learned from
    base: str  # the base model it belongs to
    created: str  # ISO time
    passed: bool  # its gate verdict
    metrics: dict[str, Any] = field(default_factory=dict)  # the gate's numbers, candidate and current
    note: str = ""


class AdapterRegistry:
    """Reads and changes the registry folder."""

    def __init__(self, folder: Path, base: str | None = None, normalize: Callable[[str], str] | None = None) -> None:
        """`base`: the base model the character runs now, as versions record it; a version
        trained on another can be neither activated nor loaded. `normalize` turns a recorded base
        into that form (a relative folder recorded by an older version, say)."""
        self.folder = Path(folder)
        self.file = self.folder / REGISTRY
        self.base = base
        self._normalize = normalize or (lambda recorded: recorded)

    def fits(self, version: AdapterVersion) -> bool:
        """Was this version trained on the base model the character runs now?"""
        return self.base is None or self._normalize(version.base) == self.base

    def misfit(self, version: AdapterVersion) -> str:
        """One line on why a version does not fit this base model."""
        return (f"{version.version} was trained on {version.base}, not on the model configured now"
                f" ({self.base}): a LoRA fits only its own base model")

    # ---- reading -----------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"active": None, "history": [], "versions": {}}
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.file} is not valid JSON ({exc}); restore it from {self.file}.bak") from None
        if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
            raise RegistryError(f"{self.file} is not an adapter registry")
        return data

    def versions(self) -> list[AdapterVersion]:
        return [AdapterVersion(**v) for _, v in sorted(self._load()["versions"].items())]

    def get(self, version: str) -> AdapterVersion:
        found = self._load()["versions"].get(version)
        if found is None:
            known = ", ".join(sorted(self._load()["versions"])) or "none yet"
            raise RegistryError(f"no adapter version {version!r} (known: {known})")
        return AdapterVersion(**found)

    @property
    def active(self) -> AdapterVersion | None:
        data = self._load()
        return AdapterVersion(**data["versions"][data["active"]]) if data.get("active") else None

    def history(self) -> list[str]:
        return list(self._load()["history"])

    def path(self, version: str) -> Path:
        return self.folder / version

    def stamp(self) -> tuple[int, int] | None:
        """Changes whenever registry.json is replaced: what a follower polls."""
        try:
            st = self.file.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_ino

    # ---- changing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load()
            yield data
            if self.file.exists():
                shutil.copyfile(self.file, self.file.with_name(REGISTRY + ".bak"))
            tmp = self.file.with_name(REGISTRY + ".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.file)  # readers see the old file or the new one, never half

    def register(self, adapter: Path, *, parent: str | None, window: str, base: str, passed: bool,
                 metrics: dict[str, Any], note: str = "") -> AdapterVersion:
        """Copy a trained adapter folder in as the next version (not activated)."""
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise RegistryError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
        with self._editing() as data:
            version = f"v{len(data['versions']) + 1:04d}"
            target = self.path(version)
            tmp = self.folder / f".{version}.incoming"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(adapter, tmp)
            os.replace(tmp, target)
            entry = AdapterVersion(version, parent, window, base, dt.datetime.now().isoformat(timespec="seconds"),
                                   passed, metrics, note)
            data["versions"][version] = asdict(entry)
        return entry

    def activate(self, version: str, *, force: bool = False) -> AdapterVersion:
        """Make a version the live one. One that failed its gate needs `force`."""
        with self._editing() as data:
            found = data["versions"].get(version)
            if found is None:
                raise RegistryError(f"no adapter version {version!r}")
            if not self.fits(AdapterVersion(**found)):  # not even with force: it cannot be applied
                raise RegistryError(self.misfit(AdapterVersion(**found)))
            if not found["passed"] and not force:
                raise RegistryError(f"{version} failed its gate (see its gate.txt); use --force to activate it anyway")
            if data.get("active") != version:
                data["active"] = version
                data["history"].append(version)
        return AdapterVersion(**found)

    def rollback(self) -> AdapterVersion | None:
        """Go back to the version that was live before the current one (None: the base model)."""
        with self._editing() as data:
            if not data.get("active"):
                raise RegistryError("no adapter is active: nothing to roll back")
            history = [v for v in data["history"] if v in data["versions"]]
            history.pop()  # the current one
            data["history"] = history
            data["active"] = history[-1] if history else None
            return AdapterVersion(**data["versions"][data["active"]]) if data["active"] else None


def diff(a: AdapterVersion, b: AdapterVersion) -> list[tuple[str, Any, Any]]:
    """(field, a's value, b's value) for every field and gate metric that differs."""
    rows: list[tuple[str, Any, Any]] = []
    for name in ("parent", "window", "base", "created", "passed", "note"):
        if getattr(a, name) != getattr(b, name):
            rows.append((name, getattr(a, name), getattr(b, name)))
    ma, mb = a.metrics.get("candidate", {}), b.metrics.get("candidate", {})
    for key in sorted(set(ma) | set(mb)):
        if ma.get(key) != mb.get(key):
            rows.append((key, ma.get(key), mb.get(key)))
    return rows


@runtime_checkable
class AdapterTarget(Protocol):
    """A model that can take a new adapter version while it runs (the local model, a model server)."""

    @property
    def adapter(self) -> str | None:
        """The version serving now (None: the base model)."""
        ...

    def stage_adapter(self, path: Path | None, version: str | None) -> None:
        """Load `version` from `path` beside the one serving (None: back to the base); blocking."""
        ...

    async def swap_when_free(self) -> float | None:
        """Swap the staged version in if no generation is running: the seconds it took, or None
        when it was left for the next generation to do first."""
        ...


class AdapterFollower:
    """Keeps a running model on the registry's active version: polls registry.json, loads a newly
    activated adapter beside the running one, and swaps it in between turns (the model's
    `swap_when_free`). A model started on a pinned `model.adapter` does not follow."""

    def __init__(self, registry: AdapterRegistry, model: AdapterTarget, poll_s: float = 1.0) -> None:
        self.registry = registry
        self.model = model
        self.poll_s = poll_s
        self._refused: str | None = None  # the version last refused for its base (said once)

    async def run(self) -> None:
        seen: object = object()
        while True:
            stamp = await asyncio.to_thread(self.registry.stamp)
            if stamp != seen:
                seen = stamp
                with contextlib.suppress(RegistryError):
                    await self.follow()
            await asyncio.sleep(self.poll_s)

    async def follow(self) -> None:
        try:
            active = await asyncio.to_thread(lambda: self.registry.active)
        except RegistryError as exc:
            log.error("adapter registry unreadable; keeping the current adapter", extra={"error": str(exc)})
            raise
        version = active.version if active else None
        if version == self.model.adapter:
            return
        if active is not None and not self.registry.fits(active):
            if version != self._refused:
                self._refused = version
                log.error("the activated adapter belongs to another base model; keeping the current one",
                          extra={"version": version, "error": self.registry.misfit(active)})
            return
        started = time.perf_counter()
        path = self.registry.path(version) if version else None
        try:
            await asyncio.to_thread(self.model.stage_adapter, path, version)
        except Exception as exc:  # noqa: BLE001 - a broken adapter folder must not stop the character
            log.error("cannot load the activated adapter; keeping the current one",
                      extra={"version": version, "error": f"{type(exc).__name__}: {exc}"})
            return
        held = await self.model.swap_when_free()  # None: a reply is being generated; it swaps first
        if held is not None:
            log.info("adapter swapped in", extra={"version": version, "swap_ms": round(held * 1000, 2),
                                                  "load_ms": round((time.perf_counter() - started) * 1000, 1)})


_TURNS: weakref.WeakKeyDictionary[Any, tuple[asyncio.AbstractEventLoop, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _turns_of(model: Any) -> asyncio.Lock:
    """The lock the views of one shared model take around "her adapter in, then her reply", so
    that one character's swap never lands between another's swap and her generation."""
    loop = asyncio.get_running_loop()
    held = _TURNS.get(model)
    if held is None or held[0] is not loop:
        held = _TURNS[model] = (loop, asyncio.Lock())
    return held[1]


class AdapterView:
    """One character's view of a model several characters share (a duo on one base model):
    implements the PersonaModel port, and AdapterTarget for her own registry's follower. Her
    adapter (or the base model) is swapped into the shared model before each of her replies (a
    tensor copy of milliseconds), and before her next prompt's start is prepared while another
    character speaks; the rest is the shared model's. The shared model is closed once, by its
    owner."""

    def __init__(self, model: Any, version: str | None = None, path: Path | None = None) -> None:
        self.model = model
        self._wanted: tuple[Path | None, str | None] = (path, version)
        self._preparing: set[asyncio.Task[None]] = set()

    # ---- AdapterTarget: her registry's follower sets what she speaks with ----------------------
    @property
    def adapter(self) -> str | None:
        return self._wanted[1]

    def stage_adapter(self, path: Path | None, version: str | None) -> None:
        self._wanted = (path, version)  # read when her next reply starts

    async def swap_when_free(self) -> float | None:
        return None

    def _live(self) -> bool:
        """Her adapter is the one in the shared model (known by its folder where the model says it)."""
        path, version = self._wanted
        weights = getattr(self.model, "weights", None if path is None else str(path))
        return bool(self.model.adapter == version and weights == (None if path is None else str(path)))

    async def _mine(self) -> None:
        if not self._live():
            path, version = self._wanted
            await asyncio.to_thread(self.model.stage_adapter, path, version)
            await self.model.swap_when_free()  # or the shared model swaps before it generates

    # ---- PersonaModel -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.model.name)

    @property
    def traits(self) -> Any:
        return self.model.traits

    @property
    def last_stats(self) -> Any:
        return self.model.last_stats

    def render(self, context: Any) -> Any:
        return self.model.render(context)

    async def stream(self, prompt: Any) -> Any:
        async with _turns_of(self.model):
            await self._mine()
            async with contextlib.aclosing(self.model.stream(prompt)) as pieces:
                async for piece in pieces:
                    yield piece

    async def json(self, prompt: Any, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        async with _turns_of(self.model):
            await self._mine()
            return str(await self.model.json(prompt, schema, max_new_tokens))

    def prepare(self, context: Any) -> None:
        """Her next prompt's start computed ahead (returns at once): her adapter is swapped in
        first if another character's is live."""
        if not hasattr(self.model, "prepare"):
            return
        if self._live():
            self.model.prepare(context)
            return
        task = asyncio.get_running_loop().create_task(self._prepare(context), name="prepare-her-turn")
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _prepare(self, context: Any) -> None:
        try:
            async with _turns_of(self.model):
                await self._mine()
                if self._live():
                    self.model.prepare(context)
        except Exception:  # noqa: BLE001 - an optimisation: her reply computes its prompt whole instead
            log.exception("her next prompt could not be prepared", extra={"adapter": self.adapter})

    async def aclose(self) -> None:
        for task in self._preparing:
            task.cancel()
