"""2048, strategy mode: the model writes `strategy(board) -> "W"|"A"|"S"|"D"` and the code plays whole games.

This is the task of OpenAI's gpt-oss 2048 notebook. The code runs in `oss_grpo.rewards.sandbox`, which plays N
seeded games in one child process and returns only the move strings; every verdict (score, largest tile) comes from
replaying those moves here, on `Game2048StrategyEnv`, never from anything the child claims. For the child to show
the strategy the same boards the replay will see, the random tiles are not drawn move by move: `reset` draws a table
of spawn draws up front, and the child gets a copy of that table and of the rules (`_slide_rows`, `spawn_tile`).
"""

from dataclasses import dataclass

import numpy as np

from oss_grpo.envs.game2048 import Game2048Env, Rows, _rows, legal_actions

MOVE_KEYS = "WDSA"
"""The strategy's answer for action i (Game2048Env's up, right, down, left): W up, D right, S down, A left."""
STRATEGY_PROMPT = """Write a Python function `strategy(board)` that plays the game 2048.

`board` is a list of 4 rows, top row first, each a list of 4 ints (0 is an empty cell). Return the move as one
letter: "W" (up), "A" (left), "S" (down) or "D" (right). A move that changes nothing still uses a turn.
Your function plays {games} games of at most {max_moves} moves within {timeout_s:g} seconds in total; it is
scored on the largest tile it reaches (2048 wins). You may import only these modules: {imports}.

Answer with the code only, in one ```python block."""
"""The user message of every strategy task (the config's developer instructions come before it)."""


def spawn_tile(rows: Rows, draw: list[float]) -> Rows:
    """`rows` with a new tile on an empty cell: `draw[0]` in [0, 1) picks the cell (row-major order), `draw[1] < 0.9`
    makes it a 2, else a 4. Shipped to the sandbox as source: keep it plain Python."""
    empty = [(r, c) for r, row in enumerate(rows) for c, value in enumerate(row) if value == 0]
    cell = empty[int(draw[0] * len(empty))]
    tile = 2 if draw[1] < 0.9 else 4
    return tuple(tuple(tile if (r, c) == cell else v for c, v in enumerate(row)) for r, row in enumerate(rows))


class Game2048StrategyEnv(Game2048Env):
    """
    ## Description
    The 2048 game of `Game2048Env` with the same rules, for the strategy mode: an episode is one game played by the
    model's `strategy` code. The random tiles come from a table drawn at `reset` (`spawn_draws`, two uniform floats
    per spawn), so a copy of the rules outside this process plays exactly the same game from the same table.

    ## Action Space
    `Discrete(4)`: 0 up, 1 right, 2 down, 3 left; the strategy names them by `MOVE_KEYS` (W, D, S, A).

    ## Observation Space
    `Box(0, 2**17, (4, 4), int64)`, as `Game2048Env`.

    ## Rewards
    The points of the move, as `Game2048Env`. Strategy-mode rewards score the largest tile of the replayed game.

    ## Episode End
    Terminated when no move changes the board. Truncated at `max_moves` (the registered `max_episode_steps`).

    ## Arguments
    `render_mode="ansi"`; `max_moves` sizes the spawn table (one spawn per legal move, plus the two first tiles).

    ## Version History
    v0: first version.
    """

    def __init__(self, render_mode: str | None = None, max_moves: int = 2000) -> None:
        super().__init__(render_mode=render_mode)
        self.max_moves = max_moves
        self.spawn_draws: list[list[float]] = []
        self._spawned = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        # Seed first, draw the whole table, then let Game2048Env place the first two tiles from it (its own
        # super().reset(seed=None) keeps the generator seeded here).
        super(Game2048Env, self).reset(seed=seed)
        self.spawn_draws = self.np_random.random((self.max_moves + 2, 2)).tolist()
        self._spawned = 0
        return super().reset(options=options)

    def _spawn(self) -> None:
        draw = self.spawn_draws[self._spawned % len(self.spawn_draws)]
        self._spawned += 1
        self.board = np.array(spawn_tile(_rows(self.board), draw), dtype=np.int64)


@dataclass(frozen=True)
class GameResult:
    """One replayed game: what the moves reached on the parent's own board."""

    max_tile: int
    score: int
    moves: int
    illegal_moves: int
    """Moves that changed nothing (they still used a turn)."""
    game_over: bool
    """No move was left; False when the game stopped at the move budget or the strategy's time ran out."""


def replay(seed: int, moves: str, max_moves: int) -> GameResult:
    """Play `moves` (letters of MOVE_KEYS, at most `max_moves` of them) on the game seeded by `seed`."""
    if len(moves) > max_moves or set(moves) - set(MOVE_KEYS):
        raise ValueError(f"moves must be at most {max_moves} letters of {MOVE_KEYS}, got {moves[:40]!r}")
    env = Game2048StrategyEnv(max_moves=max_moves)
    board, info = env.reset(seed=seed)
    illegal, played, terminated = 0, 0, not legal_actions(board)
    for key in moves:
        if terminated:  # moves after the end of the game change nothing: an honest child never sends them
            break
        board, _, terminated, _, info = env.step(MOVE_KEYS.index(key))
        illegal += not info["legal"]
        played += 1
    return GameResult(int(board.max()), int(env.score), played, illegal, terminated)


def spawn_table(seed: int, max_moves: int) -> list[list[float]]:
    """The spawn draws of the game seeded by `seed`: what the sandboxed copy of the rules needs to play it."""
    env = Game2048StrategyEnv(max_moves=max_moves)
    env.reset(seed=seed)
    return env.spawn_draws


def _answer(code: str) -> str:
    return f"```python\n{code}```"


WARM_START_ANSWERS = [_answer(code) for code in (
    'import random\n\n\ndef strategy(board):\n    return random.choice("WASD")\n',
    'import itertools\n\nORDER = itertools.cycle("SADS")\n\n\ndef strategy(board):\n    return next(ORDER)\n',
    'def strategy(board):\n    return "W"\n',
    'def strategy(board):\n    return "X"\n',
    'def strategy(board)\n    return "S"\n',
    'import os\n\n\ndef strategy(board):\n    return "S"\n',
)]
"""Whole answers constrained decoding may pick from (`constrain_to_actions`), the warm start of a tiny random model:
two strategies that play (random, a fixed cycle), one that gets stuck, one returning no move, one syntax error, one
forbidden import. GRPO then learns which answer scores best."""
