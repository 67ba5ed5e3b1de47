"""`oss-grpo eval` in process: its JSON, numbers reproducible for a seed, typed errors, and each environment's
evaluation giving its documented metrics (the CLI on a trained run: tests/test_newcomer.py)."""

import json
from pathlib import Path

import pytest

from oss_grpo.rl.config import load_config
from oss_grpo.rl.errors import CheckpointError

REPO = Path(__file__).resolve().parents[1]
SMALL_EVAL = ["eval_tasks=4", "eval_games=2", "eval_max_moves=4"]
MOVE_COLUMNS = ["boards", "mean_move_reward", "best_move_agreement", "games", "mean_max_tile", "mean_score",
                "win_rate", "invalid_answer_rate"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter folder as training saves one (random A, B = 0); tests/test_newcomer.py evaluates a trained one
    through the CLI."""
    from peft import get_peft_model

    from oss_grpo.rl.policy import load_policy, lora_config

    config = load_config(REPO / "configs/2048-tiny.yaml")
    run = tmp_path_factory.mktemp("eval")
    get_peft_model(load_policy(config), lora_config(config)).save_pretrained(str(run / "final"))
    return run / "final"


def test_eval_writes_the_metrics_as_json_and_is_reproducible_for_a_seed(adapter: Path) -> None:
    from oss_grpo.rl.evaluation import evaluate, metrics_table

    config = load_config(REPO / "configs/2048-tiny.yaml", SMALL_EVAL)
    first, path = evaluate(config, adapter)
    saved = json.loads(path.read_text())
    assert path == adapter.parent / "eval-final.json" and saved["metrics"] == first and list(first) == MOVE_COLUMNS
    assert first["boards"] == 4 and first["games"] == 2 and 0.0 <= first["mean_move_reward"] <= 1.0
    assert evaluate(config, adapter)[0] == first
    compiled = load_config(REPO / "configs/2048-tiny.yaml", [*SMALL_EVAL, "compile_generation=true"])
    assert evaluate(compiled, adapter)[0] == first  # its padded layout (compiled on a GPU) samples the same answers
    assert metrics_table(first).splitlines()[0].split() == ["metric", "value"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_evaluation_games_are_held_out_from_training(seed: int) -> None:
    from oss_grpo.rl.evaluation import strategy_eval_seeds
    from oss_grpo.rl.tasks import task_builder

    config = load_config(REPO / "configs/2048-strategy-tiny.yaml", [f"seed={seed}", "eval_games=16"])
    dataset, _ = task_builder(config.env)(config)
    trained = {s for seeds in dataset["game_seeds"] for s in seeds}
    assert len(trained) == config.num_tasks * config.strategy_games
    assert not trained & set(strategy_eval_seeds(config))


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


def test_kernelgen_evaluation_checks_on_the_configs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kernelgen_device: cuda` (the GPU configs) must check eval answers on the GPU too, as training's rewards do."""
    from oss_grpo.rewards.kernel_check import KernelVerdict
    from oss_grpo.rl import evaluation
    from oss_grpo.rl.policy import load_policy

    devices = []
    monkeypatch.setattr(evaluation, "check_answer", lambda task, answer, device: devices.append(device) or
                        KernelVerdict(False, 0.0, "stand-in"))
    cfg = load_config(REPO / "configs/kernelgen-tiny.yaml", ["eval_tasks=2", "kernelgen_device=cuda"])
    assert evaluation.evaluate_policy(cfg, load_policy(cfg))["answers"] == 2 and devices == ["cuda", "cuda"]
