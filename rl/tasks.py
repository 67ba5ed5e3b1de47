"""Training tasks per environment: the prompts (as user messages) and the columns rewards need.

A task builder maps the config to (dataset with a `prompt` column plus the columns its rewards read, the answers
constrained decoding may choose from). Built-in builders are in `TASKS`; an outside package adds an environment
through the entry-point group `oss_grpo.envs`: the entry point's name is the Gymnasium id and its value the builder,
whose module registers that id with `gymnasium.register` when imported (docs/PLUGINS.md). `TURN_BASED` says how an
environment is played over several turns (`max_turns > 1`).
"""

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import gymnasium
import numpy as np
from datasets import Dataset

from oss_grpo.envs.game2048 import MOVES, Game2048Env, parse_board, parse_move, render_board, starting_boards
from oss_grpo.envs.game2048_strategy import STRATEGY_PROMPT, WARM_START_ANSWERS
from oss_grpo.envs.kernelgen import KERNEL_TASKS, prompt
from oss_grpo.rewards.game2048_strategy import ALLOWED_IMPORTS
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import PluginError, UnknownPlugin
from oss_grpo.rl.harmony import ParsedCompletion

TaskBuilder = Callable[[TrainConfig], tuple[Dataset, list[str]]]
ENTRY_POINT_GROUP = "oss_grpo.envs"


def game2048_question(board: np.ndarray) -> str:
    """The user message about `board`: the first prompt, and every later turn's observation."""
    return f"Board:\n{render_board(board)}\n\nYour move?"


def game2048_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """Mid-game boards to answer one move for; rewards read the `board` column."""
    boards = starting_boards(config.num_tasks, seed=config.seed)
    prompts = [[{"role": "user", "content": game2048_question(b)}] for b in boards]
    return Dataset.from_dict({"prompt": prompts, "board": [b.tolist() for b in boards]}), list(MOVES)


def game2048_strategy_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """One prompt (write `strategy(board)`), with different game seeds per task; rewards read `game_seeds`,
    `max_moves` and `timeout_s`."""
    text = STRATEGY_PROMPT.format(games=config.strategy_games, max_moves=config.strategy_max_moves,
                                  timeout_s=config.strategy_timeout_s, imports=", ".join(sorted(ALLOWED_IMPORTS)))
    n, games = config.num_tasks, config.strategy_games
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": text}]] * n,
        "game_seeds": [[config.seed * 1_000_003 + task * games + g for g in range(games)] for task in range(n)],
        "max_moves": [config.strategy_max_moves] * n,
        "timeout_s": [config.strategy_timeout_s] * n,
    }), list(WARM_START_ANSWERS)


def kernelgen_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """`num_tasks` prompts cycling through `kernelgen_tasks`; rewards read the `kernel_task` and `kernel_device`
    columns. No action names: the answer is free-form code."""
    names = [config.kernelgen_tasks[i % len(config.kernelgen_tasks)] for i in range(config.num_tasks)]
    prompts = [[{"role": "user", "content": prompt(KERNEL_TASKS[name])}] for name in names]
    return Dataset.from_dict({"prompt": prompts, "kernel_task": names,
                              "kernel_device": [config.kernelgen_device] * len(names)}), []


TASKS: dict[str, TaskBuilder] = {
    "oss_grpo/Game2048-v0": game2048_tasks,
    "oss_grpo/Game2048Strategy-v0": game2048_strategy_tasks,
    "oss_grpo/KernelGen-v0": kernelgen_tasks,
}
"""Environment id -> builder of (dataset with a `prompt` column, the answers constrained decoding may choose)."""


def task_builder(env_id: str) -> TaskBuilder:
    """The builder of `env_id`'s tasks: built in, or from an installed package's `oss_grpo.envs` entry point."""
    if env_id in TASKS:
        return TASKS[env_id]
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=env_id):
        try:
            builder = ep.load()
        except (ImportError, AttributeError) as err:
            raise PluginError(f"env {env_id!r}: entry point {ep.value!r} cannot be loaded ({err})") from None
        if env_id not in gymnasium.registry:
            raise PluginError(f"env {env_id!r}: loading {ep.value!r} did not register it with gymnasium.register")
        TASKS[env_id] = builder
        return builder
    known = sorted(set(TASKS) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
    raise UnknownPlugin(f"env={env_id!r}: unknown environment; known: {', '.join(known)}")


@dataclass(frozen=True)
class Turns:
    """How an environment is played over several turns (rl/episode.py)."""

    env_for: Callable[[list[dict[str, str]]], gymnasium.Env]
    """The environment, reset to the state the prompt (TRL passes rollouts nothing else) describes."""
    act: Callable[[ParsedCompletion], int | None]
    """The action an answer names, or None if it names none."""
    observe: Callable[[gymnasium.Env], str]
    """The user message showing the environment's state after a step."""


def game2048_env(messages: list[dict[str, str]]) -> Game2048Env:
    """A 2048 game at the prompt's board (read back from `game2048_question`'s grid); its spawns are seeded by the
    board, so every completion of a GRPO group plays against the same tile sequence."""
    board = parse_board(messages[-1]["content"].split("\n\n")[0].partition("\n")[2])
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
