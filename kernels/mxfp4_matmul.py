"""Grouped MoE expert GEMMs on MXFP4 weights: the public ops, each next to its plain-torch reference.

    mxfp4_matmul(x, blocks, scales, groups, bias, lora)  y  = x W_e^T + b_e (+ s (x A_e^T) B_e^T)   (forward)
    mxfp4_matmul_transposed(dy, blocks, scales, groups, lora)  dx = dy W_e (+ (s dy B_e) A_e)  (grad wrt the input)

Rows of x are sorted by expert (routing.sort_by_expert); `blocks`/`scales` are one projection of every expert in the
checkpoint layout (mxfp4.py). The Triton path runs on CUDA, and on CPU under TRITON_INTERPRET=1 (tests); otherwise,
and for float64, the `_torch` reference runs: a loop over experts, each dequantised to x.dtype for its matmul.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from oss_grpo.kernels import _mxfp4_matmul as jit
from oss_grpo.kernels.mxfp4 import BLOCK, dequantize
from oss_grpo.kernels.routing import ExpertGroups


class Tiles(NamedTuple):
    """One launch configuration: the tile shape and Triton's warps per program and software-pipelining depth."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    scaled: bool = False
    """Forward by tl.dot_scaled (bf16 x only, `native_mx`) instead of the in-register dequantising "wx" kernel."""
    swizzled: bool = False
    """The wx forward reads the codes in `swizzle_k` order (x copied into that order first)."""
    weights_right: bool = False
    """The wx forward with the decoded weights as the dot's right operand, read from shared memory like x (W_RIGHT):
    x is read as it is, so it needs no swizzled copy."""
    word_scales: bool = True
    """Padded scales (`pad_scales`) read as 32-bit words, which Triton pipelines: 1.04-1.14x faster on the H100 for
    every tile but dX's two-warp one, 1.09x slower (docs/BENCHMARKS.md, session 20)."""


# Picked on an H100 by bench/mxfp4_tune.py (gpt-oss-20b gate_up, docs/BENCHMARKS.md), by the mean routed rows per
# expert: every tile of an expert re-reads (and re-dequantises) that expert's weights, so few rows want short tiles
# and many rows long ones. Each entry serves mean rows per expert below its bound. Below 16 rows per expert (measured
# at 0.5 to 8) two warps per program were fastest, whose dots are mma.sync instead of a warpgroup's wgmma: at 4 rows
# per expert, a batch-32 decode step, the forward 1.29x faster than one warpgroup (2026-12-06, session 11). From 24
# rows per expert, eight warps reading the codes in swizzled order (`swizzle_k`): 1.07-1.19x faster than the best
# unswizzled tile at 32 to 512 rows per expert (session 12); swizzled two-warp tiles lose (one-byte loads come back).
# At 16 rows per expert two warps still won (236 against 268 us) and at 32 lost (327 against 276): the bound between
# them, 24, is the midpoint, not measured. From 64 rows per expert the weights on the right (`Tiles.weights_right`),
# which read x unswizzled: as fast at 128 rows per expert and 1.07x faster at 512, where swizzling x copies 94 MB
# (session 20). dX (reduce over N): two warps below 16 rows per expert; at 128 rows per expert the 64-row tile beat
# the 128-row one by 1.12x (583.5 against 653.7 us, session 20), at 512 lost by 1.06x: the bound, 256, is between.
FORWARD_TILES = (
    (16, Tiles(16, 32, 128, 2, 3)),
    (24, Tiles(32, 64, 128, 2, 4)),
    (64, Tiles(64, 128, 128, 8, 4, swizzled=True)),
    (float("inf"), Tiles(128, 128, 64, 8, 4, weights_right=True)),
)
TRANSPOSED_TILES = (
    (16, Tiles(16, 64, 128, 2, 4, word_scales=False)),
    (256, Tiles(64, 64, 128, 4, 3)),
    (float("inf"), Tiles(128, 64, 128, 4, 3)),
)
NATIVE_MX_TILES = Tiles(128, 128, 128, 8, 3, scaled=True)
"""The forward from 64 rows per expert on GPUs whose tensor cores take MXFP4 (compute capability 10 and up), where
tl.dot_scaled is native. Not measured here: no such GPU is lent; on the H100, which emulates it, the wx kernel is
1.26x faster at 128 rows per expert."""


