"""Structured logs: the message is fixed text; chat text, names and numbers travel as fields
(`log.info("turn done", extra={"turn_id": ...})`) and are printed as key=value or as JSON."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from pathlib import Path

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_WORDS = ("token", "secret", "password", "oauth")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    return {k: "***" if any(w in k.lower() for w in _SECRET_WORDS) else v for k, v in fields.items()}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():7} {record.name}: "
        line += record.getMessage()
        for key, value in _fields(record).items():
            line += f" {key}={json.dumps(value, default=str, ensure_ascii=False)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", file: Path | None = None, terminal: str | None = None) -> None:
    """Logs go to stderr (at `terminal`, default `level`), so the terminal chat on stdout stays
    clean, and to `file` if given (at `level`; 10 MB, then rotated, three kept)."""
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.setLevel((terminal or level).upper())
    handlers = [handler]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(file, maxBytes=10 << 20, backupCount=3, encoding="utf-8")
        to_file.setFormatter(formatter)
        handlers.append(to_file)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    logging.getLogger("twitchio.client").addFilter(
        lambda r: "StarletteAdapter" not in r.getMessage())  # an optional extra we do not use
    for noisy in ("websockets", "httpx", "httpcore", "huggingface_hub", "transformers", "filelock",
                  "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
