"""One full GRPO step of a gpt-oss-shaped model on one GPU: ours (MXFP4 experts) against the bf16 baseline, same run.

Run on a CUDA machine from the repo root (on the lent GPU `source bench/gpu_env.sh` first: it installs TRL there):

    python bench/full_step.py --shape 20b --mode both --json full_step.json
    python bench/full_step.py --shape 120b --mode ours     # load, generate, one short step (or per-part memory + OOM)
    python bench/full_step.py --shape tiny --device cpu    # the CPU smoke run that tests/test_full_step.py makes

The model has the released configuration (`RELEASED` in rl/memory.py: 24 or 36 layers, hidden 2880, 64 query / 8 KV
heads of 64, 32 or 128 experts top-4, vocabulary 201,088, sliding window 128 on alternate layers, sinks) and random
weights made on the device: nothing is downloaded. Two modes with the same weights, batch and step, one after the
other in one process (each model is freed before the next is built, so each peak is its own):

    ours      experts drawn as random MXFP4 codes/scales straight into the uint8 buffers of `Mxfp4Experts` (no float
              expert tensor ever exists), fp32 router, our Triton kernels; LoRA (PEFT) on attention and experts
              (rl/moe_lora.py)
    baseline  what a TRL + PEFT user runs today: the same experts dequantised to bf16 in transformers' GptOssExperts
              and LoRA on them through PEFT `target_parameters` (which adds B A to the whole expert weight on every
              forward), transformers' router

Attention, embeddings and LM head are bf16 in both, or with --load-in-4bit the attention projections NF4 in both
(rl/nf4.py, before LoRA is attached); --optim adamw_8bit gives both bitsandbytes' 8-bit AdamW. Attention is
transformers' eager implementation (the one with sinks that is there without the kernel hub): as it is in the baseline,
in query chunks in ours (rl/attention.py: the same values, 0.76 GiB less at the batched prefill). Ours also runs its
experts in passes of at most 1,024 tokens (rl/moe.py), and with --offload-embedding keeps its input embedding table
in host RAM (rl/host_embedding.py; 1.08 GiB), which TRL + PEFT do not offer the baseline.

The step (`grpo_step`). Each phase runs between device synchronisations and records its seconds and its own peak
memory (max_memory_allocated, reset at its start; for micro-batched phases the max over micro-batches):

    generation     transformers `generate`: prompts x group sequences at once, static KV cache, sampling at T=1, exactly
                   --new-tokens tokens (the config has no stop token); torch.compile + CUDA graphs only with --compile
    old_logprobs   the completions' log-probs under the policy, no grad (TRL recomputes them for num_iterations > 1
                   and for vLLM's importance-sampling correction)
    ref_logprobs   the same with the adapters disabled: the KL reference is the policy itself, no second copy
    loss           forward with gradient checkpointing, then the GRPO loss (`grpo_loss`), per micro-batch
    backward       loss.backward(), gradients accumulated over the micro-batches
    optimizer      grad-norm clip at 1.0 and an AdamW step on the LoRA parameters

Log-probs come from TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, which GRPOTrainer itself installs):
tiles of 4,096 tokens x 32,768 vocabulary columns, recomputed in backward, so [tokens, 201,088] fp32 logits never
exist (tests/test_full_step.py holds it against the full-logits computation, values and gradients). On CUDA a
warm-up step with 2 new tokens runs first, so Triton's compilation stays out of the timings.

Printed: a markdown table (seconds and peak GiB per phase and mode), decode tokens/s per sequence at the step's batch
next to its memory floor (bytes one decode step must read from HBM, over --hbm-tbs), and the bytes by part (experts,
dense, LoRA, optimizer). --json writes all of it, rewritten after each mode so a run cut short keeps what finished.
With --mode both the baseline also scores ours' sampled sequences with its adapters off (untimed): the two modes hold
the same base weights, so those reference log-probs differ by rounding alone, and `router_gaps` sizes that rounding
(a random 24-layer MoE amplifies it: the first H100 run found gaps of ~0.7 nats in both, docs/BENCHMARKS.md).
"""

