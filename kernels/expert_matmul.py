"""One routed projection of every expert, y = x W_e^T + b_e + s (x A_e^T) B_e^T, as a torch.autograd.Function.

W_e is frozen MXFP4 (no gradient, never materialised); the bias b and the LoRA factors A [E, r, K], B [E, N, r]
(PEFT's per-expert orientation, A kaiming and B zero at init) are trainable. Forward: x A_e^T by grouped_matmul, then
mxfp4_matmul adds s (x A_e^T) B_e^T to the outputs it makes (`LoraProduct`). Backward:

    dx  = dy W_e  (+ s (dy B_e) A_e)     mxfp4_matmul_transposed: in-kernel dequant, tl.dot_scaled cannot do it;
                                         s dy B_e by grouped_matmul, its product with A_e added in the epilogue
    db  = sum of dy over the expert's rows
    dA  = (s dy B_e)^T x,   dB = s dy^T (x A_e^T)         grouped_outer over each expert's rows

Saved for backward: x and x A^T ([M, r]); nothing the size of a weight. `expert_linear_torch` is the same map in
plain differentiable torch on dequantised weights: the tests hold the Function's gradients against its autograd.
"""

from dataclasses import dataclass

import torch

from oss_grpo.kernels.grouped_matmul import grouped_matmul, grouped_outer
from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.kernels.mxfp4_matmul import LoraProduct, mxfp4_matmul, mxfp4_matmul_transposed
from oss_grpo.kernels.routing import ExpertGroups


@dataclass(frozen=True)
class ExpertLora:
    """LoRA factors of one projection of every expert: delta W_e = scaling * B_e @ A_e."""

    A: torch.Tensor
    """`[E, r, K]`"""
    B: torch.Tensor
    """`[E, N, r]`"""
    scaling: float


class _ExpertLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks, scales, groups, bias, lora_a, lora_b, scaling):  # type: ignore[override]
        xa = None if lora_a is None else grouped_matmul(x, lora_a.transpose(1, 2), groups)  # (M, r)
        y = mxfp4_matmul(x, blocks, scales, groups, bias, None if xa is None else LoraProduct(xa, lora_b, scaling))
        ctx.save_for_backward(x, blocks, scales, bias, xa, lora_a, lora_b)
        ctx.groups, ctx.scaling = groups, scaling
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, blocks, scales, bias, xa, lora_a, lora_b = ctx.saved_tensors
        groups: ExpertGroups = ctx.groups
        dx = dbias = d_a = d_b = None
        # s is applied to results of rank r, never to a pass over dy
        dxa = None if lora_a is None else grouped_matmul(dy, lora_b, groups, ctx.scaling)  # (M, r) = s dy B
        if ctx.needs_input_grad[0]:
            lora = None if dxa is None else LoraProduct(dxa, lora_a.transpose(1, 2), 1.0)  # dx += (s dy B) A
            dx = mxfp4_matmul_transposed(dy, blocks, scales, groups, lora)
        if bias is not None and ctx.needs_input_grad[4]:
            row_expert = torch.repeat_interleave(groups.offsets.diff(), output_size=groups.num_rows)
            dbias = torch.zeros(bias.shape, dtype=torch.float32, device=dy.device)
            dbias = dbias.index_add_(0, row_expert, dy.float()).to(bias.dtype)
        if dxa is not None:
            d_a = grouped_outer(dxa, x, groups).to(lora_a.dtype)  # (E, r, K)
            d_b = (grouped_outer(dy, xa, groups) * ctx.scaling).to(lora_b.dtype)  # (E, N, r)
        return dx, None, None, None, dbias, d_a, d_b, None


def expert_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    bias: torch.Tensor | None = None,
    lora: ExpertLora | None = None,
) -> torch.Tensor:
    """`x [M, K]` sorted by expert -> `[M, N]`; differentiable in x, bias and the LoRA factors."""
    if lora is None:
        return _ExpertLinear.apply(x, blocks, scales, groups, bias, None, None, 0.0)
    return _ExpertLinear.apply(x, blocks, scales, groups, bias, lora.A, lora.B, lora.scaling)


def expert_linear_torch(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    bias: torch.Tensor | None = None,
    lora: ExpertLora | None = None,
) -> torch.Tensor:
    """Reference for `expert_linear`: dequantised weights, one plain matmul chain per expert, autograd for the rest."""
    pieces = []
    for e, rows in enumerate(groups.segments()):
        y = x[rows] @ dequantize(blocks[e], scales[e], x.dtype).T  # W_e [N, K]
        if bias is not None:
            y = y + bias[e]
        if lora is not None:
            y = y + lora.scaling * (x[rows] @ lora.A[e].T) @ lora.B[e].T
        pieces.append(y)
    return torch.cat(pieces)
