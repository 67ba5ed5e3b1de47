"""`oss-grpo eval`: a tiny 2-step run's checkpoint evaluated through the real CLI (the table and its JSON), the
numbers reproducible for a seed, and each environment's evaluation giving its documented metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oss_grpo.rl.config import load_config
from oss_grpo.rl.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
SMALL_EVAL = ["--set", "eval_tasks=4", "--set", "eval_games=2", "--set", "eval_max_moves=4"]
MOVE_COLUMNS = ["boards", "mean_move_reward", "best_move_agreement", "games", "mean_max_tile", "mean_score",
                "win_rate", "invalid_answer_rate"]


def oss_grpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oss_grpo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two steps of the embedded default, small, with micro-batches of 4 (so gradient accumulation is exercised)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    result = oss_grpo("train", "configs/2048-tiny.yaml", "--set", "num_tasks=8", "--set", "prompts_per_step=2",
                      "--set", "micro_batch_size=4", "--set", "max_steps=2", "--set", "save_steps=2",
                      "--set", f"output_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "estimated memory:" in result.stdout and "longest prompt:" in result.stdout
    return run


@pytest.fixture(scope="module")
def cli_eval(tiny_run: Path) -> subprocess.CompletedProcess:
    result = oss_grpo("eval", "configs/2048-tiny.yaml", "--checkpoint", str(tiny_run / "final"), *SMALL_EVAL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_eval_prints_the_table_and_writes_json(tiny_run: Path, cli_eval: subprocess.CompletedProcess) -> None:
    table = cli_eval.stdout.split("\n")
    header = next(i for i, line in enumerate(table) if line.split() == ["metric", "value"])
    assert [line.split()[0] for line in table[header + 1 : header + 1 + len(MOVE_COLUMNS)]] == MOVE_COLUMNS
    saved = json.loads((tiny_run / "eval-final.json").read_text())
    assert list(saved["metrics"]) == MOVE_COLUMNS and saved["metrics"]["boards"] == 4
    assert 0.0 <= saved["metrics"]["mean_move_reward"] <= 1.0 and saved["metrics"]["mean_max_tile"] >= 2


def test_eval_is_reproducible_for_a_seed(tiny_run: Path, cli_eval: subprocess.CompletedProcess) -> None:
    """The same checkpoint and seed in another process give the very same numbers (checkpoint-2 is final/)."""
    from oss_grpo.rl.evaluation import evaluate

    config = load_config(REPO / "configs/2048-tiny.yaml", [a for a in SMALL_EVAL if a != "--set"])
    again, path = evaluate(config, tiny_run / "checkpoint-2")
    assert again == json.loads((tiny_run / "eval-final.json").read_text())["metrics"]
    assert path.name == "eval-checkpoint-2.json"


def test_missing_adapter_is_a_checkpoint_error(tmp_path: Path) -> None:
    from oss_grpo.rl.evaluation import evaluate

    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        evaluate(load_config(REPO / "configs/2048-tiny.yaml"), tmp_path)


@pytest.mark.parametrize("config, overrides, columns", [
    ("2048-strategy-tiny.yaml", ["eval_tasks=2", "eval_games=1"],
     ["answers", "games_per_answer", "valid_function_rate", "mean_max_tile", "win_rate"]),
    ("kernelgen-tiny.yaml", ["eval_tasks=2"], ["answers", "pass_at_1", "mean_correct_trials", "runs_rate",
                                               "mean_speedup"]),
])
def test_every_env_evaluation_gives_its_metrics(config: str, overrides: list[str], columns: list[str]) -> None:
    from oss_grpo.rl.evaluation import evaluate_policy
    from oss_grpo.rl.policy import load_policy

    cfg = load_config(REPO / "configs" / config, overrides)
    metrics = evaluate_policy(cfg, load_policy(cfg))
    assert list(metrics) == columns and metrics["answers"] == 2
    if "mean_speedup" in metrics:
        assert metrics["mean_speedup"] is None  # no kernel is timed on a CPU (nor correct from a random model)
    else:
        assert 0.0 <= metrics["valid_function_rate"] <= 1.0
