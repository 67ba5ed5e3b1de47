"""The gpt-oss-shaped models the GPU benches build (bench/full_step.py, bench/decode_speed.py): shapes, random weights
made on the device, the two modes, the LoRA policy as TRL trains it, and its sampling.

    ours      experts drawn as random MXFP4 codes/scales straight into the uint8 buffers of `Mxfp4Experts` (no float
              expert tensor ever exists), fp32 router, our Triton kernels; LoRA (PEFT) on attention and experts
              (rl/moe_lora.py)
    baseline  what a TRL + PEFT user runs today: the same experts dequantised to bf16 in transformers' GptOssExperts
              and LoRA on them through PEFT `target_parameters` (which adds B A to the whole expert weight on every
              forward), transformers' router

Both modes draw every tensor from a generator seeded by its name, so they hold the same weights.
"""

import dataclasses
import zlib
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.rl.attention import use_chunked_attention
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.gpt_oss_loader import allocate, meta_model
from oss_grpo.rl.host_embedding import HostEmbedding, offload_input_embedding
from oss_grpo.rl.memory import RELEASED, ModelShape
from oss_grpo.rl.moe import PROJECTIONS
from oss_grpo.rl.nf4 import adapters_to_fp32, quantize_linears
from oss_grpo.rl.policy import lora_config
from oss_grpo.rl.sampling_adapters import adapters_in_model_dtype
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
    fp32_sampling_adapters: bool = False
    """Sample with the LoRA factors in float32, as the generator did before rl/sampling_adapters.py (a baseline)."""
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


def generate(model: PeftModel, prompt_ids: torch.Tensor, settings: Settings, **kwargs) -> torch.Tensor:
    """`[B, P]` prompts -> `[B, P + new_tokens]`, sampled at temperature 1 with a static KV cache; `kwargs` go to
    `model.generate` (decode_speed passes a logits processor that forces the tokens)."""
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=settings.new_tokens,
        min_new_tokens=settings.new_tokens, pad_token_id=model.config.pad_token_id, cache_implementation="static",
        disable_compile=not settings.compile,  # transformers compiles a static-cache decode on CUDA by default
    )
    with nullcontext() if settings.fp32_sampling_adapters else adapters_in_model_dtype(model):  # as the generator
        return model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                              generation_config=config, **kwargs)


def warm_up_settings(settings: Settings) -> Settings:
    """What a warm-up generates before a timed run: 2 new tokens compile Triton's kernels; a compiled decode is
    specialised on the static cache's length, so with `compile` the full length (its CUDA graphs are recorded then)."""
    return settings if settings.compile else dataclasses.replace(settings, new_tokens=2)
