"""Built-in rewards of the 2048 environment."""

from typing import Any

import numpy as np

from oss_grpo.envs.game2048 import legal_actions, parse_move, slide
from oss_grpo.rewards.registry import reward


@reward("game2048_move", range=(0.0, 1.0))
def move_quality(completions: list[Any], board: list[list[list[int]]], **columns: Any) -> list[float]:
    """How good the answered move is on the prompt's board, in [0, 1].

    0 for an answer that names no move (unparsable, truncated, no final channel) or an illegal move (one that changes
    nothing); a legal move scores 0.5 plus 0.5 times its merged points over the best move's, so the best legal move
    scores 1 and a legal move that merges nothing while another would scores 0.5.

    >>> from types import SimpleNamespace as Parsed
    >>> board = [[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4]
    >>> move_quality([Parsed(final="left"), Parsed(final="down"), Parsed(final="up"), Parsed(final=None)], [board] * 4)
    [1.0, 0.5, 0.0, 0.0]
    """
    scores = []
    for completion, cells in zip(completions, board, strict=True):
        cells = np.asarray(cells)
        action, legal = parse_move(completion.final), legal_actions(cells)
        if action not in legal:
            scores.append(0.0)
            continue
        best = max(slide(cells, a)[1] for a in legal)
        scores.append(1.0 if best == 0 else 0.5 + 0.5 * float(slide(cells, action)[1] / best))
    return scores
