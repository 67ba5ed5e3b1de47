"""Outside packages plug in through entry points (`oss_grpo.rewards`, `oss_grpo.envs`) and files (`file.py:fn`)."""

import sys
from pathlib import Path

import gymnasium
import pytest

from oss_grpo.rewards import get, registered
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import PluginError, UnknownPlugin
from oss_grpo.rl.tasks import TASKS, task_builder

PLUGIN = '''
import gymnasium
from datasets import Dataset

gymnasium.register(id="acme/Guess-v0", entry_point="gymnasium.envs.toy_text:FrozenLakeEnv")


def guess_right(completions, target, **columns):
    return [float(c.final == t) for c, t in zip(completions, target)]


def guess_tasks(config):
    n = config.num_tasks
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": "Guess"}]] * n, "target": ["7"] * n}), ["7"]


def unregistered_tasks(config):
    return guess_tasks(config)
'''


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch) -> Path:
    """A real installed distribution as pip leaves it: a module and a dist-info folder with entry_points.txt."""
    (tmp_path / "acme_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "acme_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[oss_grpo.rewards]\nguess_right = acme_plugin:guess_right\nbroken = acme_plugin:nothing_here\n\n"
        "[oss_grpo.envs]\nacme/Guess-v0 = acme_plugin:guess_tasks\nacme/Unregistered-v0 = acme_plugin:unregistered_tasks\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("acme_plugin", None)
    gymnasium.registry.pop("acme/Guess-v0", None)
    TASKS.pop("acme/Guess-v0", None)


def test_reward_entry_point_is_listed_and_loaded_on_demand(installed_plugin: Path) -> None:
    assert "guess_right" in registered() and "acme_plugin" not in sys.modules  # listed without importing it
    assert get("guess_right") is sys.modules["acme_plugin"].guess_right
    with pytest.raises(PluginError, match="entry point 'acme_plugin:nothing_here' cannot be loaded"):
        get("broken")


def test_env_entry_point_gives_the_task_builder(installed_plugin: Path) -> None:
    builder = task_builder("acme/Guess-v0")
    dataset, answers = builder(TrainConfig(env="acme/Guess-v0", num_tasks=3))
    assert "acme/Guess-v0" in gymnasium.registry and dataset["target"] == ["7"] * 3 and answers == ["7"]
    with pytest.raises(PluginError, match="did not register it"):
        task_builder("acme/Unregistered-v0")
    with pytest.raises(UnknownPlugin, match="acme/Guess-v0"):  # the error lists what is known
        task_builder("acme/Nope-v0")


def test_file_ids_load_once(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text("from oss_grpo.rewards import reward\n\n\n@reward('test_file_plugin', range=(0, 1))\n"
                    "def mine(completions, **columns):\n    return [1.0] * len(completions)\n")
    fn = get(f"{path}:mine")
    assert fn.reward_range == (0.0, 1.0) and get("test_file_plugin") is fn
    assert get(f"{tmp_path}/../{tmp_path.name}/mine.py:mine") is fn  # same file by another path: not re-imported
    with pytest.raises(UnknownPlugin, match="no such file"):
        get(f"{tmp_path}/missing.py:mine")
