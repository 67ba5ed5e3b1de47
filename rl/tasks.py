"""Training tasks per environment: the prompts (as user messages) and the columns rewards need."""

from collections.abc import Callable

from datasets import Dataset

from oss_grpo.envs.game2048 import MOVES, render_board, starting_boards
from oss_grpo.envs.kernelgen import KERNEL_TASKS, prompt
from oss_grpo.rl.config import TrainConfig


def game2048_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """Mid-game boards to answer one move for; rewards read the `board` column."""
    boards = starting_boards(config.num_tasks, seed=config.seed)
    prompts = [[{"role": "user", "content": f"Board:\n{render_board(b)}\n\nYour move?"}] for b in boards]
    return Dataset.from_dict({"prompt": prompts, "board": [b.tolist() for b in boards]}), list(MOVES)


def kernelgen_tasks(config: TrainConfig) -> tuple[Dataset, list[str]]:
    """`num_tasks` prompts cycling through `kernelgen_tasks`; rewards read the `kernel_task` column. No action names:
    the answer is free-form code."""
    names = [config.kernelgen_tasks[i % len(config.kernelgen_tasks)] for i in range(config.num_tasks)]
    prompts = [[{"role": "user", "content": prompt(KERNEL_TASKS[name])}] for name in names]
    return Dataset.from_dict({"prompt": prompts, "kernel_task": names}), []


TASKS: dict[str, Callable[[TrainConfig], tuple[Dataset, list[str]]]] = {
    "oss_grpo/Game2048-v0": game2048_tasks, "oss_grpo/KernelGen-v0": kernelgen_tasks,
}
"""Environment id -> builder of (dataset with a `prompt` column, the environment's action names)."""
