"""Reward functions by name: built-ins, `pkg.module:fn` and `path/file.py:fn` ids, and the `oss_grpo.rewards` entry points.

Lookups resolve lazily on a miss, so `import oss_grpo` loads no plugin (Gymnasium 1.0 dropped eager plugin loading
for the same reason: one broken third-party package must not break every import).
"""

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

from oss_grpo.rewards.protocol import RewardFn
from oss_grpo.rl.errors import PluginError, UnknownPlugin

BUILTIN_MODULES = ("oss_grpo.rewards.game2048", "oss_grpo.rewards.game2048_strategy",
                   "oss_grpo.rewards.harmony_format", "oss_grpo.rewards.kernelgen")
"""Modules whose `@reward` functions are the built-in rewards; imported on the first lookup."""
ENTRY_POINT_GROUP = "oss_grpo.rewards"
"""Installed packages publish rewards here: `[project.entry-points."oss_grpo.rewards"] name = "pkg.mod:fn"`."""

_REGISTRY: dict[str, RewardFn] = {}


def reward(name: str, range: tuple[float, float] | None = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name`; a second function under the same name is an error.

    `range=(low, high)` declares the interval every score lies in (stored as `fn.reward_range`); `oss-grpo
    check-plugin` checks it, and readers of a config learn what a weight multiplies.
    """
    if range is not None and not (len(range) == 2 and range[0] <= range[1]):
        raise PluginError(f"reward {name!r}: range={range!r} must be (low, high) with low <= high")

    def register(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise PluginError(f"reward {name!r} is registered twice ({_REGISTRY[name].__module__} and {fn.__module__})")
        if not callable(fn):
            raise PluginError(f"reward {name!r}: {fn!r} is not callable")
        if range is not None:
            fn.reward_range = (float(range[0]), float(range[1]))
        _REGISTRY[name] = fn
        return fn

    return register


def registered() -> list[str]:
    """Names of the built-in and installed (entry-point) rewards."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def get(name: str) -> RewardFn:
    """The reward registered as `name`, or loaded from `pkg.module:fn` / `path/file.py:fn`, or an entry point."""
    if name not in _REGISTRY:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        try:
            module = _load_file(module_name) if module_name.endswith(".py") else importlib.import_module(module_name)
            fn = getattr(module, attr)
        except (ImportError, AttributeError, OSError) as err:
            raise UnknownPlugin(f"reward {name!r}: cannot load it ({err})") from None
        return reward(name)(fn)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return reward(name)(ep.load())
        except (ImportError, AttributeError) as err:
            raise PluginError(f"reward {name!r}: entry point {ep.value!r} cannot be loaded ({err})") from None
    raise UnknownPlugin(f"reward {name!r} is not registered; known rewards: {', '.join(registered())}")


def _load_file(path: str):
    """Import a plugin file once per resolved path, so its `@reward` decorators run once however it is named."""
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise ImportError(f"no such file: {path}")
    module_name = "oss_grpo_plugin_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
