"""The start-up memory estimate: its arithmetic on the shipped 20b and 120b configs against numbers worked out by
hand, the model-dimension sources, and the not-fit warning."""

import dataclasses
import json
from pathlib import Path

import pytest

from oss_grpo.rl.config import TrainConfig, load_config
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.memory import (GIB, NF4_BITS, RELEASED, estimate_memory, lora_params, memory_report, model_shape,
                                param_counts, shape_from_config)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# gpt-oss-20b by hand (h = I = 2880, 64 query heads and 8 KV heads of 64, 32 experts, vocab 201,088, 24 layers):
#   one expert: gate_up 2880 x 5760 + down 2880 x 2880 = 24,883,200; x 32 experts x 24 layers = 19,110,297,600
#   one layer's attention: q 2880*4096 + 4096, k and v 2 * (2880*512 + 512), o 4096*2880 + 2880, 64 sinks
#     = 11,800,576 + 2,950,144 + 11,799,360 + 64 = 26,550,144
#   plus router 2880*32 + 32 = 92,192, expert biases 32 * (5760 + 2880) = 276,480, two norms 5,760: 26,924,576
#   dense = embeddings + LM head 2 * 201,088 * 2880 = 1,158,266,880, + 24 layers = 646,189,824, + final norm 2,880
EXPERTS_20B, DENSE_20B = 19_110_297_600, 1_804_459_584
# gpt-oss-120b: 36 layers of 128 experts = 114,661,785,600; a layer's router 368,768 and expert biases 1,105,920
EXPERTS_120B, DENSE_120B = 114_661_785_600, 1_158_266_880 + 36 * (26_550_144 + 368_768 + 1_105_920 + 5_760) + 2880
# The NF4 part (load_in_4bit) of a layer's attention: the four weight matrices without biases and sinks,
#   26,550,144 - 4096 - 2 * 512 - 2880 - 64 = 26,542,080
ATTENTION_LAYER = 26_542_080


def test_released_shapes_give_the_model_cards_parameter_counts() -> None:
    small, large = param_counts(RELEASED["openai/gpt-oss-20b"]), param_counts(RELEASED["openai/gpt-oss-120b"])
    assert (small.experts, small.dense, small.attention) == (EXPERTS_20B, DENSE_20B, 24 * ATTENTION_LAYER)
    assert (large.experts, large.dense, large.attention) == (EXPERTS_120B, DENSE_120B, 36 * ATTENTION_LAYER)
    assert round(small.total / 1e9, 1) == 20.9 and round(large.total / 1e9, 1) == 116.8


@pytest.mark.parametrize("name, experts, dense", [("2048", EXPERTS_20B, DENSE_20B),
                                                  ("2048-120b", EXPERTS_120B, DENSE_120B)])
