"""Grouped GEMMs on small dense per-expert matrices (the LoRA factors of the experts), next to their references.

    grouped_matmul(x, v, groups)  y[r] = x[r] V_e           for the rows r of expert e; V [E, K, N], any strides
    grouped_outer(a, b, groups)   G[e] = a[rows_e]^T b[rows_e]  -> [E, P, Q] float32, zeros for an empty expert

LoRA on an expert, y += s (x A_e^T) B_e^T, is two `grouped_matmul`s forward and two backward (V = A^T, B^T, B, A: all
strided views, nothing copied); dA and dB are `grouped_outer`s. Neither gathers a per-row weight ([T*k, r, K] would
be 1.5 GB at 4096 tokens) nor loops over experts. Same dispatch as mxfp4_matmul: Triton on CUDA or under
TRITON_INTERPRET=1 for bf16/fp32, the reference otherwise.
"""

import torch
import triton

from oss_grpo.kernels import _mxfp4_matmul as jit
from oss_grpo.kernels.mxfp4_matmul import dot_dtype, runs_triton
from oss_grpo.kernels.routing import ExpertGroups

# A LoRA rank (8..64) fits one tile, masked; the GPU tuning is left to bench/mxfp4_matmul.py like the MXFP4 tiles.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64


def grouped_matmul(x: torch.Tensor, v: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """`x [M, K]` sorted by expert, `v [E, K, N]` -> `[M, N]` in x.dtype (v is cast to x.dtype first: it is small)."""
    if x.shape != (groups.num_rows, v.shape[1]) or v.shape[0] != groups.num_experts:
        raise ValueError(f"x {tuple(x.shape)} and v {tuple(v.shape)} do not match {groups}")
    if not runs_triton(x):
        return grouped_matmul_torch(x, v, groups)
    x, v = x.contiguous(), v.to(x.dtype)
    n, k = v.shape[2], v.shape[1]
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    tile_expert, tile_row = groups.tiles(BLOCK_M)
    grid = (triton.cdiv(n, BLOCK_N), tile_expert.numel())
    jit._grouped_matmul_kernel[grid](
        x, y, v, groups.offsets, tile_expert, tile_row,
        n, k,
        x.stride(0), y.stride(0), v.stride(0), v.stride(1), v.stride(2),
        DOT_DTYPE=dot_dtype(x), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return y


def grouped_matmul_torch(x: torch.Tensor, v: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """Reference for `grouped_matmul`."""
    pieces = [x[rows] @ v[e].to(x.dtype) for e, rows in enumerate(groups.segments())]
    return torch.cat(pieces)


def grouped_outer(a: torch.Tensor, b: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """`a [M, P]`, `b [M, Q]` sorted by expert -> `[E, P, Q]` float32, the sum over each expert's rows of a^T b."""
    if a.shape[0] != groups.num_rows or b.shape[0] != groups.num_rows or a.dtype != b.dtype:
        raise ValueError(f"a {a.dtype} {tuple(a.shape)} and b {b.dtype} {tuple(b.shape)} do not match {groups}")
    if not runs_triton(a):
        return grouped_outer_torch(a, b, groups)
    a, b = a.contiguous(), b.contiguous()
    p, q = a.shape[1], b.shape[1]
    g = torch.empty(groups.num_experts, p, q, dtype=torch.float32, device=a.device)
    grid = (groups.num_experts, triton.cdiv(p, BLOCK_N), triton.cdiv(q, BLOCK_K))
    jit._grouped_outer_kernel[grid](
        a, b, g, groups.offsets,
        p, q,
        a.stride(0), b.stride(0), g.stride(0), g.stride(1),
        DOT_DTYPE=dot_dtype(a), BLOCK_M=BLOCK_M, BLOCK_P=BLOCK_N, BLOCK_Q=BLOCK_K,
    )  # fmt: skip
    return g


def grouped_outer_torch(a: torch.Tensor, b: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """Reference for `grouped_outer` (float64 in, float64 out; float32 otherwise)."""
    wide = torch.float64 if a.dtype == torch.float64 else torch.float32
    return torch.stack([a[rows].to(wide).T @ b[rows].to(wide) for rows in groups.segments()])
