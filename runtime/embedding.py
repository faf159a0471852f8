"""The embedding model the configuration names, found without loading it: light enough for
`omoide memory search`, which must not pay for the language model's imports."""

from __future__ import annotations

import threading
from collections.abc import Callable

from memory.embed import Embedder, EmbeddingError
from memory.embed import resolve as resolve_embedder
from runtime import bundled
from runtime.bundled import BUNDLED
from runtime.config import Config
from runtime.errors import StartupError

# transformers' from_pretrained patches torch globally while it builds a model (meta device, init
# functions): two threads loading at once can leave weights on the meta device. The language model
# and the embedding model (loaded in the background) take turns.
LOADING = threading.Lock()


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

    kept = config.path(config.model.models_dir) / "onnx"  # its graph for onnxruntime, exported once

    def load() -> Embedder:
        with LOADING:
            return Embedder(path, cache=kept)

    return load
