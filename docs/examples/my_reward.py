"""An example reward plugin (docs/PLUGINS.md): keep the largest 2048 tile in a corner.

    oss-grpo check-plugin docs/examples/my_reward.py:corner_reward
"""

from typing import Any

import numpy as np

from oss_grpo.envs.game2048 import parse_move, slide
from oss_grpo.rewards import Score, reward

CORNERS = ((0, 0), (0, 3), (3, 0), (3, 3))


@reward("corner", range=(0.0, 1.0))
def corner_reward(completions: list[Any], board: list[list[list[int]]], **columns: Any) -> list[Score]:
    """1.0 when the answered move leaves the largest tile in a corner, 0.0 when it does not, None without a move."""
    scores = []
    for completion, cells in zip(completions, board, strict=True):
        move = parse_move(completion.final)  # None for no final answer, a truncated one, or not a move name
        if move is None:
            scores.append(Score(None, "no move"))
            continue
        after, _ = slide(np.asarray(cells), move)
        row, col = np.unravel_index(np.argmax(after), after.shape)
        in_corner = (int(row), int(col)) in CORNERS
        scores.append(Score(1.0, "corner") if in_corner else Score(0.0, "not in a corner"))
    return scores