def pick_tiles(table: tuple[tuple[float, Tiles], ...], groups: ExpertGroups) -> Tiles:
    """The entry of `table` for the mean rows per expert, known on the host (no sync)."""
    per_expert = groups.num_rows / groups.num_experts
    return next(tiles for bound, tiles in table if per_expert < bound)


def _bf16_on_gpu(x: torch.Tensor, min_major: int) -> bool:
    """True for bf16 on a GPU of compute capability `min_major` or later."""
    return x.dtype == torch.bfloat16 and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= min_major


def native_mx(x: torch.Tensor) -> bool:
    """True for bf16 on a GPU whose tensor cores multiply MXFP4 (Blackwell and later)."""
    return _bf16_on_gpu(x, 10)


def forward_tiles(x: torch.Tensor, groups: ExpertGroups) -> Tiles:
    """The forward's kernel and tile for `groups`: `FORWARD_TILES`, or tl.dot_scaled's where it is native."""
    tiles = pick_tiles(FORWARD_TILES, groups)
    return NATIVE_MX_TILES if native_mx(x) and tiles is FORWARD_TILES[-1][1] else tiles


def runs_triton(x: torch.Tensor) -> bool:
    """The Triton kernels serve bf16/fp32 on CUDA or under the interpreter; anything else takes the reference."""
    return x.dtype in (torch.bfloat16, torch.float32) and (x.is_cuda or jit.INTERPRETED)


def packed_dequant(x: torch.Tensor) -> bool:
    """Decode two codes per instruction (PTX bf16x2: _e2m1._e2m1_bytes_to_bf16, _e2m1_pairs_to_bf16) and wait
    for each step's wgmmas (_settled): bf16 on compute capability 9+ (mul.bf16x2 needs it; the interpreter runs PTX
    only in the tests, emulated). Bit for bit the same results as the float32 decoding; on the H100 dX 1.04-1.38x
    faster (session 10), the forward 1.03-1.13x with the codes in k order (session 17; docs/BENCHMARKS.md)."""
    return _bf16_on_gpu(x, 9)


def dot_dtype(x: torch.Tensor) -> tl.dtype:
    """bf16 tiles go to tl.dot as bf16 on a GPU, as float32 under the interpreter (see _mxfp4_matmul.py)."""
    return tl.bfloat16 if x.dtype == torch.bfloat16 and not jit.INTERPRETED else tl.float32


