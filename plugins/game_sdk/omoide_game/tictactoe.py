"""An example game for the game API, written with the game SDK (omoide_game): tic-tac-toe, the character
(X) against a simple opponent (O). Each move is a force with one action, `play`, whose schema
lists only the free cells, so every move the character makes is a legal one.

    omoide play tictactoe          # the character plays it, start to finish
    python -m omoide_game.tictactoe    # just the game, against a server at NEURO_SDK_WS_URL
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from omoide_game import Game, Refused

NAME = "Tic Tac Toe"
LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


class TicTacToe:
    def __init__(self, url: str | None = None, seed: int | None = None,
                 show: Callable[[str], None] | None = None, opponent: str = "blocker") -> None:
        if opponent not in ("blocker", "random"):
            raise ValueError(f"opponent {opponent!r}: blocker (wins when it can, blocks when it must) or random")
        self.opponent_kind = opponent
        self.board = [" "] * 9
        self.moves: list[tuple[str, int]] = []
        self.rng = random.Random(seed)
        self.show = show
        self.game = Game(NAME, url)
        self.game.action("play", "Put your X in a free cell of the board (cells 0-8, left to right, top to bottom)",
                         self.schema())(self.play)
        self.winner: str | None = None

    def free(self) -> list[int]:
        return [i for i, c in enumerate(self.board) if c == " "]

    def schema(self) -> dict[str, object]:
        return {"type": "object", "properties": {"cell": {"type": "integer", "enum": self.free()}},
                "required": ["cell"]}

    def drawing(self) -> str:
        rows = [" | ".join(c if c != " " else str(r * 3 + i) for i, c in enumerate(self.board[r * 3:r * 3 + 3]))
                for r in range(3)]
        return "\n---------\n".join(rows)

    def over(self) -> str | None:
        for a, b, c in LINES:
            if self.board[a] != " " and self.board[a] == self.board[b] == self.board[c]:
                return self.board[a]
        return "draw" if not self.free() else None

    def mark(self, who: str, cell: int) -> None:
        self.board[cell] = who
        self.moves.append((who, cell))
        if self.show is not None:
            self.show(f"{who} plays {cell}\n{self.drawing()}\n")

    async def play(self, data: dict[str, int]) -> str:
        cell = data["cell"]
        if self.board[cell] != " ":
            raise Refused(f"cell {cell} is taken; free cells: {self.free()}")
        self.mark("X", cell)
        if self.over() is None:
            self.mark("O", self.opponent())
        self.winner = self.over()
        return f"X on {cell}; the opponent answered." if self.winner is None else "That was the last move."

    def _moved(self, made: int) -> Callable[[], bool]:
        return lambda: len(self.moves) > made

    def opponent(self) -> int:
        free = self.free()
        if self.opponent_kind == "random":
            return self.rng.choice(free)
        for who in ("O", "X"):  # win if it can, else block
            for a, b, c in LINES:
                cells = [self.board[a], self.board[b], self.board[c]]
                if cells.count(who) == 2 and cells.count(" ") == 1:
                    return (a, b, c)[cells.index(" ")]
        return 4 if 4 in free else self.rng.choice(free)

    async def run(self) -> str:
        """Play one game to the end; returns "X", "O" or "draw"."""
        async with self.game:
            await self.game.context("A new game of tic-tac-toe: you are X and move first.", silent=True)
            while self.winner is None:
                await self.game.replace("play", schema=self.schema())  # only the free cells are valid
                await self.game.force("Your move: where do you put your X?", ["play"], state=self.drawing())
                await self.game.run(until=self._moved(len(self.moves)))
            result = "a draw" if self.winner == "draw" else ("your win" if self.winner == "X" else "your loss")
            await self.game.unregister("play")
            await self.game.context(f"The game is over: {result}.\n{self.drawing()}", silent=False)
        return self.winner


def main() -> None:
    print(f"winner: {asyncio.run(TicTacToe(show=print).run())}")


if __name__ == "__main__":
    main()
