"""Reward functions by name: built-ins, `pkg.module:fn` ids and the `oss_grpo.rewards` entry-point group.

Lookups resolve lazily on a miss, so `import oss_grpo` loads no plugin (Gymnasium 1.0 dropped eager plugin loading
for the same reason: one broken third-party package must not break every import).
"""

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from oss_grpo.rl.errors import PluginError, UnknownPlugin

BUILTIN_MODULES = ("oss_grpo.rewards.game2048", "oss_grpo.rewards.harmony_format", "oss_grpo.rewards.kernelgen")
"""Modules whose `@reward` functions are the built-in rewards; imported on the first lookup."""


class RewardFn(Protocol):
    """Scores a batch: one float (or None = "cannot score this one", excluded from the advantage) per completion.

    `completions` are the parsed Harmony completions (`oss_grpo.rl.harmony.ParsedCompletion`); `columns` holds the
    task's dataset columns for each completion (e.g. `board`) plus TRL's extras (`trainer_state`, `log_metric`).
    """

    def __call__(self, completions: list[Any], **columns: Any) -> list[float | None]: ...


_REGISTRY: dict[str, RewardFn] = {}


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name`; a second function under the same name is an error."""

    def register(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise PluginError(f"reward {name!r} is registered twice ({_REGISTRY[name].__module__} and {fn.__module__})")
        _REGISTRY[name] = fn
        return fn

    return register


def registered() -> list[str]:
    """Names of the built-in and installed (entry-point) rewards."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group="oss_grpo.rewards")})


def get(name: str) -> RewardFn:
    """The reward registered as `name`, or loaded from `pkg.module:fn`, or from an installed entry point."""
    if name not in _REGISTRY:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UnknownPlugin(f"reward {name!r}: cannot load it ({err})") from None
        return reward(name)(fn)
    for ep in entry_points(group="oss_grpo.rewards", name=name):
        return reward(name)(ep.load())
    raise UnknownPlugin(f"reward {name!r} is not registered; known rewards: {', '.join(registered())}")
