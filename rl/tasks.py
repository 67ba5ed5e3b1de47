"""Training tasks per environment: the prompts (as user messages), the columns rewards need, and multi-turn play."""

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from datasets import Dataset

from oss_grpo.envs.game2048 import MOVES, Game2048Env, parse_move, render_board, starting_boards
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.harmony import ParsedCompletion


def game2048_question(board: np.ndarray) -> str:
    """The user message about `board`: the first prompt, and every later turn's observation."""
    return f"Board:\n{render_board(board)}\n\nYour move?"


def game2048_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """Mid-game boards to answer one move for; rewards read the `board` column."""
    boards = starting_boards(config.num_tasks, seed=config.seed)
    prompts = [[{"role": "user", "content": game2048_question(b)}] for b in boards]
    return Dataset.from_dict({"prompt": prompts, "board": [b.tolist() for b in boards]}), list(MOVES)


TASKS: dict[str, Callable[[TrainConfig], tuple[Dataset, list[str]]]] = {"oss_grpo/Game2048-v0": game2048_tasks}
"""Environment id -> builder of (dataset with a `prompt` column, the environment's action names)."""


@dataclass(frozen=True)
class Turns:
    """How an environment is played over several turns (rl/episode.py)."""

    env_for: Callable[[list[dict[str, str]]], gym.Env]
    """The environment, reset to the state the prompt (TRL passes rollouts nothing else) describes."""
    act: Callable[[ParsedCompletion], int | None]
    """The action an answer names, or None if it names none."""
    observe: Callable[[gym.Env], str]
    """The user message showing the environment's state after a step."""


def game2048_env(messages: list[dict[str, str]]) -> Game2048Env:
    """A 2048 game at the prompt's board (read back from `game2048_question`'s grid); its spawns are seeded by the
    board, so every completion of a GRPO group plays against the same tile sequence."""
    grid = messages[-1]["content"].split("\n\n")[0].splitlines()[1:]
    board = np.array([[0 if cell == "." else int(cell) for cell in row.split()] for row in grid], dtype=np.int64)
    env = Game2048Env()
    env.reset(seed=zlib.crc32(board.tobytes()), options={"board": board})
    return env


TURN_BASED: dict[str, Turns] = {
    "oss_grpo/Game2048-v0": Turns(
        env_for=game2048_env, act=lambda parsed: parse_move(parsed.final),
        observe=lambda env: game2048_question(env.board),
    ),
}
"""Environment id -> its multi-turn play, for `max_turns > 1`."""
