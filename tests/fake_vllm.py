"""A fake vLLM OpenAI-compatible server on 127.0.0.1 (vLLM does not run on this machine): streamed
chat completions as server-sent events, /v1/models, and the run-time LoRA endpoints
(/v1/load_lora_adapter, /v1/unload_lora_adapter, on only with VLLM_ALLOW_RUNTIME_LORA_UPDATING)
with vLLM's answers. A reply says which model or adapter generated it. It records every request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeVllm:
    def __init__(self, base: str = "base-model", runtime_lora: bool = True, api_key: str | None = None) -> None:
        self.base = base
        self.runtime_lora = runtime_lora  # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
        self.api_key = api_key
        self.loras: dict[str, str] = {}  # name -> path
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, body)
        self.auth: list[str | None] = []
        self.hang = False  # accept chat requests and never answer
        self.piece_delay = 0.0
        self.llamacpp_loras: list[dict[str, Any]] | None = None  # llama.cpp's GET /lora-adapters, when set
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self, port: int = 0) -> FakeVllm:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, {}))
                if self.path == "/v1/models":
                    ids = [fake.base, *fake.loras]
                    self._json(200, {"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})
                elif self.path == "/lora-adapters" and fake.llamacpp_loras is not None:
                    self._json(200, fake.llamacpp_loras)
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append(("POST", self.path, body))
                fake.auth.append(self.headers.get("Authorization"))
                if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._json(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                elif self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter") and fake.runtime_lora:
                    self._lora(self.path.endswith("/load_lora_adapter"), body)
                else:
                    self._json(404, {"detail": "Not Found"})

            def _lora(self, load: bool, body: dict[str, Any]) -> None:
                name, path = body.get("lora_name"), body.get("lora_path")
                if load:
                    if name in fake.loras:
                        self._json(400, {"object": "error", "message": f"The lora adapter '{name}' has already been loaded.",
                                         "type": "InvalidUserInput", "code": 400})
                    elif not path or not (Path(path) / "adapter_config.json").is_file():
                        self._json(404, {"object": "error", "message": f"No adapter found for {path}",
                                         "type": "NotFoundError", "code": 404})
                    else:
                        fake.loras[name] = path
                        self._text(200, f"Success: LoRA adapter '{name}' added successfully.")
                elif name in fake.loras:
                    del fake.loras[name]
                    self._text(200, f"Success: LoRA adapter '{name}' removed successfully.")
                else:
                    self._json(404, {"object": "error", "message": f"The lora adapter '{name}' cannot be found.",
                                     "type": "NotFoundError", "code": 404})

            def _chat(self, body: dict[str, Any]) -> None:
                model = body.get("model")
                if model != fake.base and model not in fake.loras:
                    self._json(404, {"object": "error", "message": f"The model `{model}` does not exist.",
                                     "type": "NotFoundError", "code": 404})
                    return
                if fake.hang:
                    time.sleep(30)
                    return
                applied = [fake.llamacpp_loras[a["id"]]["path"].rsplit("/", 1)[-1]
                           for a in body.get("lora") or () if a["scale"] > 0]  # llama.cpp: by id and scale
                words = f"I am {applied[0] if applied else model}. Hello chat, it is good to see you here tonight.".split(" ")
                if not body.get("stream"):
                    self._json(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                          "content": " ".join(words)}}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i, word in enumerate(words):
                        piece = word if i == 0 else " " + word
                        self._chunk(f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n")
                        time.sleep(fake.piece_delay)
                    self._chunk("data: [DONE]\n\n")
                    self._chunk("")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _chunk(self, text: str) -> None:
                data = text.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _json(self, code: int, value: Any) -> None:
                self._text(code, json.dumps(value), "application/json")

            def _text(self, code: int, text: str, kind: str = "text/plain") -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-vllm", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def adapter_calls(self) -> list[tuple[str, str | None]]:
        """The LoRA requests in order: (endpoint name, lora_name)."""
        return [(path.rsplit("/", 1)[-1], body.get("lora_name")) for method, path, body in self.requests
                if path.endswith("_lora_adapter")]

    def chat_models(self) -> list[str]:
        return [body.get("model") for _, path, body in self.requests if path == "/v1/chat/completions"]
