"""The 2048 game as a Gymnasium environment, plus the pure board functions rewards reuse."""

import functools
import re

import gymnasium as gym
import numpy as np
from gymnasium import spaces

MOVES = ("up", "right", "down", "left")
"""Action i is MOVES[i]; the model answers with the move's name in the Harmony final channel."""
MAX_EXPONENT = 17  # 2**17 = 131072, the largest tile a 4x4 board can hold


@functools.cache
def _merge_line(line: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """Slide one line of tiles toward its start, merging each equal pair once; the points are the merged values."""
    tiles, merged, gain = [v for v in line if v], [], 0
    while tiles:
        if len(tiles) > 1 and tiles[0] == tiles[1]:
            merged.append(2 * tiles[0])
            gain += 2 * tiles[0]
            tiles = tiles[2:]
        else:
            merged.append(tiles.pop(0))
    return tuple(merged + [0] * (len(line) - len(merged))), gain


Rows = tuple[tuple[int, ...], ...]


def _slide_rows(rows: Rows, action: int) -> tuple[Rows, int]:
    # Each move reads the board as lines that slide toward their start: up = columns, left = rows, and the
    # reversed ones for down and right. (Plain tuples and a cached line merge: this runs ~10^5 times per task set.)
    lines = tuple(zip(*rows)) if action in (0, 2) else rows
    reverse = action in (1, 2)
    results = [_merge_line(line[::-1] if reverse else line) for line in lines]
    out = tuple(line[::-1] if reverse else line for line, _ in results)
    return (tuple(zip(*out)) if action in (0, 2) else out), sum(gain for _, gain in results)


def _rows(board: np.ndarray) -> Rows:
    return tuple(map(tuple, np.asarray(board).tolist()))


def slide(board: np.ndarray, action: int) -> tuple[np.ndarray, int]:
    """Board after moving `action` (no new tile) and the points scored: the sum of the merged tiles' values."""
    out, gain = _slide_rows(_rows(board), action)
    return np.array(out, dtype=np.int64), gain


def legal_actions(board: np.ndarray) -> list[int]:
    """Actions that change the board (a move that changes nothing is not a legal 2048 move)."""
    rows = _rows(board)
    return [a for a in range(4) if _slide_rows(rows, a)[0] != rows]


def render_board(board: np.ndarray) -> str:
    """The board as the model reads it: one row a line, `.` for an empty cell."""
    return "\n".join(" ".join(f"{v:>4}" if v else "   ." for v in row) for row in board)


def parse_board(text: str) -> np.ndarray:
    """The board `render_board` wrote.

    >>> board = np.array([[2, 0, 0, 4], [0] * 4, [0] * 4, [1024, 0, 0, 0]])
    >>> bool((parse_board(render_board(board)) == board).all())
    True
    """
    rows = [[0 if cell == "." else int(cell) for cell in line.split()] for line in text.splitlines()]
    return np.array(rows, dtype=np.int64)


def parse_move(text: str | None) -> int | None:
    """The action named by a final answer (`up`, `Left.`, ` DOWN `), or None if it names no single move."""
    if text is None:
        return None
    words = re.findall(r"[a-z]+", text.lower())
    return MOVES.index(words[0]) if len(words) == 1 and words[0] in MOVES else None


class Game2048Env(gym.Env):
    """
    ## Description
    The sliding-tile game 2048 on a 4x4 board. Each move slides all tiles one way; two equal tiles that meet merge
    into their sum. After every move that changes the board a new tile appears on a random empty cell: a 2 with
    probability 0.9, else a 4.

    ## Action Space
    `Discrete(4)`: 0 up, 1 right, 2 down, 3 left (`MOVES`).

    ## Observation Space
    `Box(0, 2**17, (4, 4), int64)`: tile values, 0 for an empty cell. `render()` gives the text the model reads.

    ## Rewards
    The points of the move: the sum of the tiles merged by it (the game's score increment). A move that changes
    nothing scores 0, spawns no tile and sets `info["legal"] = False`.

    ## Episode End
    Terminated when no move changes the board. Truncated by the registered `max_episode_steps`.

    ## Arguments
    `render_mode="ansi"`. `reset(options={"board": b})` starts from board `b` instead of two random tiles.

    ## Version History
    v0: first version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(0, 2**MAX_EXPONENT, shape=(4, 4), dtype=np.int64)
        self.action_space = spaces.Discrete(4)
        self.render_mode = render_mode
        self.board = np.zeros((4, 4), dtype=np.int64)
        self.score = 0

    def _spawn(self) -> None:
        empty = np.argwhere(self.board == 0)
        row, col = empty[self.np_random.integers(len(empty))]
        self.board[row, col] = 2 if self.np_random.random() < 0.9 else 4

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.score = 0
        if options and "board" in options:
            self.board = np.array(options["board"], dtype=np.int64).reshape(4, 4)
        else:
            self.board = np.zeros((4, 4), dtype=np.int64)
            self._spawn()
            self._spawn()
        return self.board.copy(), {"score": 0, "max_tile": int(self.board.max())}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        moved, gain = slide(self.board, int(action))
        legal = not np.array_equal(moved, self.board)
        if legal:
            self.board = moved
            self._spawn()
            self.score += gain
        terminated = not legal_actions(self.board)
        info = {"score": self.score, "max_tile": int(self.board.max()), "legal": legal}
        return self.board.copy(), float(gain), terminated, False, info

    def render(self) -> str | None:
        return render_board(self.board) if self.render_mode == "ansi" else None


def starting_boards(count: int, seed: int, max_moves: int = 120) -> list[np.ndarray]:
    """`count` mid-game boards: seeded games played for a random number of moves by the classic human strategy (keep
    the big tiles in the bottom-left corner: prefer down, left, right, up) with 10% random moves, so the training set
    looks like positions a real player reaches, not only near-empty boards."""
    rng = np.random.default_rng(seed)
    env = Game2048Env()
    boards = []
    for i in range(count):
        board, _ = env.reset(seed=seed * 100_003 + i)
        for _ in range(int(rng.integers(0, max_moves))):
            legal = legal_actions(board)
            action = next(a for a in (2, 3, 1, 0) if a in legal) if rng.random() < 0.9 else int(rng.choice(legal))
            after, _, terminated, _, _ = env.step(action)
            if terminated:  # a lost position has no move to learn from: keep the one before it
                break
            board = after
        boards.append(board)
    return boards
