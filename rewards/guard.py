"""The one place a reward plugin's failure is caught: a crash or a NaN is logged with its sample and scored.

TRL calls reward functions bare: one that raises kills the run, and `inf` flows into the advantages. Every plugin
therefore runs behind `GuardedReward`, which adapts our protocol (parsed Harmony completions, `Score` reasons) to
TRL's call (`prompts, completions, completion_ids, **columns`) and turns each failure into `on_error` plus a counted
event. The reasons of a batch's `Score`s are counted and logged in one line per call.
"""

import collections
import logging
import math
from typing import Any

from oss_grpo.rewards.protocol import RewardFn, Score, score_value

log = logging.getLogger(__name__)


class GuardedReward:
    """A reward plugin made safe to hand to TRL's GRPOTrainer as one of its `reward_funcs`."""

    def __init__(self, name: str, fn: RewardFn, on_error: float) -> None:
        self.name, self.fn, self.on_error = name, fn, on_error
        self.__name__ = name  # TRL names the reward's metrics after it
        self.errors = 0
        """Failures so far: a call that raised or returned the wrong number of scores counts once per sample."""
        self.reasons: collections.Counter[str] = collections.Counter()
        """How often each `Score.reason` was given so far."""

    def __call__(self, prompts: list, completions: list, completion_ids: list, **columns: Any) -> list[float | None]:
        parsed = columns.pop("parsed")  # oss_grpo.rl.rollout puts the parsed Harmony completions here
        before = self.errors
        scores = [self._check(score, sample) for score, sample in zip(self._call(parsed, columns), parsed)]
        if columns.get("log_metric") is not None:
            columns["log_metric"](f"rewards/{self.name}/errors", float(self.errors - before))
            columns["log_metric"](f"rewards/{self.name}/unscored", float(sum(s is None for s in scores)))
        return scores

    def _call(self, parsed: list, columns: dict[str, Any]) -> list:
        try:
            scores = list(self.fn(parsed, **columns))
        except Exception as err:  # a plugin bug must cost a score, not the run
            log.warning("reward %s raised %s: %s; first sample: %r", self.name, type(err).__name__, err, parsed[0])
            self.errors += len(parsed)
            return [self.on_error] * len(parsed)
        if len(scores) != len(parsed):
            log.warning("reward %s returned %d scores for %d completions", self.name, len(scores), len(parsed))
            self.errors += len(parsed)
            return [self.on_error] * len(parsed)
        reasons = collections.Counter(s.reason for s in scores if isinstance(s, Score))
        if reasons:
            self.reasons.update(reasons)
            log.info("reward %s: %s", self.name, ", ".join(f"{n} x {r!r}" for r, n in reasons.most_common()))
        return [score_value(s) for s in scores]

    def _check(self, score: Any, sample: Any) -> float | None:
        if score is None:
            return None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            log.warning("reward %s returned %r for sample %r", self.name, score, sample)
            self.errors += 1
            return self.on_error
        return float(score)
