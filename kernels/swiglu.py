"""The gpt-oss clamped SwiGLU, on gate/up columns interleaved as the checkpoints store them, forward and backward.

    gate = h[..., 0::2].clamp(max=limit),  up = h[..., 1::2].clamp(-limit, limit)
    out  = (up + 1) * gate * sigmoid(alpha * gate)            alpha = 1.702, limit = 7 in gpt-oss

The clamps bound the expert's intermediate activations (|out| <= 8 * 7), which is what keeps a bf16 MoE finite.

`swiglu_torch` is the reference: float32 math, the result in the input dtype. In torch that math materialises a
float32 copy of h and four or five float32 [rows, I] temporaries, and autograd keeps most of them for the backward:
at a gpt-oss-20b prefill of 4,096 tokens (16,384 routed rows x 2,880) each is 189 MB. `swiglu` runs the same math
in one Triton pass per direction (CUDA, or the interpreter), reading h and writing the result in h's dtype, and saves
only h for the backward, which recomputes the rest. The derivatives, with s = sigmoid(alpha * gate):

    d gate = d out * (up + 1) * s * (1 + alpha * gate * (1 - s))   where h_gate <= limit, else 0
    d up   = d out * gate * s                                      where -limit <= h_up <= limit, else 0

(torch's clamp passes the gradient at the bounds themselves too, and so do these.)
"""

import torch
import triton
import triton.language as tl

from oss_grpo.kernels import _mxfp4_matmul as jit
from oss_grpo.kernels.mxfp4_matmul import runs_triton

ALPHA = 1.702
LIMIT = 7.0
BLOCK = 1024
"""Outputs per program: an elementwise pass, memory-bound; not tuned (bench/mxfp4_matmul.py times it, on no GPU yet)."""


def swiglu_torch(gate_up: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT) -> torch.Tensor:
    """`[..., 2I]` interleaved (gate, up) pairs -> `[..., I]`, in plain differentiable torch."""
    h = gate_up.to(torch.promote_types(gate_up.dtype, torch.float32))
    gate = h[..., 0::2].clamp(max=limit)
    up = h[..., 1::2].clamp(min=-limit, max=limit)
    return ((up + 1) * gate * torch.sigmoid(alpha * gate)).to(gate_up.dtype)


@triton.jit
def _gate_up(H, offs, mask, limit):
    """Output i's (gate, up) pair, h[2i] and h[2i + 1], in float32: as loaded, and clamped (a NaN stays NaN)."""
    h_gate = tl.load(H + 2 * offs, mask=mask, other=0.0).to(tl.float32)
    h_up = tl.load(H + 2 * offs + 1, mask=mask, other=0.0).to(tl.float32)
    gate = tl.minimum(h_gate, limit, propagate_nan=tl.PropagateNan.ALL)
    up = tl.minimum(tl.maximum(h_up, -limit, propagate_nan=tl.PropagateNan.ALL), limit,
                    propagate_nan=tl.PropagateNan.ALL)
    return h_gate, h_up, gate, up


@triton.jit
def _swiglu_kernel(H, OUT, n, alpha, limit, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    _, _, gate, up = _gate_up(H, offs, mask, limit)
    out = (up + 1.0) * gate * tl.sigmoid(alpha * gate)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(H, DOUT, DH, n, alpha, limit, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    h_gate, h_up, gate, up = _gate_up(H, offs, mask, limit)
    dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(alpha * gate)
    d_gate = tl.where(h_gate <= limit, dout * (up + 1.0) * s * (1.0 + alpha * gate * (1.0 - s)), 0.0)
    d_up = tl.where((h_up >= -limit) & (h_up <= limit), dout * gate * s, 0.0)
    tl.store(DH + 2 * offs, d_gate.to(DH.dtype.element_ty), mask=mask)
    tl.store(DH + 2 * offs + 1, d_up.to(DH.dtype.element_ty), mask=mask)


def _stored_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the kernels write: `dtype`, but float32 under the interpreter, whose float32 -> bf16 stores truncate
    (~half of all values 1 ulp off; a GPU rounds to nearest even), so that torch does that rounding there."""
    return torch.float32 if jit.INTERPRETED else dtype


class _Swiglu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate_up, alpha, limit):  # type: ignore[override]
        h = gate_up.contiguous()
        out = torch.empty(*h.shape[:-1], h.shape[-1] // 2, dtype=_stored_dtype(h.dtype), device=h.device)
        _swiglu_kernel[(triton.cdiv(out.numel(), BLOCK),)](h, out, out.numel(), alpha, limit, BLOCK=BLOCK)
        ctx.save_for_backward(h)
        ctx.alpha, ctx.limit = alpha, limit
        return out.to(h.dtype)

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        (h,) = ctx.saved_tensors
        dh = torch.empty(h.shape, dtype=_stored_dtype(h.dtype), device=h.device)
        n = dout.numel()
        _swiglu_backward_kernel[(triton.cdiv(n, BLOCK),)](h, dout.contiguous(), dh, n, ctx.alpha, ctx.limit,
                                                          BLOCK=BLOCK)
        return dh.to(h.dtype), None, None


def swiglu(gate_up: torch.Tensor, alpha: float = ALPHA, limit: float = LIMIT) -> torch.Tensor:
    """`[..., 2I]` interleaved (gate, up) pairs -> `[..., I]` in gate_up's dtype; differentiable. One Triton pass each
    way on CUDA or under TRITON_INTERPRET=1 (bf16/fp32), `swiglu_torch` otherwise."""
    if gate_up.shape[-1] % 2:
        raise ValueError(f"gate_up {tuple(gate_up.shape)}: the last dimension holds (gate, up) pairs, so it is even")
    if runs_triton(gate_up):
        return _Swiglu.apply(gate_up, float(alpha), float(limit))
    return swiglu_torch(gate_up, alpha, limit)
