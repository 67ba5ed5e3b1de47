"""Grouped GEMMs on small dense per-expert matrices (the LoRA factors of the experts), next to their references.

    grouped_matmul(x, v, groups)  y[r] = x[r] V_e           for the rows r of expert e; V [E, K, N], any strides
                                  (scaled)
    grouped_outer(a, b, groups)   G[e] = a[rows_e]^T b[rows_e]  -> [E, P, Q] float32, zeros for an empty expert

LoRA on an expert, y += s (x A_e^T) B_e^T, is one `grouped_matmul` forward (V = A^T) and one backward (V = B; strided
views, nothing copied): the MXFP4 kernels add the products with B and with A in their epilogues; dA and dB are
`grouped_outer`s. Neither gathers a per-row weight ([T*k, r, K] would be 1.5 GB at 4096 tokens) nor loops over experts.
Same dispatch as mxfp4_matmul: Triton on CUDA or under TRITON_INTERPRET=1 for bf16/fp32, the reference otherwise.
"""

import torch
import triton

from oss_grpo.kernels import _grouped_matmul as jit
from oss_grpo.kernels.mxfp4_matmul import dot_dtype, runs_triton
from oss_grpo.kernels.routing import ExpertGroups

# Tiles measured on an H100 (docs/BENCHMARKS.md, session 13) for LoRA r16 on the gpt-oss-20b experts, at 128 to
# 16,384 routed rows, against the 64 x 64 x 64 tiles before. grouped_matmul's products reduce either a long K to r
# outputs (x A^T, dy B: 32 rows, K by 128, 4 stages, 1.1-2.4x faster) or the rank r to N outputs ((x A^T) B^T: K one
# 16-wide tile, 1.8-1.9x faster). grouped_outer sums over rows into [r, K] or [N, r]: the narrow side one 16-wide
# tile, the wide side 128 (1.04-1.45x faster).
OUTER_BLOCK_M = 64
SPLIT_BELOW_PROGRAMS = 264
"""A product over a long K whose launch would have fewer programs than this (2 per SM of an H100) has its K split
over more programs, each summing a slice of at least 2 K steps into float32 partials that one torch sum adds up.
Why: at a decode step, x A_e^T of the 20b gate_up has 128 rows, ~35 row tiles of 32 and one column tile, and each
program walks all 2,880 of K (23 dependent steps) while most SMs idle. LoRA r16 added 26 us to the 20b gate_up and 18
us to down at 128 rows on an H100 (docs/BENCHMARKS.md, session 15, second products' launches included; those are in
the MXFP4 kernels' epilogues since), about 1 ms of a batch-32 decode token. The split is not timed yet."""


def _side(size: int, widest: int) -> int:
    """A tile side for a side of `size`: a LoRA rank (8..64) takes one tile with the least padding (16 is tl.dot's
    minimum), wider sides take `widest`."""
    return min(widest, max(16, triton.next_power_of_2(size)))


def _matmul_tile(n: int, k: int) -> dict:
    """grouped_matmul's launch for an [M, k] x [k, n] product per expert."""
    if k <= 64:  # the reduction is a LoRA rank: one K step
        return dict(BLOCK_M=64, BLOCK_N=_side(n, 64), BLOCK_K=_side(k, 64), num_warps=4, num_stages=3)
    return dict(BLOCK_M=32, BLOCK_N=_side(n, 64), BLOCK_K=128, num_warps=4, num_stages=4)


def _k_slice(k: int, block_k: int, programs: int) -> int:
    """How much of K one program of a `programs`-program launch sums: all of it, or for a long K on a launch of fewer
    than SPLIT_BELOW_PROGRAMS programs a slice of at least 2 steps, so that about that many programs run."""
    steps = triton.cdiv(k, block_k)
    slices = min(steps // 2, triton.cdiv(SPLIT_BELOW_PROGRAMS, programs)) if k > 64 else 1
    return triton.cdiv(steps, max(slices, 1)) * block_k


def grouped_matmul(x: torch.Tensor, v: torch.Tensor, groups: ExpertGroups, scale: float = 1.0) -> torch.Tensor:
    """`x [M, K]` sorted by expert, `v [E, K, N]` -> `scale * x V_e` `[M, N]` in x.dtype (v is rounded to x.dtype as
    the kernel loads it: float32 LoRA factors need no cast kernel of their own)."""
    if x.shape != (groups.num_rows, v.shape[1]) or v.shape[0] != groups.num_experts:
        raise ValueError(f"x {tuple(x.shape)} and v {tuple(v.shape)} do not match {groups}")
    n, k = v.shape[2], v.shape[1]
    if not runs_triton(x):
        return grouped_matmul_torch(x, v, groups) * scale
    x = x.contiguous()
    tile = _matmul_tile(n, k)
    grid = (triton.cdiv(n, tile["BLOCK_N"]), groups.row_tiles(tile["BLOCK_M"]))
    k_slice = _k_slice(k, tile["BLOCK_K"], grid[0] * grid[1])
    splits = triton.cdiv(k, k_slice)
    dtype = x.dtype if splits == 1 else torch.float32
    y = torch.empty(splits, x.shape[0], n, dtype=dtype, device=x.device)
    jit._grouped_matmul_kernel[(*grid, splits)](
        x, y, v, groups.offsets, groups.num_experts,
        n, k,
        x.stride(0), y.stride(1), v.stride(0), v.stride(1), v.stride(2), scale, k_slice, y.stride(0),
        DOT_DTYPE=dot_dtype(x), E_PAD=groups.padded_experts, **tile,
    )  # fmt: skip
    return y[0] if splits == 1 else y.sum(0).to(x.dtype)


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
    block_p, block_q = _side(p, 128), _side(q, 128)
    grid = (groups.num_experts, triton.cdiv(p, block_p), triton.cdiv(q, block_q))
    jit._grouped_outer_kernel[grid](
        a, b, g, groups.offsets,
        p, q,
        a.stride(0), b.stride(0), g.stride(0), g.stride(1),
        DOT_DTYPE=dot_dtype(a), BLOCK_M=OUTER_BLOCK_M, BLOCK_P=block_p, BLOCK_Q=block_q,
    )  # fmt: skip
    return g


def grouped_outer_torch(a: torch.Tensor, b: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """Reference for `grouped_outer` (float64 in, float64 out; float32 otherwise)."""
    wide = torch.float64 if a.dtype == torch.float64 else torch.float32
    return torch.stack([a[rows].to(wide).T @ b[rows].to(wide) for rows in groups.segments()])
