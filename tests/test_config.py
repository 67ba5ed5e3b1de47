"""Config validation: every bad input names its key and reason; every option is documented; shipped configs load."""

import dataclasses
import sys
from pathlib import Path

import pytest

from oss_grpo.rl.config import TrainConfig, field_docs, load_config
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.policy import load_policy

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("group_sise: 8\n", "group_sise", "unknown option"),
        ("group_size: eight\n", "group_size", "expected int"),
        ("group_size: 1\n", "group_size", "at least 2 completions"),
        ("learning_rate: -0.001\n", "learning_rate", "must be > 0"),
        ("max_steps: 2.5\n", "max_steps", "expected int"),
        ("loss_type: ppo\n", "loss_type", "must be one of"),
        ("constrain_to_actions: 3\n", "constrain_to_actions", "expected bool"),
        ("rewards: {game2048_move: high}\n", "rewards.game2048_move", "expected float"),
        ("top_p: 1.5\n", "top_p", "(0, 1]"),
        ("micro_batch_size: 3\n", "micro_batch_size=3", "must divide the batch of prompts_per_step * group_size = 64"),
        ("report_to: [mlflow]\n", "report_to", "'mlflow' is not one of tensorboard, wandb, trackio"),
        ("report_to: [wandb]\nmodel: tiny\n", "report_to", "wandb is not installed (pip install wandb)"),
        ("generator: sglang\n", "generator", "must be one of"),
        ("vllm_memory_utilization: 0\n", "vllm_memory_utilization", "(0, 1]"),
        ("max_turns: 0\n", "max_turns", "positive integer"),
        ("- a list\n", "c.yaml", "mapping"),
        ("key: [unclosed\n", "c.yaml", "not valid YAML"),
    ],
)
def test_bad_value_names_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert key in str(err.value) and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "max_steps: 5\n"), ["max_steps=2", "learning_rate=1e-4", "beta=0"])
    assert (config.max_steps, config.learning_rate, config.beta) == (2, 1e-4, 0.0)
    with pytest.raises(ConfigError, match="group_size=1"):
        load_config(None, ["group_size=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["max_steps"])


def test_tensorboard_is_always_reported_to() -> None:
    assert load_config(None, ["report_to=[]"]).report_to == ["tensorboard"]


def test_every_field_has_a_docstring() -> None:
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert not missing, f"undocumented options: {missing}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    assert isinstance(load_config(path), TrainConfig)


def test_config_docs_are_generated_from_the_dataclass(repo: Path) -> None:
    from oss_grpo.rl.config import config_markdown

    assert (repo / "docs" / "CONFIG.md").read_text() == config_markdown(), \
        "docs/CONFIG.md is stale: run python -m oss_grpo.rl.config > docs/CONFIG.md"


def test_bitsandbytes_settings_without_it_are_config_errors_before_any_weight_is_built(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what importlib sees when it is not installed
    with pytest.raises(ConfigError, match=r"load_in_4bit=true: needs bitsandbytes \(pip install"):
        load_policy(TrainConfig(load_in_4bit=True))
    with pytest.raises(ConfigError, match=r"optim=adamw_8bit: needs bitsandbytes \(pip install"):
        load_policy(TrainConfig(optim="adamw_8bit"))
