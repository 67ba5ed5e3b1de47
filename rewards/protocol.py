"""The reward plugin contract: what a reward function receives, what it returns, and how it says why.

A reward is a plain function, TRL's reward signature with the completions already parsed as Harmony:

    def my_reward(completions: list[ParsedCompletion], **columns) -> list[float | Score | None]

- `completions`: one `oss_grpo.rl.harmony.ParsedCompletion` per sampled completion (`.final` is the answer on the
  final channel or None; `.messages`, `.error` and `.stop` say how well-formed the rest was). Broken output is
  data here, never an exception: a reward must score it (0.0, a penalty, or None), not raise.
- `columns`: the task's dataset columns, one list entry per completion, by name (the env state the prompt was made
  from: 2048's `board`, the strategy mode's `game_seeds`, a kernel task's reference ...), plus TRL's extras
  (`prompts`, `trainer_state`, `log_metric`). Take the columns you need as keyword parameters and end with
  `**columns`: TRL passes every column to every reward.
- The result: one entry per completion, in order. A float is the score; None means "does not apply to this
  completion" (TRL leaves it out of this reward's advantage); `Score(value, reason)` is either of those with a short
  reason ("timeout", "import of 'os' is not allowed"), which `rewards/guard.py` counts and logs per batch, so a
  run's log says why a reward scored what it did without a second pass over the samples.

A reward registered with `@reward(name, range=(low, high))` promises its scores lie in that interval;
`oss-grpo check-plugin` holds it to that. Scores must be finite: the guard turns NaN, inf and non-numbers into the
config's `reward_on_error` and counts them as errors.
"""

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Score:
    """A score with the reason it is what it is; `value` None means "does not apply" as a bare None does."""

    value: float | None
    reason: str
    """Short and stable across samples (it is counted per batch): "no final answer", not the whole traceback."""


class RewardFn(Protocol):
    """Scores a batch: one float, `Score` or None per parsed completion; see the module docstring."""

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | Score | None]: ...


def score_value(score: float | Score | None) -> float | None:
    """The number TRL sees for one entry of a reward's result (the reason, if any, stays with the guard)."""
    return score.value if isinstance(score, Score) else score