import argparse
import dataclasses
import gc
import json
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.rl.attention import use_chunked_attention
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.gpt_oss_loader import allocate, meta_model
from oss_grpo.rl.host_embedding import HostEmbedding, offload_input_embedding
from oss_grpo.rl.memory import GIB, MXFP4_BITS, RELEASED, ModelShape, param_counts
from oss_grpo.rl import moe
from oss_grpo.rl.moe import PROJECTIONS, use_fp32_routers
from oss_grpo.rl.nf4 import adapters_to_fp32, quantize_linears
from oss_grpo.rl.policy import lora_config
from oss_grpo.rl.tiny_model import PAD_ID

SHAPES = {
    "20b": RELEASED["openai/gpt-oss-20b"],
    "120b": RELEASED["openai/gpt-oss-120b"],
    # gpt-oss shrunk for CPU tests: 2 layers (one sliding, one full), 4 experts top-2, a window shorter than the
    # test's sequences, a vocabulary that still spans two of TRL's 32,768-column LM-head tiles (the second partial).
    "tiny": ModelShape(40_000, 64, 64, 2, 4, 2, 16, 4, 2, 8, 1),
    # gpt-oss-20b's depth and routing (24 layers, 32 experts top-4, window 128) at a width a CPU runs in seconds.
    "20b-narrow": ModelShape(32_000, 512, 512, 24, 8, 8, 64, 32, 4, 128, 12),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
SCALES = (119, 122)
"""e8m0 scales drawn in [119, 122): weights of magnitude 2^-8..2^-6 times the e2m1 codes, std ~0.015 like an init."""


@dataclass(frozen=True)
class Settings:
    """One step's batch and hyper-parameters (defaults per shape in `DEFAULTS`)."""

    prompts: int
    group: int
    prompt_tokens: int
    new_tokens: int
    micro_batch: int
    rank: int = 16
    lora_experts: bool = True
    learning_rate: float = 1e-5
    beta: float = 0.04
    """KL coefficient: nonzero so the reference log-probs enter the loss (the project's default is 0)."""
    epsilon: float = 0.2
    compile: bool = False
    optim: str = "adamw"
    """`adamw` (torch, float32 moments) or `adamw_8bit` (bitsandbytes' blockwise 8-bit moments, 4x smaller)."""
    load_in_4bit: bool = False
    """Attention projections in NF4 through bitsandbytes (rl/nf4.py), in both modes."""
    offload_embedding: bool = False
    """Input embedding table in host RAM (rl/host_embedding.py), ours only: the baseline is TRL + PEFT as documented,
    which have no such option."""
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.prompts * self.group


DEFAULTS = {
    "20b": dict(prompts=4, group=8, prompt_tokens=128, new_tokens=1024, micro_batch=8),
    "120b": dict(prompts=1, group=8, prompt_tokens=128, new_tokens=128, micro_batch=8),
    "tiny": dict(prompts=2, group=2, prompt_tokens=8, new_tokens=4, micro_batch=2),
}


def pad_id(shape: ModelShape) -> int:
    """o200k_harmony's <|endoftext|>, or the last id of a shrunk vocabulary (an embedding's padding_idx must exist)."""
    return PAD_ID if shape.vocab_size > PAD_ID else shape.vocab_size - 1


def random_ids(vocab_size: int, size: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform token ids below the padding id (ordinary o200k tokens, never a special one), on the CPU."""
    return torch.randint(0, min(vocab_size - 1, PAD_ID), size, generator=generator)


def gpt_oss_config(shape: ModelShape) -> GptOssConfig:
    """transformers' config for `shape`; no stop token, so every completion has exactly the requested length."""
    return GptOssConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim,
        num_local_experts=shape.num_local_experts, num_experts_per_tok=shape.num_experts_per_tok,
        sliding_window=shape.sliding_window,
        layer_types=["sliding_attention", "full_attention"] * (shape.num_hidden_layers // 2),
        tie_word_embeddings=False, eos_token_id=None, pad_token_id=pad_id(shape), attn_implementation="eager",
    )  # fmt: skip


def _generator(device: torch.device, name: str, seed: int) -> torch.Generator:
    """A generator seeded by tensor name: both modes draw the same values for the same tensor."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def random_mxfp4(name: str, n: int, k: int, experts: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """Random codes (every byte value) and scales in `SCALES` for one projection of every expert: `[E, N, K/32, 16]`,
    `[E, N, K/32]` uint8."""
    g = _generator(device, name, seed)
    blocks = torch.randint(0, 256, (experts, n, k // 32, 16), dtype=torch.uint8, device=device, generator=g)
    scales = torch.randint(*SCALES, (experts, n, k // 32), dtype=torch.uint8, device=device, generator=g)
    return blocks, scales


def expert_shapes(config: GptOssConfig) -> dict[str, tuple[int, int]]:
    """(N, K) of each projection's W_e, as the checkpoints store it (out, in)."""
    return {"gate_up_proj": (2 * config.intermediate_size, config.hidden_size),
            "down_proj": (config.hidden_size, config.intermediate_size)}


def build_model(shape: ModelShape, mode: str, device: torch.device, seed: int = 0,
                dtype: torch.dtype = torch.bfloat16) -> GptOssForCausalLM:
    """The gpt-oss of `shape` with random weights allocated once on `device`; experts MXFP4 (ours) or bf16 (baseline)."""
    config = gpt_oss_config(shape)
    experts = config.num_local_experts
    if mode == "ours":
        shapes = {}
        for i in range(config.num_hidden_layers):
            for proj, (n, k) in expert_shapes(config).items():
                shapes[f"model.layers.{i}.mlp.experts.{proj}_blocks"] = (experts, n, k // 32, 16)
                shapes[f"model.layers.{i}.mlp.experts.{proj}_scales"] = (experts, n, k // 32)
        model = allocate(meta_model(config, shapes), dtype, device)
    else:
        with torch.device("meta"):
            model = GptOssForCausalLM(config)
        model = allocate(model, dtype, device)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mlp.experts." in name and name.endswith(PROJECTIONS):  # baseline's bf16 stacks, filled below
                continue
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=_generator(device, name, seed))
        for i, layer in enumerate(model.model.layers):
            for proj, (n, k) in expert_shapes(config).items():
                blocks, scales = random_mxfp4(f"model.layers.{i}.mlp.experts.{proj}", n, k, experts, device, seed)
                if mode == "ours":
                    getattr(layer.mlp.experts, f"{proj}_blocks").copy_(blocks)
                    getattr(layer.mlp.experts, f"{proj}_scales").copy_(scales)
                    continue
                stack = getattr(layer.mlp.experts, proj)  # transformers keeps W_e transposed: [E, K, N]
                for e in range(experts):  # one expert at a time: never a float copy of the whole stack
                    stack[e].copy_(dequantize(blocks[e], scales[e], dtype).T)
    return model.eval()


def as_policy(model: GptOssForCausalLM, mode: str, settings: Settings) -> PeftModel:
    """`model` set up as TRL's GRPOTrainer trains it: fused LM head, LoRA, non-reentrant gradient checkpointing.

    LoRA r on attention, and on the experts when `settings.lora_experts`: ours through rl/policy.py's config (our
    PEFT layer on Mxfp4Experts), the baseline through PEFT `target_parameters` as PEFT documents it for gpt-oss.
    """
    targets = ATTENTION + (["experts"] if settings.lora_experts and mode == "ours" else [])
    if mode == "ours":
        config = lora_config(TrainConfig(lora_r=settings.rank, lora_alpha=2 * settings.rank,
                                         lora_target_modules=targets))
    else:
        expert_params = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if settings.lora_experts else None
        config = LoraConfig(r=settings.rank, lora_alpha=2 * settings.rank, target_modules=targets,
                            target_parameters=expert_params, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    from trl.trainer.utils import add_fused_lm_head  # imports datasets: only when a model is made

    add_fused_lm_head(model)  # before PEFT wraps it, as TRL does
    if mode == "ours":
        use_chunked_attention(model)  # the baseline keeps transformers' eager attention, as a user would have it
        if settings.offload_embedding:
            offload_input_embedding(model)
    if settings.load_in_4bit:
        quantize_linears(model)
    model = get_peft_model(model, config)
    adapters_to_fp32(model)  # PEFT's bitsandbytes layers make bf16 factors; both modes train float32 ones
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def float_expert_tensors(model: torch.nn.Module, shape: ModelShape) -> list[str]:
    """Names of float parameters/buffers shaped like a whole stack of expert weights (either orientation)."""
    e, h, i = shape.num_local_experts, shape.hidden_size, shape.intermediate_size
    stacks = {(e, 2 * i, h), (e, h, 2 * i), (e, i, h), (e, h, i)}
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and tuple(t.shape) in stacks]


def bytes_by_part(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of the model's GPU tensors: expert weights (MXFP4 buffers or bf16 stacks), LoRA factors, the input
    embedding table, everything else; and `host`: an input embedding table kept in host RAM (offload_embedding)."""
    parts = {"experts": 0, "lora": 0, "embedding": 0, "dense": 0}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        part = "lora" if "lora_" in name else "embedding" if "embed_tokens" in name else \
            "experts" if ".mlp.experts." in name and not name.endswith("_bias") else "dense"
        parts[part] += t.numel() * t.element_size()
    tables = [m.weight for m in model.modules() if isinstance(m, HostEmbedding)]
    return parts | {"host": sum(t.numel() * t.element_size() for t in tables)}


@dataclass
class Phase:
    seconds: float = 0.0
    peak_bytes: int | None = None
    """max_memory_allocated over the phase (None on CPU)."""


@dataclass
class Phases:
    """Seconds and peak memory per named phase; a phase measured several times (micro-batches) adds up its seconds."""

    device: torch.device
    phases: dict[str, Phase] = field(default_factory=dict)
    current: str | None = None

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.current, start = name, time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
        phase = self.phases.setdefault(name, Phase())
        phase.seconds += time.perf_counter() - start
        if cuda:
            phase.peak_bytes = max(phase.peak_bytes or 0, torch.cuda.max_memory_allocated())
        self.current = None


def generate(model: PeftModel, prompt_ids: torch.Tensor, settings: Settings, **kwargs) -> torch.Tensor:
    """`[B, P]` prompts -> `[B, P + new_tokens]`, sampled at temperature 1 with a static KV cache; `kwargs` go to
    `model.generate` (decode_speed passes a logits processor that forces the tokens)."""
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=settings.new_tokens,
        min_new_tokens=settings.new_tokens, pad_token_id=model.config.pad_token_id, cache_implementation="static",
        disable_compile=not settings.compile,  # transformers compiles a static-cache decode on CUDA by default
    )
    return model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), generation_config=config,
                          **kwargs)


def completion_logprobs(model: PeftModel, sequences: torch.Tensor, completion_tokens: int,
                        micro_batch: int) -> torch.Tensor:
    """`[B, L]` -> `[B, completion_tokens]` log-probs of the last tokens, through TRL's fused LM head, as TRL's
    `_get_per_token_logps_and_entropies` does it (labels -100 on the prompt)."""
    pieces = []
    for start in range(0, sequences.shape[0], micro_batch):
        ids = sequences[start : start + micro_batch]
        labels = ids.clone()
        labels[:, :-completion_tokens] = -100
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        pieces.append(out.log_probs[:, -completion_tokens:])
    return torch.cat(pieces)


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """TRL's default (scale_rewards="group"): reward minus its group's mean, over the group's std + 1e-4."""
    grouped = rewards.view(-1, group)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    return advantages.flatten()


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, epsilon: float, beta: float, num_tokens: float) -> torch.Tensor:
    """TRL 1.16 GRPOTrainer._compute_loss for loss_type="dapo", token-level ratios, symmetric clip, k3 KL. It is a
    trainer method, not an importable function, hence these lines; `num_tokens` counts the whole batch's completion
    tokens, so the micro-batches' losses add up to the batch's loss."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta:
        per_token = per_token + beta * (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1)
    return (per_token * mask).sum() / num_tokens


def grpo_step(model: PeftModel, optimizer: torch.optim.Optimizer, settings: Settings, vocab: int,
              phases: Phases) -> dict:
    """One GRPO step on random prompts and random rewards; returns the loss, the grad norm, and (as tensors on the
    CPU) the sampled sequences with their reference log-probs, for the other mode to score."""
    device = phases.device
    cpu = torch.Generator().manual_seed(settings.seed)
    prompts = random_ids(vocab, (settings.prompts, settings.prompt_tokens), cpu)
    prompt_ids = prompts.repeat_interleave(settings.group, dim=0).to(device)  # (B, P): a group per prompt
    model.eval()
    torch.manual_seed(settings.seed)
    with torch.no_grad(), phases.measure("generation"):
        sequences = generate(model, prompt_ids, settings)
    new = sequences.shape[1] - settings.prompt_tokens
    mask = torch.ones(settings.batch, new, device=device)  # no stop token: every position is a completion token
    with torch.no_grad(), phases.measure("old_logprobs"):
        old = completion_logprobs(model, sequences, new, settings.micro_batch)
    with torch.no_grad(), model.disable_adapter(), phases.measure("ref_logprobs"):
        ref = completion_logprobs(model, sequences, new, settings.micro_batch)
    advantages = group_advantages(torch.randn(settings.batch, generator=cpu), settings.group).to(device)
    model.train()
    loss_sum = 0.0
    for start in range(0, settings.batch, settings.micro_batch):
        rows = slice(start, start + settings.micro_batch)
        with phases.measure("loss"):
            logps = completion_logprobs(model, sequences[rows], new, settings.micro_batch)
            loss = grpo_loss(logps, old[rows], ref[rows], advantages[rows], mask[rows], settings.epsilon,
                             settings.beta, float(mask.sum()))
        with phases.measure("backward"):
            loss.backward()
        loss_sum += loss.item()
    params = [p for p in model.parameters() if p.requires_grad]
    with phases.measure("optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return dict(loss=loss_sum, grad_norm=float(grad_norm), new_tokens=new, sequences=sequences.cpu(),
                ref_logprobs=ref.float().cpu())


def weights_estimate(shape: ModelShape, mode: str) -> float:
    """Bytes of the model's weights before LoRA: experts at 4.25 bits (ours) or bf16 (baseline), the rest bf16."""
    counts = param_counts(shape)
    return counts.experts * (MXFP4_BITS / 8 if mode == "ours" else 2) + counts.dense * 2


def decode_floor(shape: ModelShape, parts: dict[str, int], settings: Settings, hbm_bytes_per_s: float) -> dict:
    """Decode tokens/s per sequence that the bytes one decode step must read allow, at the mean context length.

    `experts_kv`: every expert's weights (at batch 32 x top-4 nearly all experts are routed to) plus the KV cache the
    batch attends to (sliding layers at most the window). `all_weights_kv` adds everything else read per step:
    attention, router, norms, LM head and LoRA factors (not the embedding table, of which one row per token is read).
    """
    context = settings.prompt_tokens + settings.new_tokens / 2
    kv_position = 2 * shape.num_key_value_heads * shape.head_dim * 2  # bf16 K and V of one layer
    full_layers = shape.num_hidden_layers - shape.sliding_layers
    kv = settings.batch * kv_position * (full_layers * context + shape.sliding_layers * min(context, shape.sliding_window))
    dense_read = parts["dense"] + parts["lora"]
    step = {"experts_kv": parts["experts"] + kv, "all_weights_kv": parts["experts"] + kv + dense_read}
    return {name: hbm_bytes_per_s / nbytes for name, nbytes in step.items()} | {"kv_bytes": kv}


def warm_up_settings(settings: Settings) -> Settings:
    """What a warm-up generates before a timed run: 2 new tokens compile Triton's kernels; a compiled decode is
    specialised on the static cache's length, so with `compile` the full length (its CUDA graphs are recorded then)."""
    return settings if settings.compile else dataclasses.replace(settings, new_tokens=2)


def make_optimizer(params: list[torch.nn.Parameter], settings: Settings) -> torch.optim.Optimizer:
    if settings.optim == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=settings.learning_rate)
    return torch.optim.AdamW(params, lr=settings.learning_rate)


def router_gaps(policy: PeftModel, ours: dict, bf16_router_ref: torch.Tensor, new_tokens: int,
                micro_batch: int, device: torch.device) -> dict:
    """Score ours' sequences again with the baseline's routers in float32 (as ours), adapters off.

    The two numbers size the log-prob gap between the modes: `ref_logprob_diff_vs_ours_fp32_router` leaves only the
    expert arithmetic different (our kernels against transformers' bf16 matmuls); `router_bf16_vs_fp32_gap` is the
    gap between two roundings of the baseline's own router, the same model computed two legitimate ways. A random
    24-layer MoE amplifies rounding (a different top-4 in one layer changes the rest), so the first gap is judged
    against the second, not against zero.
    """
    use_fp32_routers(policy.get_base_model())
    with torch.no_grad(), policy.disable_adapter():
        ref = completion_logprobs(policy, ours["sequences"].to(device), new_tokens, micro_batch).float().cpu()
    gaps = {"ref_logprob_diff_vs_ours_fp32_router": ref - ours["ref_logprobs"],
            "router_bf16_vs_fp32_gap": ref - bf16_router_ref}
    return {name: {"mean": g.abs().mean().item(), "max": g.abs().max().item()} for name, g in gaps.items()}


def lora_b_sums(model: torch.nn.Module) -> dict[str, float]:
    """A float64 sum per LoRA B factor: enough to tell which factors a step moved, without copying them."""
    return {name: torch.sum(p.detach(), dtype=torch.float64).item()
            for name, p in model.named_parameters() if "lora_B" in name}


def run_mode(shape: ModelShape, mode: str, settings: Settings, device: torch.device, hbm_tbs: float,
             earlier: dict | None = None) -> dict:
    """Build `mode`'s model, a warm-up step on CUDA (2 new tokens: Triton compiles there; on the CPU nothing is
    compiled), the timed step; a dict of everything measured.

    With `earlier` (the other mode's result), its sequences are scored here too with the adapters off: both modes
    hold the same base weights, so the reference log-probs must agree to bf16 noise (untimed; a correctness check of
    the MXFP4 path at full size).
    """
    result: dict = {"mode": mode, "weights_estimate_gib": weights_estimate(shape, mode) / GIB}
    if device.type == "cuda" and weights_estimate(shape, mode) > torch.cuda.get_device_properties(device).total_memory:
        result["skipped"] = f"weights alone need {result['weights_estimate_gib']:.1f} GiB: more than this GPU holds"
        return result
    phases = Phases(device)
    try:
        with phases.measure("build"):
            policy = as_policy(build_model(shape, mode, device, settings.seed), mode, settings)
        result["parts"] = bytes_by_part(policy)
        result["float_expert_tensors"] = len(float_expert_tensors(policy, shape))
        trainable = [p for p in policy.parameters() if p.requires_grad]
        result["lora_params"] = sum(p.numel() for p in trainable)
        result["lora_dtypes"] = sorted({str(p.dtype) for p in trainable})
        optimizer = make_optimizer(trainable, settings)
        if device.type == "cuda":
            with phases.measure("warm-up"):
                grpo_step(policy, optimizer, warm_up_settings(settings), shape.vocab_size, Phases(device))
        before = lora_b_sums(policy)
        result.update(grpo_step(policy, optimizer, settings, shape.vocab_size, phases))
        if earlier and "sequences" in earlier:
            policy.eval()
            with torch.no_grad(), policy.disable_adapter():
                ref = completion_logprobs(policy, earlier["sequences"].to(device), result["new_tokens"],
                                          settings.micro_batch).float().cpu()
            diff = (ref - earlier["ref_logprobs"]).abs()
            result[f"ref_logprob_diff_vs_{earlier['mode']}"] = {"mean": diff.mean().item(), "max": diff.max().item()}
            if mode == "baseline":
                result.update(router_gaps(policy, earlier, ref, result["new_tokens"], settings.micro_batch, device))
        after = lora_b_sums(policy)
        result["lora_b_factors"] = len(before)
        result["expert_lora_b_factors"] = sum(".experts." in name for name in before)
        result["lora_b_unchanged_by_step"] = [name for name in before if before[name] == after[name]]
        result["optimizer_state_bytes"] = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                                              for t in state.values() if torch.is_tensor(t))
    except torch.OutOfMemoryError as err:
        result["oom"] = f"in {phases.current}: {str(err).splitlines()[0]}"
        if device.type == "cuda":
            result["allocated_at_oom_gib"] = torch.cuda.memory_allocated() / GIB
    result["phases"] = {name: dataclasses.asdict(p) for name, p in phases.phases.items()}
    if "generation" in phases.phases and "parts" in result:
        result["decode_tokens_per_s_per_sequence"] = settings.new_tokens / phases.phases["generation"].seconds
        result["decode_floor"] = decode_floor(shape, result["parts"], settings, hbm_tbs * 1e12)
    return result


STEP = ("generation", "old_logprobs", "ref_logprobs", "loss", "backward", "optimizer")


def markdown(report: dict) -> str:
    """The report as a markdown table (phases x modes) and a few lines per mode."""
    modes = report["modes"]
    s = report["settings"]
    lines = [f"{report['device']}; torch {report['versions']['torch']}, transformers {report['versions']['transformers']},"
             f" trl {report['versions']['trl']}; gpt-oss-{report['shape']} shape, random weights; {s['prompts']} prompts"
             f" x {s['group']} completions, {s['prompt_tokens']} prompt + {s['new_tokens']} new tokens, micro-batch"
             f" {s['micro_batch']}, LoRA r{s['rank']} (experts: {s['lora_experts']}), beta {s['beta']}"
             f", compile {s['compile']}, optimizer {s['optim']}, NF4 attention {s['load_in_4bit']}, ours' input"
             f" embedding in host RAM {s['offload_embedding']}", "",
             "| phase | " + " | ".join(f"{m} s | {m} peak GiB" for m in modes) + " |",
             "|---|" + "---:|---:|" * len(modes)]
    for name in ("build", "warm-up", *STEP, "step"):
        cells = []
        for result in modes.values():
            phases = result.get("phases", {})
            if name == "step" and all(p in phases for p in STEP):
                seconds = sum(phases[p]["seconds"] for p in STEP)
                peaks = [phases[p]["peak_bytes"] for p in STEP]
                peak = max(peaks) if None not in peaks else None
            elif name in phases:
                seconds, peak = phases[name]["seconds"], phases[name]["peak_bytes"]
            else:
                cells.append("- | -")
                continue
            cells.append(f"{seconds:.2f} | " + ("-" if peak is None else f"{peak / GIB:.2f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode, r in modes.items():
        if "skipped" in r or "oom" in r:
            lines.append(f"- {mode}: {r.get('skipped') or 'OUT OF MEMORY ' + r['oom']}")
        if "parts" in r:
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["parts"].items())
            lines.append(f"- {mode}: weights GiB: {parts}; {r['lora_params'] / 1e6:.1f}M LoRA params"
                         f" {'/'.join(r['lora_dtypes'])}; float expert stacks: {r['float_expert_tensors']}")
        if "lora_b_factors" in r:
            moved = r["lora_b_factors"] - len(r["lora_b_unchanged_by_step"])
            lines.append(f"- {mode}: LoRA B factors the step moved: {moved} of {r['lora_b_factors']}"
                         f" ({r['expert_lora_b_factors']} on experts)")
        for key in [k for k in r if k.startswith("ref_logprob_diff_vs_") or k == "router_bf16_vs_fp32_gap"]:
            lines.append(f"- {mode}: reference log-probs {key}: |difference| mean {r[key]['mean']:.2g},"
                         f" max {r[key]['max']:.2g} (same base weights)")
        if "loss" in r:
            lines.append(f"- {mode}: loss {r['loss']:.4g}, grad norm {r['grad_norm']:.4g}, optimizer state"
                         f" {r['optimizer_state_bytes'] / GIB:.2f} GiB")
        if "decode_floor" in r:
            floor = r["decode_floor"]
            lines.append(f"- {mode}: decode {r['decode_tokens_per_s_per_sequence']:.1f} tokens/s per sequence at batch"
                         f" {s['prompts'] * s['group']} (generation phase incl. prefill); memory floor at"
                         f" {report['hbm_tbs']} TB/s: {floor['experts_kv']:.0f} (experts + KV),"
                         f" {floor['all_weights_kv']:.0f} (all weights + KV)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="20b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["ours", "baseline", "both"], default="both")
    for name in DEFAULTS["20b"]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="default: per shape, see DEFAULTS")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-lora-experts", dest="lora_experts", action="store_false", help="LoRA on attention only")
    parser.add_argument("--compile", action="store_true", help="let generate torch.compile the decode (CUDA graphs)")
    parser.add_argument("--optim", choices=["adamw", "adamw_8bit"], default="adamw")
    parser.add_argument("--load-in-4bit", action="store_true", help="NF4 attention projections (bitsandbytes)")
    parser.add_argument("--offload-embedding", action="store_true", help="ours: input embedding table in host RAM")
    parser.add_argument("--moe-pass-tokens", type=int, default=moe.TOKENS_PER_PASS,
                        help="ours: most tokens the experts take in one pass (rl/moe.py)")
    parser.add_argument("--hbm-tbs", type=float, default=3.35, help="HBM bandwidth for the floor (H100 SXM: 3.35)")
    parser.add_argument("--json", type=Path, help="write the report here (rewritten after each mode)")
    args = parser.parse_args(argv)
    moe.TOKENS_PER_PASS = args.moe_pass_tokens
    given = {name: getattr(args, name) for name in DEFAULTS[args.shape] if getattr(args, name) is not None}
    settings = Settings(**(DEFAULTS[args.shape] | given), rank=args.rank, lora_experts=args.lora_experts,
                        compile=args.compile, optim=args.optim, load_in_4bit=args.load_in_4bit,
                        offload_embedding=args.offload_embedding)
    device = torch.device(args.device)
    import trl

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "shape": args.shape, "settings": dataclasses.asdict(settings), "hbm_tbs": args.hbm_tbs, "modes": {},
    }
    earlier = None
    for mode in ["ours", "baseline"] if args.mode == "both" else [args.mode]:
        result = run_mode(SHAPES[args.shape], mode, settings, device, args.hbm_tbs, earlier)
        earlier = result.copy()
        for tensors in ("sequences", "ref_logprobs"):
            result.pop(tensors, None)
        report["modes"][mode] = result
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
