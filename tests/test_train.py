"""Pieces of rl/train.py that change what TRL computes."""

from pathlib import Path

import pytest
import torch
import trl.trainer.utils
from trl.trainer.utils import add_fused_lm_head

from oss_grpo.rl.config import TrainConfig, load_config
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.metrics import read_metrics
from oss_grpo.rl.tiny_model import build_tiny_model
from oss_grpo.rl import train as train_module
from oss_grpo.rl.train import grpo_args, score_only_completion_tokens, train


def test_completion_only_scoring_gives_the_same_logprobs(monkeypatch) -> None:
    """Our CPU shortcut in TRL's fused LM head must not change a single log-prob (nor its gradient)."""
    model = build_tiny_model(seed=1)
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    input_ids = torch.randint(0, 200_000, (3, 20))
    labels = input_ids.clone()
    labels[:, :15] = -100  # only the last 5 tokens are a completion

    logits = model(input_ids).logits[:, 14:-1].double()
    expected = logits.log_softmax(-1).gather(-1, input_ids[:, 15:, None])[..., 0]

    monkeypatch.setattr(trl.trainer.utils, "_use_triton", trl.trainer.utils._use_triton)  # restored after the test
    score_only_completion_tokens()
    out = model(input_ids, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(out.log_probs[:, 14:].double(), expected, atol=1e-5, rtol=1e-5)
    assert torch.all(out.log_probs[:, :14] == 0)  # prompt positions are not scored at all
    out.log_probs.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_optim_picks_the_optimizer_the_trainer_builds() -> None:
    """`optim` reaches transformers' Trainer as the optimizer it instantiates: bitsandbytes' AdamW in 8 bits, whose
    moments are then one byte a weight."""
    from transformers import Trainer

    bnb = pytest.importorskip("bitsandbytes", reason="adamw_8bit needs bitsandbytes (the gpu extra; CI has it)")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(grpo_args(TrainConfig(), use_cpu=True))
    assert cls is torch.optim.AdamW
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(grpo_args(TrainConfig(optim="adamw_8bit"), use_cpu=True))
    assert cls is bnb.optim.AdamW and kwargs["optim_bits"] == 8
    param = torch.nn.Parameter(torch.randn(64, 128))  # >= 4096 weights: bitsandbytes quantises its moments
    optimizer = cls([param], **kwargs)
    param.grad = torch.randn_like(param)
    before = param.detach().clone()
    optimizer.step()
    assert optimizer.state[param]["state1"].dtype == torch.uint8 and not torch.equal(param, before)


def test_each_process_trains_on_its_share_of_the_batch() -> None:
    """prompts_per_step * group_size is the step's whole batch for any number of data-parallel processes."""
    config = TrainConfig(prompts_per_step=4, group_size=4, micro_batch_size=4)
    args = grpo_args(config, use_cpu=True, processes=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)
    assert grpo_args(TrainConfig(prompts_per_step=4, group_size=4), True, 2).per_device_train_batch_size == 8
    with pytest.raises(ConfigError, match="16 completions: cannot be split evenly over 3 processes"):
        grpo_args(config, use_cpu=True, processes=3)
    with pytest.raises(ConfigError, match="micro_batch_size=16: must divide each process's share"):
        grpo_args(TrainConfig(prompts_per_step=4, group_size=4, micro_batch_size=16), True, 2)


def test_one_process_seeing_several_gpus_stops_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the first 2-GPU run hit: a plain `oss-grpo train` with 2 GPUs visible, which TRL refuses (nn.DataParallel)
    only once the policy is built. The check comes first, and names both ways out."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    config = TrainConfig(device="cuda", output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="2 GPUs are visible to one process.*accelerate launch.*CUDA_VISIBLE_DEVICES"):
        train(config)
    assert not (tmp_path / "run").exists()  # nothing was written or loaded
    monkeypatch.setattr(train_module, "process_layout", lambda: (0, 2))  # under accelerate launch: no complaint
    monkeypatch.setattr(train_module, "grpo_args", lambda *args: (_ for _ in ()).throw(RuntimeError("past the check")))
    with pytest.raises(RuntimeError, match="past the check"):
        train(config)


def test_compile_generation_needs_the_transformers_generator(tmp_path: Path) -> None:
    config = TrainConfig(compile_generation=True, generator="vllm-server", output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="compile_generation: applies to generator: transformers.*vllm-server"):
        train(config)
    assert not (tmp_path / "run").exists()  # refused before anything was written or loaded


def test_compiled_generation_turns_on_the_sampling_correction(tmp_path: Path, repo: Path) -> None:
    """`compile_generation` samples from the policy's own weights through other kernels (a GPU compiles the decode),
    so TRL's importance-sampling correction is on, as for vLLM: it logs the gap between the sampler's and the
    trainer's log-probs, here (CPU: a static cache, nothing compiled) of rounding size. Off, nothing is logged; but
    a bf16 policy samples with its float32 LoRA factors in bf16 (rl/sampling_adapters.py), so the correction is on."""
    rows = {}
    for compiled, dtype in ((True, "float32"), (False, "float32"), (False, "bfloat16")):
        config = load_config(repo / "configs/2048-tiny.yaml", [
            f"compile_generation={str(compiled).lower()}", "constrain_to_actions=false", "prompts_per_step=2",
            "num_tasks=4", "max_steps=1", "save_steps=1", f"dtype={dtype}",
            f"output_dir={tmp_path / f'{compiled}-{dtype}'}"])
        rows[compiled, dtype] = read_metrics(train(config))[0]
    assert 0.0 <= rows[True, "float32"]["sampler_logp_diff_max"] < 1e-3
    assert "sampler_logp_diff_max" not in rows[False, "float32"]
    assert rows[False, "bfloat16"]["sampler_logp_diff_max"] >= 0.0


def test_each_metrics_line_carries_its_own_steps_gpu_peak(tmp_path, monkeypatch) -> None:
    """On a GPU every line reports the peak since the line before, then resets it; on a CPU there is no such key."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from oss_grpo.rl.metrics import MetricsCallback

    peaks, resets = iter([3 * 2**30, 2**29]), []
    callback, state = MetricsCallback(tmp_path), TrainerState()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    for step, on_gpu in ((1, False), (2, True), (3, True)):
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: on_gpu)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: next(peaks))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: resets.append(step))
        state.global_step = step
        callback.on_log(args, state, TrainerControl(), logs={"reward": 0.5, "loss": 0.1})
    rows = read_metrics(tmp_path)
    assert "gpu_peak_gib" not in rows[0]
    assert [r["gpu_peak_gib"] for r in rows[1:]] == [3.0, 0.5] and resets == [2, 3]