def test_weights_kv_and_adapters_match_hand_arithmetic(name: str, experts: int, dense: int) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")  # bf16, MXFP4 experts, NF4 attention, 32 x 1024 tokens, LoRA r16
    layers = RELEASED[config.model].num_hidden_layers
    est = estimate_memory(config, model_shape(config), prompt_tokens=266)
    nf4 = layers * ATTENTION_LAYER
    assert est.weights == experts * 4.25 / 8 + (dense - nf4) * 2 + nf4 * 4.126953125 / 8
    # KV: 32 sequences of 266 + 1024 = 1290 positions; a position costs K and V of 8 heads x 64 x 2 bytes = 2048
    # bytes per layer; half the layers are full (1290 positions), half slide over 128.
    assert est.kv_cache == 32 * 2048 * (layers // 2 * 1290 + layers // 2 * 128)
    # LoRA r16 on q (2880 -> 4096), k and v (2880 -> 512), o (4096 -> 2880): 331,776 per layer; fp32 weight and
    # gradient, and the config's 8-bit AdamW keeps each moment in one byte: 4 + 4 + 1 + 1 bytes (torch's: 16).
    assert config.optim == "adamw_8bit" and est.adapters_and_optimizer == layers * 331_776 * 10
    fp32_adam = estimate_memory(dataclasses.replace(config, optim="adamw"), model_shape(config), 266)
    assert fp32_adam.adapters_and_optimizer == layers * 331_776 * 16


@pytest.mark.parametrize("settings, measured_gib", [
    (dict(micro_batch_size=8), 23.25),  # run 1: AdamW, bf16 attention
    (dict(micro_batch_size=1, load_in_4bit=True, optim="adamw_8bit"), 15.61),  # run 4, chunked attention (H200)
    (dict(micro_batch_size=1, load_in_4bit=True, optim="adamw_8bit", offload_embedding=True), 13.82),  # run 9 (H100)
])
def test_estimate_is_within_10_percent_of_the_measured_step(settings: dict, measured_gib: float) -> None:
    """bench/full_step.py's gpt-oss-20b step on an H100 and an H200 (docs/BENCHMARKS.md, 2026-11-23): peak
    max_memory_allocated of ours, 4 x 8 completions of 128 + 1,024 tokens, LoRA r16 on attention and experts. Its
    184,909,824 LoRA parameters, counted there from the PEFT model, are what lora_params gives."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "experts"]
    config = TrainConfig(model="openai/gpt-oss-20b", dtype="bfloat16", lora_target_modules=targets, lora_r=16,
                         prompts_per_step=4, group_size=8, max_completion_tokens=1024, **settings)
    shape = model_shape(config)
    assert lora_params(shape, targets, 16) == (184_909_824, [])
    estimate = estimate_memory(config, shape, prompt_tokens=128)
    assert abs(estimate.total / GIB - measured_gib) < 0.1 * measured_gib, estimate


def test_activations_of_the_20b_strategy_config_match_hand_arithmetic() -> None:
    config = load_config(CONFIGS / "2048.yaml")  # micro-batch 2, gradient checkpointing on
    est = estimate_memory(config, model_shape(config), prompt_tokens=266)
    tokens = 2 * 1290
    layer = tokens * 66_816 * 2 + 2 * 2 * 64 * 1290 * 1290 * 2  # 4h + 2q + 2kv + 4 * 4I per token; eager scores
    kept = 24 * tokens * 2880 * 2  # each layer's input, bf16
    tile = 2 * 2048 * 32_768 * 4  # 2 x 1024 completion tokens x 32k vocab columns, fp32, forward and backward
    assert est.activations == layer + kept + tile == 2_090_319_872


def test_nf4_attention_saves_what_bf16_took_beyond_4_127_bits() -> None:
    """gpt-oss-20b: 637M attention weights go from 16 to 4.127 bits (NF4 codes, 8-bit block absmax per 64, an fp32
    per 256 blocks): 945 MB less (0.88 GiB), 12.82 -> 11.94 GiB of weights; nothing else changes."""
    config = load_config(CONFIGS / "2048.yaml")
    shape = model_shape(config)
    nf4 = estimate_memory(config, shape, 266)
    bf16 = estimate_memory(dataclasses.replace(config, load_in_4bit=False), shape, 266)
    assert NF4_BITS == 4.126953125
    assert bf16.weights - nf4.weights == 24 * ATTENTION_LAYER * (2 - NF4_BITS / 8) == 945_406_080
    assert round(bf16.weights / GIB, 2) == 12.82 and round(nf4.weights / GIB, 2) == 11.94
    assert bf16.total - nf4.total == bf16.weights - nf4.weights


def test_each_data_parallel_process_holds_its_share_of_the_sampling() -> None:
    """Under accelerate launch each GPU holds all the weights but samples half the batch (2 processes)."""
    config = dataclasses.replace(load_config(CONFIGS / "2048.yaml"), micro_batch_size=0)
    one, two = (estimate_memory(config, model_shape(config), 266, processes=n) for n in (1, 2))
    assert (two.weights, two.adapters_and_optimizer) == (one.weights, one.adapters_and_optimizer)
    assert two.kv_cache == one.kv_cache / 2 and two.activations < one.activations


def test_smaller_micro_batch_and_checkpointing_lower_activations() -> None:
    config = load_config(CONFIGS / "2048.yaml")
    shape = model_shape(config)
    base = estimate_memory(config, shape, 266).activations
    assert estimate_memory(dataclasses.replace(config, micro_batch_size=1), shape, 266).activations < base
    assert estimate_memory(dataclasses.replace(config, gradient_checkpointing=False), shape, 266).activations > base


@pytest.mark.parametrize("name, gpu_gb", [("2048", 24), ("kernelgen", 24), ("2048-120b", 80), ("kernelgen-120b", 80)])
def test_shipped_gpu_configs_fit_their_gpu(name: str, gpu_gb: int) -> None:
    from oss_grpo.rl.harmony import render_prompt_ids
    from oss_grpo.rl.tasks import task_builder

    config = load_config(CONFIGS / f"{name}.yaml")
    dataset, _ = task_builder(config.env)(dataclasses.replace(config, num_tasks=len(config.kernelgen_tasks)))
    longest = max(len(render_prompt_ids(p, reasoning_effort=config.reasoning_effort,
                                        developer_instructions=config.developer_instructions))
                  for p in dataset["prompt"])
    report, fits = memory_report(estimate_memory(config, model_shape(config), longest), gpu_gb * 1e9)
    assert fits, report


def test_vllm_engine_replaces_the_kv_cache_with_its_share_of_the_gpu() -> None:
    config = load_config(CONFIGS / "2048.yaml", ["generator=vllm", "vllm_memory_utilization=0.4"])
    plain = estimate_memory(config, model_shape(config), 266)
    with_vllm = estimate_memory(config, model_shape(config), 266, vllm_budget=80e9)
    assert (with_vllm.kv_cache, with_vllm.vllm_engine) == (0.0, 0.4 * 80e9)
    assert with_vllm.total == plain.total - plain.kv_cache + 32e9
    assert "vLLM engine" in memory_report(with_vllm, 80e9)[0]
    assert not memory_report(estimate_memory(config, model_shape(config), 266, vllm_budget=24e9), 24e9)[1]


def test_warning_when_it_does_not_fit() -> None:
    config = load_config(CONFIGS / "2048.yaml")
    estimate = estimate_memory(config, model_shape(config), 266)
    report, fits = memory_report(estimate, 0.95 * estimate.total)
    assert not fits and "WARNING: this run will likely not fit" in report
    assert "GPU budget" not in memory_report(estimate, None)[0]


def test_dimensions_come_from_a_local_config_json_or_the_tiny_model(tmp_path: Path) -> None:
    from oss_grpo.rl.tiny_model import tiny_config

    (tmp_path / "config.json").write_text(json.dumps(tiny_config(hidden_size=32, head_dim=32).to_dict()))
    local = model_shape(load_config(None, [f"model={tmp_path}"]))
    assert local == model_shape(load_config(None, ["model=tiny", "tiny_hidden_size=32"]))
    assert (local.hidden_size, local.head_dim, local.sliding_layers) == (32, 32, 1)
    assert shape_from_config(tiny_config().to_dict()).num_local_experts == 4


def test_unknown_model_without_config_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model='someone/other-model': no config.json"):
        model_shape(load_config(None, ["model=someone/other-model"]))


def test_expert_lora_is_sized_per_expert() -> None:
    from oss_grpo.rl.memory import lora_params

    # r16 on each of 32 experts x 24 layers: gate_up A 16 x 2880 + B 5760 x 16, down A 16 x 2880 + B 2880 x 16.
    assert lora_params(RELEASED["openai/gpt-oss-20b"], ["experts"], 16) == (24 * 32 * 16 * 14_400, [])
    assert lora_params(RELEASED["openai/gpt-oss-20b"], ["gate"], 16) == (0, ["gate"])
