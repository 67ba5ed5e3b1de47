"""Triton kernels for the grouped GEMMs on the experts' dense LoRA factors (grouped_matmul.py has their ops).

    _grouped_matmul_kernel   y[r, n] = s sum_k x[r, k] V_e[k, n]        V dense, any strides (x A_e^T, s dy B_e);
                             with K_SLICE < K, the sum over one K_SLICE-long slice per program on the grid's
                             third axis, into that slice's float32 partial sums
    _grouped_outer_kernel    G[e, p, q] = sum_{r in e} a[r, p] b[r, q]  the gradients of LoRA A and B

Rows are sorted by expert as for the MXFP4 kernels, and a program finds its expert and rows the same way
(_mxfp4_matmul._tile). The products with the other factor, (x A_e^T) B_e^T and (s dy B_e) A_e, are added in the MXFP4
kernels' epilogues (_mxfp4_matmul._add_lora_b).
"""

import triton
import triton.language as tl

from oss_grpo.kernels._mxfp4_matmul import _tile


@triton.jit
def _grouped_matmul_kernel(
    X, Y, V, Offsets, num_experts,
    N, K,
    stride_xm, stride_ym, stride_ve, stride_vk, stride_vn, scale, K_SLICE, stride_ys,
    DOT_DTYPE: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y = scale * x V_e, over k in [K_SLICE * split, K_SLICE * (split + 1)) into Y + split * stride_ys."""
    expert, rows, row_ok = _tile(Offsets, num_experts, BLOCK_M, E_PAD)
    if expert < 0:
        return
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    split = tl.program_id(2)
    Y += split * stride_ys
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(split * K_SLICE, tl.minimum(split * K_SLICE + K_SLICE, K), BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
        v_ptr = V + expert * stride_ve + ks[:, None] * stride_vk + cols[None, :] * stride_vn
        v = tl.load(v_ptr, mask=(ks[:, None] < K) & col_ok[None, :], other=0.0)
        acc = tl.dot(x.to(DOT_DTYPE), v.to(X.dtype.element_ty).to(DOT_DTYPE), acc, input_precision="ieee")
    y_ok = row_ok[:, None] & col_ok[None, :]
    acc *= scale
    tl.store(Y + rows[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty), mask=y_ok)


@triton.jit
def _grouped_outer_kernel(
    A, B, G, Offsets,
    P, Q,
    stride_am, stride_bm, stride_ge, stride_gp,
    DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    expert = tl.program_id(0).to(tl.int64)
    ps = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    qs = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_start = tl.load(Offsets + expert)
    row_end = tl.load(Offsets + expert + 1)
    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    for m0 in range(row_start, row_end, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        a = tl.load(A + rows[:, None] * stride_am + ps[None, :], mask=row_ok[:, None] & (ps[None, :] < P), other=0.0)
        b = tl.load(B + rows[:, None] * stride_bm + qs[None, :], mask=row_ok[:, None] & (qs[None, :] < Q), other=0.0)
        acc = tl.dot(a.trans().to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision="ieee")
    g_ok = (ps[:, None] < P) & (qs[None, :] < Q)
    tl.store(G + expert * stride_ge + ps[:, None] * stride_gp + qs[None, :], acc, mask=g_ok)
