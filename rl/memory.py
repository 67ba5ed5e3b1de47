"""GPU memory estimate of a run, printed by `oss-grpo train` before any weight is loaded.

An estimate from the model's dimensions and the config, split the way memory is actually spent:

- weights: MoE experts at 4.25 bits per weight when kept in MXFP4 (4-bit e2m1 codes plus one 8-bit e8m0 scale per
  32 weights), the attention projections' weight matrices at 4.127 bits with `load_in_4bit` (NF4, rl/nf4.py),
  everything else (embeddings, LM head, attention biases, router, norms) in the config's dtype, less the input
  embedding with `offload_embedding` (it is in host RAM);
- KV cache of sampling: the batch (prompts_per_step * group_size sequences; with N data-parallel processes each
  holds 1/N of it) of prompt + completion tokens;
  sliding-attention layers keep at most `sliding_window` positions. With the vLLM generator this line is instead
  vLLM's engine, which holds its own copy of the weights and its KV cache in `vllm_memory_utilization` of the GPU;
- activations of one micro-batch's forward+backward: the layer inputs gradient checkpointing keeps plus one layer's
  working set (q/k/v, the eager attention score matrix, the routed experts' intermediates), and TRL's chunked
  log-prob of the LM head;
- LoRA adapters with their gradients and AdamW's two moments, all fp32 (16 bytes per adapter weight).

Not counted: the CUDA context and allocator slack (~1 GB, added to the GPU comparison as `CUDA_OVERHEAD`),
temporary copies inside kernels, and the KL reference pass (beta > 0), which reuses the policy's weights with the
adapters off and costs one extra forward's activations at most. The model dimensions come from the checkpoint's
config.json, from rl/tiny_model.py for `tiny`, or from `RELEASED` for the two hub ids when no local copy exists.
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from oss_grpo.rl.config import OPTIMIZERS, TrainConfig
from oss_grpo.rl.errors import ConfigError

GIB = 2**30
MXFP4_BITS = 4.25
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)
"""bitsandbytes NF4 with double quantisation (rl/nf4.py): the 4-bit code, each 64-weight block's absmax in 8 bits,
one fp32 scale per 256 blocks."""
LOGPROB_TILE = (4096, 32_768)  # tokens x vocabulary columns per fp32 tile of TRL 1.16's chunked LM-head log-prob
CUDA_OVERHEAD = 1.0 * GIB


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a gpt-oss model that memory depends on (names as in transformers' GptOssConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    sliding_window: int
    sliding_layers: int
    """How many of the layers use sliding-window attention (gpt-oss alternates sliding and full)."""


RELEASED = {
    "openai/gpt-oss-20b": ModelShape(201_088, 2880, 2880, 24, 64, 8, 64, 32, 4, 128, 12),
    "openai/gpt-oss-120b": ModelShape(201_088, 2880, 2880, 36, 64, 8, 64, 128, 4, 128, 18),
}
"""The released configs (config.json of the two hub repositories, as the gpt-oss model card describes them: 24 and
36 layers alternating sliding (window 128) and full attention, 64 query and 8 KV heads of 64, 32 and 128 experts of
width 2880 with top-4 routing, the 201,088-token o200k_harmony vocabulary, untied LM head). They give 20.91B and
116.83B parameters, the model card's 20.9B and 116.8B (tests/test_memory.py)."""


def shape_from_config(cfg: dict) -> ModelShape:
    """A ModelShape from a config.json mapping (or a transformers config's `to_dict()`)."""
    layer_types = cfg.get("layer_types") or []
    return ModelShape(
        cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
        cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["num_local_experts"],
        cfg["num_experts_per_tok"], cfg.get("sliding_window") or 0,
        sum(t == "sliding_attention" for t in layer_types),
    )


def model_shape(config: TrainConfig) -> ModelShape:
    """The dimensions of `config.model`: tiny, a local checkpoint folder, or one of the released hub ids."""
    if config.model == "tiny":
        from oss_grpo.rl.tiny_model import tiny_config

        tiny = tiny_config(hidden_size=config.tiny_hidden_size, head_dim=config.tiny_head_dim)
        return shape_from_config(tiny.to_dict())
    local = Path(config.model) / "config.json"
    if local.is_file():
        return shape_from_config(json.loads(local.read_text()))
    if config.model in RELEASED:
        return RELEASED[config.model]
    raise ConfigError(f"model={config.model!r}: no config.json there and not one of {', '.join(RELEASED)}; "
                      "cannot estimate memory")


