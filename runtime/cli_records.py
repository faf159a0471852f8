"""`omoide logs ...` and `omoide memory ...`: the interaction log and what the character
remembers, read and edited in the database while she runs or not. Light: no language model."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memory import admin as memory_admin
from memory import review as memory_review
from memory.export import export_jsonl
from runtime.cli_common import config_from, database_from
from runtime.config import Config
from runtime.embedding import encoder_from


def cmd_logs_export(args: argparse.Namespace) -> int:
    config = config_from(args)
    database = database_from(args, config)
    since = dt.datetime.fromisoformat(args.since).timestamp() if args.since else None
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        n = export_jsonl(database, out, since=since, include_interrupted=not args.complete_only,
                         scrub=args.scrub or config.learning.scrub_viewers)
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {n} turns from {database} to {args.out}", file=sys.stderr)
    return 0


def cmd_logs_review(args: argparse.Namespace) -> int:
    database = database_from(args, config_from(args))
    if args.turn is None:
        for t in memory_review.recent(database, args.limit, args.unreviewed):
            mark = f"[{t.review}]" if t.review else "[ ]"
            print(f"{t.turn_id[:10]} {mark:11} {dt.datetime.fromtimestamp(t.started_at):%Y-%m-%d %H:%M}"
                  f"  {t.heard[-60:]!r} -> {t.spoken[:80]!r}")
            if t.corrected_text:
                print(f"{'':23}corrected to: {t.corrected_text!r}")
        return 0
    if args.verdict is None:
        raise memory_review.ReviewError("say good, bad or correct \"the better reply\"")
    verdict = "corrected" if args.verdict == "correct" else args.verdict
    turn_id = memory_review.review(database, args.turn, verdict, args.text)
    print(f"turn {turn_id}: {verdict}")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    config = config_from(args)
    _MEMORY[args.memory_command](args, config, database_from(args, config))
    return 0


def _show(rows: list[tuple[Any, ...]]) -> None:
    for mid, kind, viewer, importance, pinned, superseded, text in rows:
        flags = ("pinned " if pinned else "") + (f"superseded-by:{superseded} " if superseded else "")
        print(f"{mid:>6}  {kind:10} {viewer or '-':24} {importance:.2f} {flags}{text}")
    if not rows:
        print("(no memories)")


def _search(args: argparse.Namespace, config: Config, db: Path) -> None:
    if args.words or (load := encoder_from(config)) is None:
        _show(memory_admin.search(db, args.text, args.limit))
        return
    rows, left_out = memory_admin.search_by_meaning(db, args.text, load(), args.limit)
    _show(rows)
    if left_out:
        print(f"({left_out} memories with no vector yet were left out: a running character makes them;"
              " --words searches them all by words)", file=sys.stderr)


def _pending(args: argparse.Namespace, config: Config, db: Path) -> None:
    rows = memory_admin.pending(db, args.viewer, args.limit)
    for mid, _, viewer, _, _, _, text in rows:
        print(f"{mid:>6}  {viewer or '(reflection)':24} {text}")
    print(f"({len(rows)} waiting: omoide memory approve ID... or reject ID...; --all for every one)"
          if rows else "(nothing waits for approval)")


def _consent(args: argparse.Namespace, config: Config, db: Path) -> None:
    what = args.memory_command
    if not args.id and not args.all:
        raise ValueError(f"memory {what}: give memory ids, or --all")
    changed, refused = memory_admin.consent(db, None if args.all else args.id,
                                            "approved" if what == "approve" else "rejected", args.viewer)
    print(f"{what}d {changed}")
    for line in refused:
        print(f"not {what}d: {line}", file=sys.stderr)


_MEMORY: dict[str, Callable[[argparse.Namespace, Config, Path], object]] = {
    "list": lambda a, c, db: _show(memory_admin.list_memories(db, a.viewer, a.kind, a.all, a.limit)),
    "search": _search,
    "add": lambda a, c, db: print(f"added memory {memory_admin.add(db, a.text, a.kind, a.viewer, a.importance, a.pin)}"),
    "edit": lambda a, c, db: memory_admin.edit(db, a.id, a.text),
    "pin": lambda a, c, db: memory_admin.pin(db, a.id, True),
    "unpin": lambda a, c, db: memory_admin.pin(db, a.id, False),
    "delete": lambda a, c, db: memory_admin.delete(db, a.id),
    "pending": _pending,
    "approve": _consent,
    "reject": _consent,
}
