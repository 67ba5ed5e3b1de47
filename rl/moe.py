"""The gpt-oss MoE with its experts kept in MXFP4: `Mxfp4Experts`, `Fp32Router`, and `swap_experts` to install them.

transformers' `GptOssMLP` stays: its forward calls `self.router(h)` then `self.experts(h, indices, scores)`, so we
replace those two children and nothing else (gradient checkpointing, output recording and PEFT see the usual tree).

1. Router: logits, top-k and the softmax over the k run in float32 (transformers does the softmax in bf16).
2. Experts: the frozen weights stay as the checkpoint's uint8 `*_blocks`/`*_scales` buffers (same names, so a
   checkpoint's tensors load straight in); the MoE math runs in bf16 for a bf16 model and in float32 otherwise:
   fp16-only GPUs (T4) overflow in fp16, see tests/test_moe.py. Biases stay trainable parameters.
3. LoRA on the experts comes from rl/moe_lora.py through PEFT, which passes the factors in as `lora`.
"""

from collections.abc import Mapping

import torch
from torch import nn
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts, GptOssForCausalLM, GptOssTopKRouter

from oss_grpo.kernels.expert_matmul import ExpertLora, expert_linear
from oss_grpo.kernels.mxfp4 import check_scales, quantize
from oss_grpo.kernels.mxfp4_matmul import pad_scales, scale_words
from oss_grpo.kernels.routing import ExpertGroups, route, sort_by_expert
from oss_grpo.kernels.swiglu import swiglu

PROJECTIONS = ("gate_up_proj", "down_proj")
TOKENS_PER_PASS = 1024
"""Most tokens the experts take in one pass; more are split into equal passes. Each token's routed copies hold about
180 KB of bf16/float32 temporaries at gpt-oss-20b (its k copies of the input, gate_up, swiglu and down outputs, the
reorder and the float32 combine), so a prefill of 32 x 128 prompt tokens at once would add ~750 MB to the peak of
generation; in passes of 1,024 it adds ~190 MB. Decode steps and short micro-batches are one pass."""


class Fp32Router(GptOssTopKRouter):
    """gpt-oss's router with its math in float32; a subclass so transformers still records its logits."""

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = nn.functional.linear(hidden_states.float(), self.weight.float(), self.bias.float())  # (T, E)
        indices, scores = route(logits, self.top_k)  # (T, k) each, scores float32
        return logits, scores, indices