@dataclass(frozen=True)
class ParamCounts:
    """Weights by how they are stored."""

    experts: int
    """Expert matrices (gate_up and down projections of every expert of every layer)."""
    dense: int
    """Everything else: embeddings, LM head, attention, router, expert biases, norms, sinks."""
    attention: int
    """The part of `dense` that `load_in_4bit` stores in NF4: the q, k, v and o weight matrices (not their biases)."""

    @property
    def total(self) -> int:
        return self.experts + self.dense


def param_counts(s: ModelShape) -> ParamCounts:
    h, i, e, q, kv = s.hidden_size, s.intermediate_size, s.num_local_experts, s.num_attention_heads * s.head_dim, \
        s.num_key_value_heads * s.head_dim
    experts = s.num_hidden_layers * e * (h * 2 * i + i * h)
    matrices = h * q + 2 * h * kv + q * h  # q, k, v, o
    attention = matrices + q + 2 * kv + h + s.num_attention_heads  # + their biases, sinks
    per_layer = attention + (h * e + e) + e * (2 * i + h) + 2 * h  # router, expert biases, two RMSNorms
    return ParamCounts(experts, 2 * s.vocab_size * h + s.num_hidden_layers * per_layer + h,
                       s.num_hidden_layers * matrices)


def lora_params(s: ModelShape, targets: list[str], r: int) -> tuple[int, list[str]]:
    """LoRA weights (A and B) on the modules named in `targets` (attention projections; `experts`: per expert, one
    pair on gate_up and one on down, rl/moe_lora.py), and the names it cannot size."""
    q, kv, h, i = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim, s.hidden_size, \
        s.intermediate_size
    per_layer = {"q_proj": r * (h + q), "k_proj": r * (h + kv), "v_proj": r * (h + kv), "o_proj": r * (q + h),
                 "experts": s.num_local_experts * r * ((h + 2 * i) + (i + h))}
    known = sum(per_layer[t] for t in targets if t in per_layer)
    return s.num_hidden_layers * known, [t for t in targets if t not in per_layer]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per kind of memory; `total` is their sum."""

    weights: float
    kv_cache: float
    activations: float
    adapters_and_optimizer: float
    unsized_targets: tuple[str, ...] = ()
    """LoRA targets this estimate cannot size (not attention projections): their adapters are not counted."""
    vllm_engine: float = 0.0
    """vLLM's share (its weights and KV cache) when it generates; kv_cache is then 0 (the engine holds it)."""

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + self.adapters_and_optimizer + self.vllm_engine


def estimate_memory(config: TrainConfig, shape: ModelShape, prompt_tokens: int,
                    vllm_budget: float | None = None, processes: int = 1) -> MemoryEstimate:
    """The estimate for a run of `config` whose longest prompt has `prompt_tokens` tokens; with `vllm_budget` (bytes
    of the device vLLM generates on), sampling is vLLM's engine of `vllm_memory_utilization` of it. With several
    data-parallel `processes` it is one process's (one GPU's): each holds the weights, samples and trains on its share
    of the batch."""
    s, dense_bytes = shape, 4 if config.dtype == "float32" else 2
    params = param_counts(s)
    expert_bytes = params.experts * (MXFP4_BITS / 8 if config.mxfp4_experts else dense_bytes)
    nf4 = params.attention if config.load_in_4bit else 0
    host = s.vocab_size * s.hidden_size if config.offload_embedding else 0  # the input embedding in host RAM
    weights = expert_bytes + (params.dense - nf4 - host) * dense_bytes + nf4 * NF4_BITS / 8

    seq = prompt_tokens + config.max_completion_tokens
    batch = config.prompts_per_step * config.group_size // processes
    kv_per_position = 2 * s.num_key_value_heads * s.head_dim * dense_bytes  # K and V of one layer
    full_layers = s.num_hidden_layers - s.sliding_layers
    kv_cache = batch * kv_per_position * (full_layers * seq + s.sliding_layers * min(seq, s.sliding_window or seq))

    micro = config.micro_batch_size or batch
    tokens = micro * seq
    q, kv = s.num_attention_heads * s.head_dim, s.num_key_value_heads * s.head_dim
    # One layer: 4 hidden-wide tensors (norms, residual, attention output), q/k/v and the attention context, each
    # routed copy's gate_up output, its swiglu and its down output; the eager attention scores and probabilities.
    per_token = 4 * s.hidden_size + 2 * q + 2 * kv + s.num_experts_per_tok * (3 * s.intermediate_size + s.hidden_size)
    layer = tokens * per_token * dense_bytes + 2 * micro * s.num_attention_heads * seq * seq * dense_bytes
    kept = s.num_hidden_layers * tokens * s.hidden_size * dense_bytes  # checkpointed layer inputs
    activations = (kept + layer) if config.gradient_checkpointing else s.num_hidden_layers * layer
    tile_tokens = min(micro * config.max_completion_tokens, LOGPROB_TILE[0])
    activations += 2 * tile_tokens * LOGPROB_TILE[1] * 4  # one fp32 log-prob tile, forward and backward

    adapters, unsized = lora_params(s, config.lora_target_modules, config.lora_r)
    estimate = MemoryEstimate(weights, kv_cache, activations, adapters * OPTIMIZERS[config.optim].bytes_per_weight,
                              tuple(unsized))
    if vllm_budget is None:
        return estimate
    return dataclasses.replace(estimate, kv_cache=0.0, vllm_engine=config.vllm_memory_utilization * vllm_budget)


