"""Reward plugins: the protocol, the registry and the guard every call goes through.

A reward is a plain function `fn(completions: list[ParsedCompletion], **columns) -> list[float | Score | None]`
registered with `@reward("name", range=(low, high))` (contract: `rewards/protocol.py`; guide: docs/PLUGINS.md;
checker: `oss-grpo check-plugin NAME`). Importing this package loads no plugin.
"""

from oss_grpo.rewards.protocol import RewardFn, Score
from oss_grpo.rewards.registry import get, registered, reward

__all__ = ["RewardFn", "Score", "get", "registered", "reward"]
