"""How long the light commands take to answer, from a fresh process, on this machine.

`omoide config check`, `omoide memory list` and `omoide logs export` read a file and a database;
they should not pay for the language model's libraries. Printed beside them: the floor (the
interpreter starting and exiting) and what importing torch and transformers alone costs, which
every command paid before each command's module was imported only when it ran.

    python bench/light_commands.py [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory import admin  # noqa: E402
from memory.schema import migrate  # noqa: E402


def seconds(argv: list[str], runs: int) -> tuple[float, float]:
    """(median, max) wall time of a fresh process running argv."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "omoide.db"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            migrate(conn)
        for i in range(500):
            admin.add(db, f"memory number {i}", "fact", None, 0.5, False)
        config = ROOT / "config.toml"  # the shipped configuration, with this database
        os.environ["OMOIDE_MEMORY__DATABASE"] = str(db)
        omoide = [sys.executable, "-m", "runtime.cli"]
        rows = [
            ("floor: python -c pass", [sys.executable, "-c", "pass"]),
            ("import torch, transformers (what each command paid before)",
             [sys.executable, "-c", "import torch, transformers"]),
            ("omoide config check", [*omoide, "config", "check", "--config", str(config)]),
            ("omoide memory list (500 memories)", [*omoide, "memory", "list", "--config", str(config)]),
            ("omoide logs export -", [*omoide, "logs", "export", "-", "--config", str(config)]),
            ("omoide models path llm", [*omoide, "models", "path", "llm"]),
            ("omoide --help", [*omoide, "--help"]),
        ]
        print(f"{'command':60} {'median s':>9} {'max s':>7}   ({args.runs} runs each)")
        for name, argv in rows:
            median, worst = seconds(argv, args.runs)
            print(f"{name:60} {median:9.2f} {worst:7.2f}")


if __name__ == "__main__":
    main()