def memory_report(estimate: MemoryEstimate, budget_bytes: float | None) -> tuple[str, bool]:
    """The estimate as printed lines, and whether it fits `budget_bytes` (True when there is no budget to check)."""
    sampling = ("vLLM engine (weights copy + KV)", estimate.vllm_engine) if estimate.vllm_engine else \
        ("KV cache (sampling)", estimate.kv_cache)
    rows = [("weights", estimate.weights), sampling,
            ("activations (forward+backward)", estimate.activations),
            ("LoRA + gradients + AdamW", estimate.adapters_and_optimizer), ("total", estimate.total)]
    lines = ["estimated memory:"] + [f"  {name:<32}{size / GIB:9.2f} GiB" for name, size in rows]
    if estimate.unsized_targets:
        lines.append(f"  (adapters on {', '.join(estimate.unsized_targets)} not counted)")
    if budget_bytes is None:
        return "\n".join(lines), True
    needed = estimate.total + CUDA_OVERHEAD
    fits = needed <= budget_bytes
    lines.append(f"  GPU budget {budget_bytes / GIB:.2f} GiB, needed with CUDA context {needed / GIB:.2f} GiB")
    if not fits:
        lines.append("WARNING: this run will likely not fit: lower micro_batch_size, group_size, prompts_per_step "
                     "or max_completion_tokens, turn on gradient_checkpointing, mxfp4_experts, load_in_4bit and "
                     "offload_embedding "
                     "(docs/TROUBLESHOOTING.md, out of memory)")
    return "\n".join(lines), fits


def announce(config: TrainConfig, prompts: list[list[dict[str, str]]], backend: str, processes: int = 1) -> None:
    """Print the resolved config and the estimate for the longest of `prompts` with the rollout `backend` (vllm,
    vllm-server or transformers), per process of `processes`, before any weight is loaded (a run that cannot fit
    should say so in seconds, not after minutes)."""
    from oss_grpo.rl.harmony import render_prompt_ids

    print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), end="")
    distinct = {repr(p): p for p in prompts}.values()
    longest = max(len(render_prompt_ids(p, reasoning_effort=config.reasoning_effort,
                                        developer_instructions=config.developer_instructions)) for p in distinct)
    budget = gpu_budget(config)
    # On a CPU (no budget) vLLM's share of RAM is not counted; a vLLM server samples on other devices (0 here).
    vllm_budget = {"vllm": budget, "vllm-server": 0.0}.get(backend)
    report, _ = memory_report(estimate_memory(config, model_shape(config), longest, vllm_budget, processes), budget)
    layout = f", each of {processes} processes" if processes > 1 else ""
    print(f"longest prompt: {longest} tokens{layout}\n{report}", flush=True)


def gpu_budget(config: TrainConfig) -> float | None:
    """Bytes to check the estimate against: gpu_memory_gb if set, else the visible GPU's total, else None (CPU)."""
    if config.gpu_memory_gb:
        return config.gpu_memory_gb * 1e9
    import torch

    if config.device == "cpu" or not torch.cuda.is_available():
        return None
    return float(torch.cuda.get_device_properties(0).total_memory)
