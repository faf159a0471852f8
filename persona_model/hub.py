"""Find a model on disk, or download it from the Hugging Face Hub (`omoide models pull`)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

# what a causal LM needs to run; skips other frameworks' weights and large extras
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


class ModelNotFound(Exception):
    """The model is not on disk and could not be downloaded. The message says where we looked."""


def local_folder(models_dir: Path, model_id: str) -> Path:
    return models_dir / model_id.replace("/", "--")


def _is_model(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _looks_like_path(model_id: str) -> bool:
    # a Hub id is "name" or "owner/name"
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1


def resolve(model_id: str, models_dir: Path, download: bool) -> Path:
    """The folder holding `model_id`: a path, our models folder, the Hub cache, or a download."""
    looked: list[str] = []
    path = Path(model_id).expanduser()
    if path.is_dir():
        if _is_model(path):
            return path
        raise ModelNotFound(f"model folder {path} has no config.json: it is not a transformers model")
    looked.append(str(path.resolve()))
    if _looks_like_path(model_id):
        raise ModelNotFound(_message(model_id, looked, "it looks like a path and is not there"))
    ours = local_folder(models_dir, model_id)
    if _is_model(ours):
        return ours
    looked.append(str(ours))
    try:
        return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=PATTERNS))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        looked.append("the Hugging Face cache")
    if not download:
        raise ModelNotFound(_message(model_id, looked, "downloads are off (model.download = false)"))
    try:
        return pull(model_id, models_dir)
    except Exception as exc:  # noqa: BLE001 - reported with the way out
        raise ModelNotFound(_message(model_id, looked, f"the download failed: {_short(exc)}")) from None


def pull(model_id: str, models_dir: Path) -> Path:
    """Download a model from the Hub into our models folder (the network path for users)."""
    target = local_folder(models_dir, model_id)
    snapshot_download(model_id, local_dir=target, allow_patterns=PATTERNS, etag_timeout=10)
    if not _is_model(target):
        raise ModelNotFound(f"{model_id} downloaded to {target}, but it has no config.json")
    return target


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _message(model_id: str, looked: list[str], why: str) -> str:
    return (
        f"model {model_id!r} is not on disk and {why}.\n"
        f"Looked in: {'; '.join(looked)}.\n"
        "Ways out:\n"
        "  1. the model that comes with Omoide: model.id = \"bundled\" (or OMOIDE_MODEL__ID=bundled)\n"
        "  2. point the config at a local model folder: model.id = \"/path/to/model\""
        " (or OMOIDE_MODEL__ID=/path/to/model), or fetch it where there is a network:"
        f" omoide models pull {model_id}\n"
        "  3. run the model on a server (llama.cpp, Ollama, vLLM): model.backend = \"server\" and [server] url"
        " (README: Running the model on a server)"
    )