class Mxfp4Experts(nn.Module):
    """All experts of one gpt-oss layer, weights in MXFP4: a drop-in for transformers' `GptOssExperts`.

    Buffers `<proj>_blocks [E, N, K/32, 16]` and `<proj>_scales [E, N, K/32]` hold W_e [N, K] (out, in) as the
    checkpoints do: gate_up_proj is [E, 2I, H] with gate/up interleaved along 2I, down_proj is [E, H, I]. The scales'
    rows are stored padded to a multiple of 4 bytes (`pad_scales`: K/32 = 90 -> 92 on gpt-oss), a view of the usual
    shape, so that the kernels read them as 32-bit words (1.04-1.14x faster on the H100, docs/BENCHMARKS.md).
    """

    def __init__(
        self,
        blocks: Mapping[str, torch.Tensor],
        scales: Mapping[str, torch.Tensor],
        biases: Mapping[str, torch.Tensor],
        alpha: float,
        limit: float,
    ) -> None:
        super().__init__()
        for proj in PROJECTIONS:
            if not scales[proj].is_meta:  # the loader builds on meta and checks the scales as they arrive
                check_scales(f"{proj}_scales", scales[proj])
            self.register_buffer(f"{proj}_blocks", blocks[proj])
            self.register_buffer(f"{proj}_scales", pad_scales(scales[proj]))
            self.register_parameter(f"{proj}_bias", nn.Parameter(biases[proj]))
        self.num_experts, self.hidden_size = self.down_proj_blocks.shape[:2]
        self.intermediate_size = self.down_proj_blocks.shape[2] * 32
        self.alpha, self.limit = alpha, limit

    def _apply(self, fn, recurse: bool = True) -> "Mxfp4Experts":
        """nn.Module's, then the scales padded again: a move (`.to`, `to_empty`) stores a view's bytes contiguously."""
        super()._apply(fn, recurse)
        for proj in PROJECTIONS:
            if not scale_words(scales := self._buffers[f"{proj}_scales"]):
                self._buffers[f"{proj}_scales"] = pad_scales(scales)
        return self

    @classmethod
    def from_experts(cls, experts: GptOssExperts) -> "Mxfp4Experts":
        """Quantise transformers' bf16/fp32 experts (weights stored [E, in, out]) to MXFP4, one expert at a time
        (quantize works in float64: a whole gpt-oss-20b stack at once would take 4 GB)."""
        packed = {}
        for proj in PROJECTIONS:
            pairs = [quantize(w.detach().T) for w in getattr(experts, proj)]  # w [in, out] -> W_e [out, in]
            packed[proj] = (torch.stack([b for b, _ in pairs]), torch.stack([s for _, s in pairs]))
        return cls(
            blocks={proj: packed[proj][0] for proj in PROJECTIONS},
            scales={proj: packed[proj][1] for proj in PROJECTIONS},
            biases={proj: getattr(experts, f"{proj}_bias").detach().clone() for proj in PROJECTIONS},
            alpha=experts.alpha,
            limit=experts.limit,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        router_indices: torch.Tensor,
        routing_weights: torch.Tensor,
        lora: Mapping[str, ExpertLora] | None = None,
    ) -> torch.Tensor:
        """`hidden_states [T, H]`, `router_indices [T, k]`, `routing_weights [T, k]` -> `[T, H]` in the input dtype,
        in passes of at most `TOKENS_PER_PASS` tokens."""
        passes = -(-hidden_states.shape[0] // TOKENS_PER_PASS)
        if passes <= 1:
            return self._forward(hidden_states, router_indices, routing_weights, lora)
        chunk = -(-hidden_states.shape[0] // passes)
        return torch.cat([self._forward(*parts, lora) for parts in zip(hidden_states.split(chunk),
                          router_indices.split(chunk), routing_weights.split(chunk))])

    def _forward(
        self,
        hidden_states: torch.Tensor,
        router_indices: torch.Tensor,
        routing_weights: torch.Tensor,
        lora: Mapping[str, ExpertLora] | None,
    ) -> torch.Tensor:
        compute = torch.bfloat16 if hidden_states.dtype == torch.bfloat16 else torch.float32
        lora = lora or {}
        tokens, top_k = router_indices.shape
        order = sort_by_expert(router_indices, self.num_experts)
        x = hidden_states.to(compute)[order.token]  # (T*k, H) sorted by expert
        gate_up = self._project("gate_up_proj", x, order.groups, compute, lora)  # (T*k, 2I)
        y = self._project("down_proj", swiglu(gate_up, self.alpha, self.limit), order.groups, compute, lora)  # (T*k, H)
        # Back to (token, choice) order; slot is a permutation, so every row is written and nothing needs zeroing.
        y = torch.empty_like(y).index_copy(0, order.slot, y).view(tokens, top_k, -1)
        out = torch.einsum("tkh,tk->th", y.float(), routing_weights.float())  # weighted sum over the k in float32
        return out.to(hidden_states.dtype)

    def _project(
        self, proj: str, x: torch.Tensor, groups: ExpertGroups, compute: torch.dtype, lora: Mapping[str, ExpertLora]
    ) -> torch.Tensor:
        blocks, scales = getattr(self, f"{proj}_blocks"), getattr(self, f"{proj}_scales")
        return expert_linear(x, blocks, scales, groups, getattr(self, f"{proj}_bias").to(compute), lora.get(proj))


def use_fp32_routers(model: GptOssForCausalLM) -> None:
    """Put in every layer of `model` an `Fp32Router` holding that layer's router weights, in place."""
    for layer in model.model.layers:
        old = layer.mlp.router
        layer.mlp.router = Fp32Router(model.config).to(device=old.weight.device, dtype=old.weight.dtype)
        layer.mlp.router.load_state_dict(old.state_dict())


def swap_experts(
    model: GptOssForCausalLM, checkpoint: Mapping[str, torch.Tensor] | None = None
) -> GptOssForCausalLM:
    """Give every layer of `model` an fp32 router and `Mxfp4Experts`, in place; returns the model.

    The MXFP4 tensors come from `checkpoint` (Hugging Face names, e.g.
    `model.layers.0.mlp.experts.gate_up_proj_blocks`) when it has them, else from quantising the layer's current
    experts. Biases and the swiglu constants always come from the layer.
    """
    use_fp32_routers(model)
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        prefix = f"model.layers.{i}.mlp.experts."
        if checkpoint is not None and f"{prefix}gate_up_proj_blocks" in checkpoint:
            old = mlp.experts
            device = old.gate_up_proj_bias.device
            mlp.experts = Mxfp4Experts(
                blocks={proj: checkpoint[f"{prefix}{proj}_blocks"].to(device) for proj in PROJECTIONS},
                scales={proj: checkpoint[f"{prefix}{proj}_scales"].to(device) for proj in PROJECTIONS},
                biases={proj: getattr(old, f"{proj}_bias").detach().clone() for proj in PROJECTIONS},
                alpha=old.alpha,
                limit=old.limit,
            )
        else:
            mlp.experts = Mxfp4Experts.from_experts(mlp.experts)
    return model