def pad_scales(scales: torch.Tensor) -> torch.Tensor:
    """`scales [..., G]` stored in rows of a multiple of 4 bytes (a view of the first G; the padding 127, 2^0), which
    the kernels read as 32-bit words (`scale_words`). gpt-oss: G = 90 -> 92, 2% more scale bytes."""
    g = scales.shape[-1]
    padded = scales.new_full((*scales.shape[:-1], -(-g // 4) * 4), 127)
    padded[..., :g] = scales
    return padded[..., :g]


def scale_words(scales: torch.Tensor) -> bool:
    """Whether the kernels may read `scales [E, N, G]` as the 32-bit words that hold them (SCALE_WORDS in
    _mxfp4_matmul.py): rows 4-byte aligned with room for their bytes up to a multiple of 4 (`pad_scales` makes them;
    the padding must hold scales the kernels decode, 127). Strides and offset only, which a compiled graph knows
    (storages start aligned)."""
    row = -(-scales.shape[2] // 4) * 4
    return (scales.stride(2) == 1 and scales.stride(1) >= row and scales.stride(1) % 4 == 0
            and scales.stride(0) % 4 == 0 and scales.storage_offset() % 4 == 0)


def swizzle_k(x: torch.Tensor) -> torch.Tensor:
    """x's columns in the order a swizzled wx kernel reads W's codes: within each 32, the 8 column pairs as a 4 x 4
    matrix, transposed (pair 4a + b <- pair 4b + a; its own inverse).

    Why: in the dot's register layout a thread holds columns 2q, 2q + 1, 2q + 8 and 2q + 9 of every 16, so of each
    16-byte group of codes bytes q, q + 4, q + 8 and q + 12, which the compiled kernel loads one byte at a time. Read in
    this order (a reshape in the kernel that costs nothing) its 4 bytes are adjacent, one load; a sum over k does not
    care about the order as long as x follows it, and copying x costs far less than re-laying out the weights. On
    sm_90, compiled on the CPU, one-warpgroup tiles lose 16-64 one-byte loads a step and 30-71 of their registers;
    two-warp tiles gain one-byte loads instead, so the tile table says which tiles take it.
    """
    m, k = x.shape
    return x.reshape(m, k // 32, 4, 4, 2).transpose(2, 3).reshape(m, k)


def _check(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, groups: ExpertGroups, k: int) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"not an MXFP4 pair: blocks {blocks.dtype} {tuple(blocks.shape)}, scales {scales.dtype}")
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] != groups.num_rows:
        raise ValueError(f"x {tuple(x.shape)} does not match {groups.num_rows} routed rows of width {k}")
    if blocks.shape[0] != groups.num_experts:
        raise ValueError(f"{blocks.shape[0]} experts in the weights, {groups.num_experts} in the groups")


class LoraProduct(NamedTuple):
    """LoRA's second product on the experts, s (x A_e^T) B_e^T, for `mxfp4_matmul` to add into the outputs it makes."""

    xa: torch.Tensor
    """`[M, r]` x A_e^T for each row, x's dtype"""
    b: torch.Tensor
    """`[E, N, r]` B_e, any strides (rounded to x's dtype as it loads)"""
    scaling: float


def mxfp4_matmul(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    bias: torch.Tensor | None = None,
    lora: LoraProduct | None = None,
) -> torch.Tensor:
    """`x [M, K]` sorted by expert, `blocks [E, N, K/32, 16]`, `scales [E, N, K/32]`, `bias [E, N]` -> `[M, N]`,
    plus `lora`'s product when given (in the kernel's epilogue: no launch and no pass over [M, N] of its own).

    The output has x's dtype; accumulation is float32.
    """
    num_experts, n, k_blocks, _ = blocks.shape
    k = k_blocks * BLOCK
    _check(x, blocks, scales, groups, k)
    _check_lora(lora, x.shape[0], num_experts, n)
    if not runs_triton(x):
        return mxfp4_matmul_torch(x, blocks, scales, groups, bias, lora)
    w = blocks.reshape(num_experts, n, k // 2)  # a view for checkpoint tensors: the bytes of a row are contiguous
    y = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    tiles = forward_tiles(x, groups)
    grid = (triton.cdiv(n, tiles.block_n), groups.row_tiles(tiles.block_m))  # columns fastest: x stays in L2
    tables = (x if bias is None else bias, groups.offsets, groups.num_experts)
    strides = (w.stride(0), w.stride(1), scales.stride(0), scales.stride(1), 0 if bias is None else bias.stride(0))
    lora_args, lora_constants = _lora_args(lora, x)
    launch = dict(BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, E_PAD=groups.padded_experts,
                  num_warps=tiles.num_warps, num_stages=tiles.num_stages, HAS_BIAS=bias is not None,
                  DOT_DTYPE=dot_dtype(x), **lora_constants)  # fmt: skip
    x = swizzle_k(x) if tiles.swizzled else x.contiguous()
    if tiles.scaled:
        jit._mxfp4_scaled_kernel[grid](x, y, w, scales, *tables, n, k, x.stride(0), y.stride(0), *strides, *lora_args,
                                       **launch)  # fmt: skip
        return y
    jit._mxfp4_wx_kernel[grid](
        x, y, w, scales, *tables, n, k // 2, x.stride(0), y.stride(0), *strides, *lora_args,
        PACKED=packed_dequant(x), SWIZZLED=tiles.swizzled, W_RIGHT=tiles.weights_right,
        SCALE_WORDS=tiles.word_scales and scale_words(scales), **launch,
    )  # fmt: skip
    return y


def _check_lora(lora: LoraProduct | None, rows: int, num_experts: int, n: int) -> None:
    if lora is not None and (lora.xa.shape[0] != rows or lora.b.shape[:2] != (num_experts, n)
                             or lora.b.shape[2] != lora.xa.shape[1]):  # fmt: skip
        raise ValueError(f"LoRA xa {tuple(lora.xa.shape)} and B {tuple(lora.b.shape)} do not match a [{rows}, {n}] "
                         f"product of {num_experts} experts")


def _lora_args(lora: LoraProduct | None, x: torch.Tensor) -> tuple[tuple, dict]:
    """The kernels' LoRA arguments (XA, LB, R, their strides, the scale) and constants; without LoRA, placeholders
    they never read, and R_PAD fixed so that the launch compiles once."""
    xa, b, scaling = lora if lora is not None else (x[:, :1], x.unsqueeze(0), 0.0)
    xa = xa.to(x.dtype)
    r_pad = max(16, triton.next_power_of_2(xa.shape[1]))  # tl.dot's smallest side
    return (xa, b, xa.shape[1], xa.stride(0), *b.stride(), scaling), dict(HAS_LORA=lora is not None, R_PAD=r_pad)


def mxfp4_matmul_torch(
    x: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    bias: torch.Tensor | None = None,
    lora: LoraProduct | None = None,
) -> torch.Tensor:
    """Reference for `mxfp4_matmul`: per expert, dequantise W_e to x.dtype and matmul (differentiable in x)."""
    pieces = []
    for e, rows in enumerate(groups.segments()):
        y = x[rows] @ dequantize(blocks[e], scales[e], x.dtype).T
        pieces.append(y if lora is None else y + _lora_term(lora, e, rows, x.dtype))
    y = torch.cat(pieces)
    if bias is not None:
        row_expert = torch.repeat_interleave(groups.offsets.diff(), output_size=groups.num_rows)
        y = y + bias.to(x.dtype)[row_expert]
    return y


def mxfp4_matmul_transposed(
    dy: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    lora: LoraProduct | None = None,
) -> torch.Tensor:
    """`dy [M, N]` sorted by expert -> `dx [M, K]` = dy W_e per row: the gradient of `mxfp4_matmul` wrt x; plus
    `lora`'s product (xa = s dy B_e, b = A_e^T [E, K, r]) when given, added in the kernel's epilogue."""
    num_experts, n, k_blocks, _ = blocks.shape
    k = k_blocks * BLOCK
    _check(dy, blocks, scales, groups, n)
    _check_lora(lora, dy.shape[0], num_experts, k)
    if not runs_triton(dy):
        return mxfp4_matmul_transposed_torch(dy, blocks, scales, groups, lora)
    dy = dy.contiguous()
    w = blocks.reshape(num_experts, n, k // 2)
    dx = torch.empty(dy.shape[0], k, dtype=dy.dtype, device=dy.device)
    tiles = pick_tiles(TRANSPOSED_TILES, groups)
    grid = (triton.cdiv(k, tiles.block_k), groups.row_tiles(tiles.block_m))
    lora_args, lora_constants = _lora_args(lora, dy)
    jit._mxfp4_wx_transposed_kernel[grid](
        dy, dx, w, scales, groups.offsets, groups.num_experts,
        n, k // 2,
        dy.stride(0), dx.stride(0), w.stride(0), w.stride(1), scales.stride(0), scales.stride(1), *lora_args,
        DOT_DTYPE=dot_dtype(dy), PACKED=packed_dequant(dy), SCALE_WORDS=tiles.word_scales and scale_words(scales),
        E_PAD=groups.padded_experts,
        **lora_constants,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return dx


def mxfp4_matmul_transposed_torch(
    dy: torch.Tensor,
    blocks: torch.Tensor,
    scales: torch.Tensor,
    groups: ExpertGroups,
    lora: LoraProduct | None = None,
) -> torch.Tensor:
    """Reference for `mxfp4_matmul_transposed`."""
    pieces = []
    for e, rows in enumerate(groups.segments()):
        dx = dy[rows] @ dequantize(blocks[e], scales[e], dy.dtype)
        pieces.append(dx if lora is None else dx + _lora_term(lora, e, rows, dy.dtype))
    return torch.cat(pieces)


def _lora_term(lora: LoraProduct, expert: int, rows: slice, dtype: torch.dtype) -> torch.Tensor:
    """The references' LoRA product for one expert's rows."""
    return lora.scaling * (lora.xa[rows].to(dtype) @ lora.b[expert].to(dtype).T)
