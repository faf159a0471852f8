"""Reading the JSONL files the learning loop passes between its steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file; a line that is not JSON names the file and line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise DataError(f"{path}:{n}: not JSON ({exc})") from None
    return out
