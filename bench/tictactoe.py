"""The bundled model as a game player: games of tic-tac-toe (omoide_game.tictactoe) over the
game API, the character as X choosing each move as schema-constrained JSON, against an opponent
that plays a random free cell. Counted: wins, draws, losses, and moves refused by the game (the
schema lists only the free cells, so there should be none).

Controls, over many simulated games against the same random opponent: X playing a random free
cell (chance), and X taking the first free cell. A model that reads the board should beat chance.

    python bench/tictactoe.py [--games 20] [--config config.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from omoide_game.tictactoe import LINES  # noqa: E402
from replies import bench_config  # noqa: E402

from runtime.app import play  # noqa: E402
from runtime.models import model_from  # noqa: E402
from tests.conftest import FastClock  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def winner(board: list[str]) -> str | None:
    for a, b, c in LINES:
        if board[a] != " " and board[a] == board[b] == board[c]:
            return board[a]
    return "draw" if " " not in board else None


def simulate(x_move: Callable[[list[str], random.Random], int], games: int, seed: int = 0) -> Counter[str]:
    """X (moving first) against a random O, as the game plays it."""
    rng, results = random.Random(seed), Counter[str]()
    for _ in range(games):
        board = [" "] * 9
        while (w := winner(board)) is None:
            board[x_move(board, rng)] = "X"
            if winner(board) is None:
                board[rng.choice([i for i, c in enumerate(board) if c == " "])] = "O"
        results[w] += 1
    return results


def line(name: str, results: Counter[str]) -> str:
    n = sum(results.values())
    return (f"  {name:46} win {results['X'] / n:5.1%}  draw {results['draw'] / n:5.1%}  loss {results['O'] / n:5.1%}"
            f"   ({results['X']}/{results['draw']}/{results['O']} of {n})")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.toml"))
    ap.add_argument("--games", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omoide-ttt-"))
    config = bench_config(args.config, work, game={"enabled": True, "port": 0, "speak": False})
    model = await asyncio.to_thread(model_from, config)
    results: Counter[str] = Counter()
    started = time.perf_counter()
    for game in range(args.games):
        results[await play(config, seed=game, show=lambda _: None, opponent="random", model=model,
                           clock=FastClock(50), console=False)] += 1
    took = time.perf_counter() - started
    attempts = [a for (actions,) in sqlite3.connect(work / "bench.db").execute("SELECT actions FROM turns")
                for a in json.loads(actions)]
    moves, refused = len(attempts), sum(not a["success"] for a in attempts)
    print(f"{model.name} as X against a random O: {args.games} games, {moves} moves by the model"
          f" ({took / max(moves, 1):.1f} s a move with the game's round trip), {refused} refused by the game")
    print(line("the bundled model", results))
    print(line("control: X plays a random free cell (chance)", simulate(lambda b, r: r.choice(
        [i for i, c in enumerate(b) if c == " "]), 10_000)))
    print(line("control: X plays the first free cell", simulate(lambda b, r: b.index(" "), 10_000)))


if __name__ == "__main__":
    asyncio.run(main())
