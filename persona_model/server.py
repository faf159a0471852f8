"""The server backend: the persona model served over HTTP by anything that speaks the OpenAI chat
API (llama.cpp's server, Ollama, vLLM, LM Studio).

Replies stream as server-sent events; closing the stream closes the request, so the server stops
generating. Game actions ask for JSON under the action's schema with the server's structured
output (`response_format`), and the result is still checked against the schema here.

A server that is down or too slow never stops the character: the first failure is logged once, the
backend raises ModelUnavailable (a fallback model may answer instead), and the server is tried
again after a backoff that doubles up to a ceiling; the first answer after that is logged too.

Adapters: where the server loads LoRA adapters at run time (vLLM with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; llama.cpp's native server, for adapters it was started with),
activating a version in the registry makes the next turn use it; where it cannot, the backend says
so once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import httpx
import jsonschema

from persona_model.generation import GenerationStats, Sampling
from persona_model.json_schema import TruncatedJson, tighten, validate
from persona_model.prompt import PromptRenderer
from runtime.events import Prompt, PromptContext
from runtime.ports import ModelUnavailable

log = logging.getLogger(__name__)

Structured = Literal["auto", "json_schema", "json_object", "none"]
AdapterApi = Literal["none", "vllm", "llamacpp"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    url: str  # the API's base, with its /v1
    _: KW_ONLY
    model: str = ""  # the name the server knows the model by; "" is the first one it lists
    api_key: str | None = field(default=None, repr=False)  # never logged, never shown
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 20.0  # a reply that has not started by then counts as a failure
    read_timeout_s: float = 30.0  # between two pieces of a reply
    retry_min_s: float = 1.0  # the wait after the first failure; it doubles with each further one
    retry_max_s: float = 60.0
    structured: Structured = "auto"  # how JSON for game actions is asked for
    adapters: AdapterApi = "none"  # how activated adapter versions reach the server
    adapter_root: str = ""  # the adapter registry's folder as the server sees it ("" = the same)
    extra: Mapping[str, Any] = field(default_factory=dict)  # merged into every request body
    max_prompt_tokens: int = 4096
    memory_share: float = 0.25
    sampling: Sampling = Sampling()


class ServerError(ValueError):
    """The server answered, but not with what was asked for."""


class ServerPersonaModel:
    """Implements the PersonaModel port against an OpenAI-compatible HTTP server.

    `tokenizer`: the model's tokenizer if it is on this machine (exact prompt budgets); without
    one, prompt lengths are estimated from their size.
    """

    def __init__(self, settings: ServerSettings, *, tokenizer: Any | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.renderer = PromptRenderer(tokenizer, settings.max_prompt_tokens, settings.memory_share)
        self.clock = clock
        self.last_stats = GenerationStats()
        self._client: httpx.AsyncClient | None = None
        self._model = settings.model
        self._adapter: str | None = None  # the registry version in use
        self._weights: str | None = None  # and its folder
        self._lora: Any = None  # what the requests carry to select it (vLLM: a model name)
        # vLLM: the adapters loaded, by the name requests give, and the folder each came from (the
        # most recently used last); one is kept loaded for each character sharing this model
        self._loaded: dict[str, str] = {}
        self.shared_by = 1
        self._staged: tuple[Path | None, str | None] | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = settings.retry_min_s
        self._format: str | None = None  # the structured-output flavour this server took
        self._said_no_adapters = False

    # ---- the port ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._model or "server"

    @property
    def adapter(self) -> str | None:
        return self._adapter

    @property
    def weights(self) -> str | None:
        """The live adapter's folder (None: the base model); two characters' registries may both
        have a "v0001"."""
        return self._weights

    @property
    def traits(self) -> dict[str, float]:
        """Sliders steer the local backend only (a llama.cpp server takes a control vector at its start)."""
        return {}

    def render(self, context: PromptContext) -> Prompt:
        return self.renderer.render(context)

    async def stream(self, prompt: Prompt) -> AsyncGenerator[str, None]:
        self._check_down()
        body = await self._body(prompt, stream=True)
        now = time.monotonic()
        stats = GenerationStats(prompt_tokens=prompt.tokens, asked_at=now, started_at=now)
        self.last_stats = stats
        client = self._http()
        response: httpx.Response | None = None
        pieces: AsyncGenerator[str, None] | None = None
        finished = False
        try:
            try:  # the request, its headers and the first piece: within first_token_timeout_s
                async with asyncio.timeout(self.settings.first_token_timeout_s):
                    response = await client.send(client.build_request("POST", "chat/completions", json=body),
                                                 stream=True)
                    if response.status_code != 200:
                        raise self._failed(await _refusal(response))
                    pieces = _sse_pieces(response.aiter_lines())
                    first = await anext(pieces, None)
            except TimeoutError:
                raise self._failed(f"did not start a reply within {self.settings.first_token_timeout_s:g} s") from None
            self._answered()
            while first is not None:
                stats.new_tokens += 1
                stats.pieces.append((time.monotonic(), first))
                yield first  # closing the stream here closes the request: the server stops
                first = await anext(pieces, None)
            stats.ended_at = time.monotonic()
            finished = True
        except httpx.TransportError as exc:
            raise self._failed(_transport(exc)) from None
        finally:
            stats.stopped_early = not finished
            if pieces is not None:
                await pieces.aclose()
            if response is not None:
                await response.aclose()

    async def json(self, prompt: Prompt, schema: dict[str, Any], max_new_tokens: int = 256) -> str:
        """A JSON document valid against `schema`, asked for with the server's structured output
        and checked here. TruncatedJson when the reply is not such a document."""
        self._check_down()
        bounded = tighten(schema)
        flavours = [self._format] if self._format else (
            ["json_schema", "json_object"] if self.settings.structured == "auto" else [self.settings.structured])
        text = ""
        for n, flavour in enumerate(flavours):
            body = await self._body(prompt, stream=False)
            body["max_tokens"] = max_new_tokens
            if flavour == "json_schema":
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": "action", "schema": bounded, "strict": True}}
            elif flavour == "json_object":  # llama-cpp-python's server: a schema inside json_object
                body["response_format"] = {"type": "json_object", "schema": bounded}
            try:
                async with asyncio.timeout(self.settings.first_token_timeout_s + self.settings.read_timeout_s):
                    response = await self._http().post("chat/completions", json=body)
            except TimeoutError:
                raise self._failed("did not answer a JSON request in time") from None
            except httpx.TransportError as exc:
                raise self._failed(_transport(exc)) from None
            if response.status_code in (400, 422, 500) and n + 1 < len(flavours):
                log.debug("the server refused response_format %s; trying the next", flavour)
                continue
            if response.status_code != 200:
                raise self._failed(await _refusal(response))
            self._answered()
            self._format = flavour
            try:
                text = str(response.json()["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                raise ServerError(f"the server's answer has no message: {response.text[:200]!r}") from None
            break
        try:
            document = json.loads(text, strict=False)  # some engines let raw control characters into strings
            validate(document, schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            raise TruncatedJson(f"the server's reply is not a document valid under the schema ({exc})") from None
        return json.dumps(document, ensure_ascii=False)

    # ---- adapters (the registry follower calls these) --------------------------------------------
    def stage_adapter(self, path: Path | None, version: str | None) -> None:
        self._staged = (path, version)

    async def swap_when_free(self) -> float | None:
        """Make the staged adapter the one the next request uses. Returns the seconds it took, or
        None when this server cannot take adapters (said once) or refused this one (logged)."""
        if self._staged is None:
            return None
        (path, version), self._staged = self._staged, None
        started = time.perf_counter()
        api = self.settings.adapters
        try:
            if api == "vllm":
                await self._vllm_swap(path, version)
            elif api == "llamacpp":
                await self._llamacpp_swap(version)
            else:
                if not self._said_no_adapters:
                    self._said_no_adapters = True
                    log.warning("this model server is not set up to load adapters at run time"
                                " (server.adapters = \"none\"): activated adapter versions are not used;"
                                " set server.adapters to \"vllm\" or \"llamacpp\" where the server can",
                                extra={"version": version})
                return None
        except (ServerError, httpx.TransportError) as exc:
            log.error("the model server did not take the adapter; keeping the one it has",
                      extra={"version": version, "error": str(exc) or type(exc).__name__})
            return None
        self._adapter, self._weights = version, (str(path) if path is not None else None)
        return time.perf_counter() - started

    async def _vllm_swap(self, path: Path | None, version: str | None) -> None:
        """vLLM: load the new version by name (POST /v1/load_lora_adapter), point requests at it,
        then unload the one before (POST /v1/unload_lora_adapter). With several characters on
        this model (`shared_by`), each one's stays loaded while another speaks: her next turn only
        names it; two characters' registries may both have a "v0001", so a name another folder
        holds gets the folder's hash."""
        name = None
        if version is not None and path is not None:
            where = self._server_path(path)
            taken = self._loaded.get(version, where) != where
            name = f"{version}-{hashlib.sha1(where.encode()).hexdigest()[:8]}" if taken else version
            if name not in self._loaded:
                response = await self._http().post("load_lora_adapter", json={"lora_name": name, "lora_path": where})
                if response.status_code != 200 and "already" not in response.text.lower():
                    raise ServerError(f"load_lora_adapter answered HTTP {response.status_code}: {response.text[:200]}")
            self._loaded[name] = self._loaded.pop(name, where)
        self._lora = name
        idle = [n for n in self._loaded if n != name]
        for old in idle[:max(0, len(idle) - (self.shared_by - 1))]:  # the least recently used go
            del self._loaded[old]
            response = await self._http().post("unload_lora_adapter", json={"lora_name": old})
            if response.status_code != 200:
                log.warning("the model server did not unload the adapter before",
                            extra={"version": old, "error": response.text[:200]})

    async def _llamacpp_swap(self, version: str | None) -> None:
        """llama.cpp's server: it can only use adapters given with --lora at its start (listed by
        GET /lora-adapters); each request then says which one applies, at what scale."""
        if version is None:
            self._lora = None
            return
        root = self.settings.url.rstrip("/").removesuffix("/v1")
        response = await self._http().get(f"{root}/lora-adapters")
        if response.status_code != 200:
            raise ServerError(f"GET /lora-adapters answered HTTP {response.status_code}: this server"
                              " cannot switch adapters (llama.cpp's own llama-server can)")
        loaded = response.json()
        match = [a for a in loaded if version in PurePosixPath(str(a.get("path", ""))).parts
                 or PurePosixPath(str(a.get("path", ""))).stem == version]
        if not match:
            raise ServerError(f"llama.cpp's server was not started with adapter {version}: it loads adapters"
                              f" only at its start (--lora .../{version}.gguf, converted with llama.cpp's"
                              " convert_lora_to_gguf.py)")
        self._lora = [{"id": a["id"], "scale": 1.0 if a is match[0] else 0.0} for a in loaded]

    def _server_path(self, path: Path) -> str:
        root = self.settings.adapter_root
        return str(PurePosixPath(root) / path.name) if root else str(path.resolve())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- requests ---------------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.settings
            headers = {"Authorization": f"Bearer {s.api_key}"} if s.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=s.url.rstrip("/") + "/", headers=headers,
                timeout=httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s))
        return self._client

    async def _body(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        s = self.settings.sampling
        body: dict[str, Any] = {
            "model": await self._model_name(),
            "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
            "stream": stream,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if self.settings.adapters == "vllm" and self._lora:
            body["model"] = self._lora  # vLLM serves a loaded adapter under its own name
        elif self.settings.adapters == "llamacpp" and self._lora:
            body["lora"] = self._lora
        body.update(self.settings.extra)
        return body

    async def _model_name(self) -> str:
        if not self._model:  # none configured: the first one the server serves
            try:
                response = await self._http().get("models")
                self._model = str(response.json()["data"][0]["id"])
            except httpx.TransportError as exc:
                raise self._failed(_transport(exc)) from None
            except (ValueError, KeyError, IndexError, TypeError):
                raise self._failed(f"lists no model at GET /models (HTTP {response.status_code})") from None
        return self._model

    # ---- down and back up ------------------------------------------------------------------------
    def _check_down(self) -> None:
        if self._down_since is not None and self.clock() < self._retry_at:
            raise ModelUnavailable(f"the model server at {self.settings.url} is down; next try in"
                                   f" {self._retry_at - self.clock():.1f} s", self._retry_at)

    def _failed(self, why: str) -> ModelUnavailable:
        now = self.clock()
        if self._down_since is None:
            self._down_since, self._backoff = now, self.settings.retry_min_s
            log.warning("the model server is not answering; the character goes on without it and tries"
                        " again with backoff", extra={"url": self.settings.url, "error": why})
        else:
            self._backoff = min(self._backoff * 2, self.settings.retry_max_s)
        self._retry_at = now + self._backoff
        return ModelUnavailable(f"the model server at {self.settings.url} {why}", self._retry_at)

    def _answered(self) -> None:
        if self._down_since is not None:
            log.warning("the model server answers again", extra={
                "url": self.settings.url, "down_s": round(self.clock() - self._down_since, 1)})
            self._down_since = None


async def _sse_pieces(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The text pieces of a streamed chat completion (server-sent events, `data: {...}` lines)."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise ServerError(f"the server sent an event that is not JSON: {data[:120]!r}") from None
        if not isinstance(chunk, dict):
            raise ServerError(f"the server sent an event that is not an object: {data[:120]!r}")
        if "error" in chunk:
            raise ServerError(f"the server stopped the reply: {str(chunk['error'])[:200]}")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            text = delta.get("content") if isinstance(delta, dict) else None
            if text:
                yield str(text)


async def _refusal(response: httpx.Response) -> str:
    body = (await response.aread()).decode("utf-8", "replace")
    hint = {401: " (check the API key's environment variable)", 403: " (check the API key's environment variable)",
            404: " (check server.url and server.model)"}.get(response.status_code, "")
    return f"refused the request with HTTP {response.status_code}{hint}: {body[:200]}"


def _transport(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "cannot be reached"
    if isinstance(exc, httpx.ReadTimeout):
        return "stopped sending in the middle of a reply"
    return f"broke the connection ({type(exc).__name__})"
