"""The `oss-grpo` command end to end at tiny size, and its one-line exit-2 errors on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["configs/2048-tiny.yaml", "--set", "num_tasks=16", "--set", "prompts_per_step=2", "--set", "group_size=4"]


def oss_grpo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oss_grpo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}


def test_train_two_steps_writes_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = oss_grpo("train", *TINY, "--set", "max_steps=2", "--set", "save_steps=2", "--set", f"output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward_mean"] <= 1.0 and "loss" in r and r["seconds"] > 0 for r in rows)
    assert (run / "reward_curve.png").stat().st_size > 1000
    assert (run / "checkpoint-2" / "COMPLETE").exists()
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "final" / "tokenizer.json").exists()
    terminal = result.stdout + result.stderr  # the bar shows the reward; the 30-key log dicts stay in the files
    assert "reward=" in terminal and "'loss':" not in terminal


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/2048-tiny.yaml", "--set", "group_sise=8"], "group_sise: unknown option"),
        (["configs/2048-tiny.yaml", "--set", "max_steps=many"], "max_steps='many': expected int"),
        (["configs/missing.yaml"], "configs/missing.yaml: config file not found"),
        (["configs/2048-tiny.yaml", "--set", "group_size=1"], "group_size=1: GRPO needs at least 2"),
        (["configs/2048-tiny.yaml", "--set", "learning_rate=-1e-4"], "learning_rate=-0.0001: must be > 0"),
        (["configs/2048-tiny.yaml", "--set", "rewards={nope: 1.0}"], "reward 'nope' is not registered"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = oss_grpo("train", *args, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
