"""Triton kernels for grouped (routed) MoE expert GEMMs whose weights stay in MXFP4.

Math. Rows of x are token copies sorted by expert: rows offsets[e]:offsets[e+1] go to expert e (an expert may have
none). Each expert e has a weight W_e [N, K] (out, in) in MXFP4, w[n, k] = E2M1[code] * 2^(s[n, k // 32] - 127).

    _mxfp4_wx_kernel             y[r, n]  = sum_k  x[r, k] W_e[n, k] (+ bias[e, n])    forward, reduce over K
                                 (+ s sum_j xa[r, j] B_e[n, j]: LoRA's B product, xa = x A_e^T)
    _mxfp4_scaled_kernel         the same by tl.dot_scaled (bf16 x, many rows per expert; native on Blackwell)
    _mxfp4_wx_transposed_kernel  dx[r, k] = sum_n dy[r, n] W_e[n, k]                   grad wrt x, reduce over N
                                 (+ sum_j dxa[r, j] A_e[j, k]: LoRA's, dxa = s dy B_e)

The dense grouped GEMMs of the LoRA factors are in _grouped_matmul.py.

Memory layout (gpt-oss checkpoints, see mxfp4.py). `blocks [E, N, K/32, 16]` is read as bytes [E, N, K/2]: byte j of
row n holds code k = 2j in its low nibble and k = 2j + 1 in its high nibble; `scales [E, N, K/32]` one e8m0 byte per
32 codes. That is "e2m1 packed along K with scales along K", exactly what `tl.dot_scaled` takes for its rhs [K, N]
(Hopper and older emulate it by upcasting to bf16 through shared memory; Blackwell runs it natively).

The "wx" kernels dequantise in registers (_e2m1.py: exact, on compute capability 9+ two codes per instruction, each
weight times 2^-WEIGHT_SHIFT, which the kernels take back from their float32 sums) and put the weights on the LEFT of
the dot,
y^T = W_e x^T and dx^T = W_e^T dy^T: W's tile is the wgmma operand that may come from registers, and the routed rows
become the dot's N dimension, which may be as small as 16, so an expert with few rows wastes little. Each byte holds an
even and an odd code. The forward decodes them into one register in k order, so one dot per step covers BLOCK_K and x is
read as it is (SWIZZLED: W's bytes of each 16 in another order, x copied into the same by mxfp4_matmul.swizzle_k). dX
runs two dots, the even and the odd codes, into two accumulators that are different outputs (its even and odd columns,
stored apart): measured faster there than one interleaved dot, and faster than decoding W's rows as the forward does
and transposing the tile for one dot (16-byte loads, 21-35% fewer sm_90 instructions a step, yet 1.5x slower on the
H100 below 64 rows per expert and within 2% above: docs/BENCHMARKS.md, session 20).

A wgmma reads its register operand after it issues, and Triton 3.6 leaves a step's wgmmas in flight across the loop's
back edge, where ptxas may already write the next step's decoded codes into those registers: NaN in the 20b trainer
(two dots into one accumulator, 2026-12-06) and infinities at 512 rows per expert (session 17). So each step ends with
the accumulators passed through `_settled`, which makes Triton wait for the step's wgmmas (bench/sass_loop.py counts
the remaining races in the compiled loop: tests/test_kernel_sass.py wants none). Triton 3.9 waits by itself.
`tl.dot_scaled` cannot do dX at all: its scales must run along the reduction dim, and there they run along the output
dim. The fp32 path (fp16-only GPUs) is the wx kernels with float32 dots.

Tiling. A program owns BLOCK_M rows of one expert and BLOCK_N outputs; it finds which from the expert offsets alone
(_tile: a cumulative sum of the experts' tile counts in registers), so one launch covers every expert whatever the
counts, on a grid of static size, and tiles past the end exit at once. The grid's first axis is the column tile and its
second the row tile: columns vary fastest, so the programs running at once share a few row tiles of x, which stay in L2,
and stream the weights; the other order re-reads x from HBM once per column tile when x outgrows L2 (16,384 rows of
gpt-oss x are 94 MB; on the H100 the 120b forward there went from 0.56x to 0.89x of bf16). K and N need not be multiples
of the blocks (gpt-oss K = 2880 = 22.5 x 128): loads are masked, masked codes read as 0 (+0.0).

Triton 3.9's interpreter (TRITON_INTERPRET=1, CPU) feeds bf16 operands to tl.dot as their raw integer bits (values
~1e9 off), whether made in registers or loaded, so under the interpreter every tl.dot runs in float32 (DOT_DTYPE).
It runs no inline PTX either: the tests run the packed decoders there with their assembly emulated
(tests/ptx_emulator.py), so the path of every bf16 GPU run is checked on a CPU too.
tl.dot_scaled with bf16 loaded from memory is correct there. Tile shapes and the kernel per size: mxfp4_matmul.py.
"""

import triton
import triton.language as tl

from oss_grpo.kernels._e2m1 import _SCALE_OFFSET, _UNSHIFT, _e2m1_bytes_to_bf16, _e2m1_pairs_to_bf16, _e2m1_to_bf16

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)
"""True when these kernels were built by the Triton interpreter (the env var is read when @triton.jit runs)."""


@triton.jit
def _tile(Offsets, num_experts, BLOCK_M: tl.constexpr, E_PAD: tl.constexpr):
    """This program's expert (-1: nothing to do), its rows and their mask; the row tile is the grid's second axis.

    Expert e owns cdiv(count_e, BLOCK_M) consecutive tiles; tile t belongs to the first expert whose tiles end after
    t. Every program works that out from the E + 1 offsets (E_PAD: E rounded up to a power of 2) in a few dozen
    instructions, instead of reading a tile table that ~15 small torch ops per tile size built before each launch
    (host time and kernel launches that a decode step of a few rows per expert paid in every layer).
    """
    e = tl.arange(0, E_PAD)
    e_ok = e < num_experts
    count = tl.load(Offsets + e + 1, mask=e_ok, other=0) - tl.load(Offsets + e, mask=e_ok, other=0)
    tiles = (count + BLOCK_M - 1) // BLOCK_M
    t = tl.program_id(1)
    expert = tl.sum((tl.cumsum(tiles, 0) <= t).to(tl.int32), 0)  # experts whose tiles all come before t
    first_tile = tl.sum(tl.where(e < expert, tiles, 0), 0)
    expert = tl.where(expert < num_experts, expert, -1)
    row_start = tl.load(Offsets + tl.maximum(expert, 0))
    rows = row_start + (t - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_end = tl.load(Offsets + tl.maximum(expert, 0) + 1)
    return expert.to(tl.int64), rows, rows < row_end


@triton.jit
def _add_lora_b(acc, XA, LB, expert, rows, row_ok, n, n_ok, R, stride_xam, stride_lbe, stride_lbn, stride_lbr,
                lora_scale, DOT_DTYPE: tl.constexpr, R_PAD: tl.constexpr, ROWS_FIRST: tl.constexpr):  # fmt: skip
    """acc + s (x A_e^T) B_e^T for a tile's rows and outputs (acc [rows, n] if ROWS_FIRST else [n, rows]): LoRA's
    second product, added where the projection's outputs are made instead of by a launch and an [M, N] pass of its own.
    x A_e^T comes in as XA [M, R]; s B_e [N, R] is rounded to XA's dtype as it loads (grouped_matmul rounds B_e), and
    the dot accumulates into acc, so no second tile of registers is held."""
    r = tl.arange(0, R_PAD)
    xa = tl.load(XA + rows[:, None] * stride_xam + r[None, :], mask=row_ok[:, None] & (r[None, :] < R), other=0.0)
    b = tl.load(LB + expert * stride_lbe + n[:, None] * stride_lbn + r[None, :] * stride_lbr,
                mask=n_ok[:, None] & (r[None, :] < R), other=0.0)  # fmt: skip
    xa, b = xa.to(DOT_DTYPE), (b.to(tl.float32) * lora_scale).to(XA.dtype.element_ty).to(DOT_DTYPE)
    if ROWS_FIRST:
        return tl.dot(xa, tl.trans(b), acc, input_precision="ieee")
    return tl.dot(b, tl.trans(xa), acc, input_precision="ieee")


@triton.jit
def _mxfp4_scaled_kernel(
    X, Y, W, S, Bias, Offsets, num_experts,
    N, K,
    stride_xm, stride_ym, stride_we, stride_wn, stride_se, stride_sn, stride_be,
    XA, LB, R, stride_xam, stride_lbe, stride_lbn, stride_lbr, lora_scale,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, R_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr,
    E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y = x W_e^T by tl.dot_scaled (bf16 x): Blackwell applies the scales in the tensor cores, Hopper emulates."""
    expert, rows, row_ok = _tile(Offsets, num_experts, BLOCK_M, E_PAD)
    if expert < 0:
        return
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    W += expert * stride_we
    S += expert * stride_se
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        byte = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # byte j holds codes k = 2j (low nibble) and 2j + 1
        w_ok = (byte[:, None] < K // 2) & col_ok[None, :]
        w = tl.load(W + cols[None, :] * stride_wn + byte[:, None], mask=w_ok, other=0)  # [BLOCK_K/2, BLOCK_N]
        ks = k0 + tl.arange(0, BLOCK_K)
        x_ok = row_ok[:, None] & (ks[None, :] < K)
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=x_ok, other=0.0)
        group = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        s_ok = col_ok[:, None] & (group[None, :] < K // 32)
        s = tl.load(S + cols[:, None] * stride_sn + group[None, :], mask=s_ok, other=127)  # [BLOCK_N, BLOCK_K/32]
        acc = tl.dot_scaled(x, None, "bf16", w, s, "e2m1", acc)
    if HAS_BIAS:
        acc += tl.load(Bias + expert * stride_be + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_LORA:
        acc = _add_lora_b(acc, XA, LB, expert, rows, row_ok, cols, col_ok, R, stride_xam, stride_lbe, stride_lbn,
                          stride_lbr, lora_scale, DOT_DTYPE, R_PAD, ROWS_FIRST=True)  # fmt: skip
    y_ok = row_ok[:, None] & col_ok[None, :]
    tl.store(Y + rows[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty), mask=y_ok)


@triton.jit
def _settled(acc):
    """acc as it is, through an op the compiler cannot see into: Triton must then finish the step's dot (wgmma
    wait 0) before the loop goes on, so no tensor-core instruction still reads its register operand while the next
    step's decoded codes are written (docs/BENCHMARKS.md, session 17: ptxas reused those registers early)."""
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [acc], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _weight_tile(W, S, n, n_ok, b0, K_BYTES, stride_wn, stride_sn, DOT_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_BYTES: tl.constexpr, TRANSPOSED: tl.constexpr, PACKED: tl.constexpr, SWIZZLED: tl.constexpr,
                 SCALE_WORDS: tl.constexpr):  # fmt: skip
    """Rows n of W_e, bytes b0 .. b0 + BLOCK_BYTES, dequantised: (even k, odd k), each [BLOCK_N, BLOCK_BYTES], or
    [BLOCK_BYTES, BLOCK_N] when TRANSPOSED, loaded that way (dX: 1.3-1.5x faster than transposing in registers, which
    goes through shared memory, when both decoded in float32, 2026-12-06; with the packed decoders 1.5x at 16 rows
    per expert, session 20). The scales, one byte per 16 bytes of codes, are loaded and turned into the decoders'
    multiplier once, then broadcast; the values come out times 2^-WEIGHT_SHIFT. SWIZZLED (forward only): the bytes of
    each 16 taken in `swizzle_k` order, tile column 4a + b holding byte 4b + a, a reshape that lets each thread load its
    4 bytes at once. SCALE_WORDS: the scales are read as the 32-bit words that hold them (rows of a multiple of 4
    bytes, `mxfp4_matmul.pad_scales`), which Triton pipelines (cp.async) as it does the codes; one-byte loads it does
    not, and each step waited out their latency (sm_90 SASS: the load, then a shared-memory store and barrier).
    """
    byte = b0 + tl.arange(0, BLOCK_BYTES)
    group = b0 // 16 + tl.arange(0, BLOCK_BYTES // 16)
    if TRANSPOSED:  # k down the tile, n across
        n, n_ok, byte, group = n[None, :], n_ok[None, :], byte[:, None], group[:, None]
    else:
        n, n_ok, byte, group = n[:, None], n_ok[:, None], byte[None, :], group[None, :]
    codes = tl.load(W + n * stride_wn + byte, mask=n_ok & (byte < K_BYTES), other=0)
    if SWIZZLED:
        codes = tl.reshape(codes, (BLOCK_N, BLOCK_BYTES // 16, 4, 4))
        codes = tl.reshape(tl.permute(codes, (0, 1, 3, 2)), (BLOCK_N, BLOCK_BYTES))
    if SCALE_WORDS:  # no mask: groups past K read the padding, rows past N row 0's scales (their codes load as 0)
        word = tl.load((S + tl.where(n_ok, n, 0) * stride_sn + group // 4 * 4).to(tl.pointer_type(tl.int32)))
        s = (word >> (8 * (group % 4))) & 255
    else:
        s = tl.load(S + n * stride_sn + group, mask=n_ok & (group < K_BYTES // 16), other=127).to(tl.int32)
    s += _SCALE_OFFSET  # the decoders' one multiplier, 2^(s - 1 - WEIGHT_SHIFT): its exponent field
    if PACKED and TRANSPOSED:
        s = (s << 7).to(tl.int16)  # its bfloat16 bits
    elif PACKED:
        s = (s << 7) | (s << 23)  # its bfloat16 bits, twice
    else:
        s = (s << 23).to(tl.float32, bitcast=True)
    if TRANSPOSED:
        s = tl.reshape(tl.broadcast_to(s[:, None, :], (BLOCK_BYTES // 16, 16, BLOCK_N)), (BLOCK_BYTES, BLOCK_N))
    else:
        s = tl.reshape(tl.broadcast_to(s[:, :, None], (BLOCK_N, BLOCK_BYTES // 16, 16)), (BLOCK_N, BLOCK_BYTES))
    if PACKED and TRANSPOSED:
        even, odd = _e2m1_pairs_to_bf16(codes, s)
    elif PACKED:
        even, odd = _e2m1_bytes_to_bf16(codes, s)
    else:
        codes = codes.to(tl.int32)
        even, odd = _e2m1_to_bf16(codes & 15, s), _e2m1_to_bf16(codes >> 4, s)
    return even.to(DOT_DTYPE), odd.to(DOT_DTYPE)


@triton.jit
def _weight_rows(W, S, n, n_ok, b0, K_BYTES, stride_wn, stride_sn, DOT_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PACKED: tl.constexpr, SWIZZLED: tl.constexpr,
                 SCALE_WORDS: tl.constexpr):  # fmt: skip
    """Rows n of W_e, codes 2 b0 .. 2 b0 + BLOCK_K, dequantised into one [BLOCK_N, BLOCK_K] tile in k order (byte j's
    low nibble, then its high): the forward's operand."""
    w_even, w_odd = _weight_tile(W, S, n, n_ok, b0, K_BYTES, stride_wn, stride_sn, DOT_DTYPE, BLOCK_N, BLOCK_K // 2,
                                 TRANSPOSED=False, PACKED=PACKED, SWIZZLED=SWIZZLED, SCALE_WORDS=SCALE_WORDS)
    return tl.reshape(tl.join(w_even, w_odd), (BLOCK_N, BLOCK_K))


@triton.jit
def _mxfp4_wx_kernel(
    X, Y, W, S, Bias, Offsets, num_experts,
    N, K_BYTES,
    stride_xm, stride_ym, stride_we, stride_wn, stride_se, stride_sn, stride_be,
    XA, LB, R, stride_xam, stride_lbe, stride_lbn, stride_lbr, lora_scale,
    HAS_BIAS: tl.constexpr, HAS_LORA: tl.constexpr, R_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PACKED: tl.constexpr, SWIZZLED: tl.constexpr, W_RIGHT: tl.constexpr, SCALE_WORDS: tl.constexpr,
    E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y^T = W_e x^T (+ bias, + LoRA's s B_e (x A_e^T)^T): the dequantised weights are the left operand, straight
    from registers into the tensor cores, and a tile can hold as few as 16 rows. SWIZZLED: x's columns come in
    `swizzle_k` order, and W's codes are read in the same order. W_RIGHT: y = x W_e^T, the decoded weights the right
    operand, which a wgmma reads from shared memory, as it does x: x needs no swizzled copy (Tiles.weights_right)."""
    expert, rows, row_ok = _tile(Offsets, num_experts, BLOCK_M, E_PAD)
    if expert < 0:
        return
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    W += expert * stride_we
    S += expert * stride_se
    acc = tl.zeros((BLOCK_M, BLOCK_N) if W_RIGHT else (BLOCK_N, BLOCK_M), dtype=tl.float32)
    for b0 in range(0, K_BYTES, BLOCK_K // 2):
        w = _weight_rows(W, S, n, n_ok, b0, K_BYTES, stride_wn, stride_sn, DOT_DTYPE, BLOCK_N, BLOCK_K, PACKED,
                         SWIZZLED, SCALE_WORDS)  # fmt: skip
        ks = 2 * b0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + rows[:, None] * stride_xm + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < 2 * K_BYTES),
                    other=0.0).to(DOT_DTYPE)  # fmt: skip
        if W_RIGHT:  # both operands from shared memory: no register operand in flight to protect
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, tl.trans(x), acc, input_precision="ieee")
            if PACKED:  # compute capability 9+: the dot is a wgmma reading w from registers
                acc = _settled(acc)
    if W_RIGHT:
        acc = tl.trans(acc)  # [n, rows], as the epilogue takes it
    acc *= _UNSHIFT
    if HAS_BIAS:
        acc += tl.load(Bias + expert * stride_be + n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_LORA:
        acc = _add_lora_b(acc, XA, LB, expert, rows, row_ok, n, n_ok, R, stride_xam, stride_lbe, stride_lbn,
                          stride_lbr, lora_scale, DOT_DTYPE, R_PAD, ROWS_FIRST=False)  # fmt: skip
    y_ok = n_ok[:, None] & row_ok[None, :]
    tl.store(Y + rows[None, :] * stride_ym + n[:, None], acc.to(Y.dtype.element_ty), mask=y_ok)


@triton.jit
def _mxfp4_wx_transposed_kernel(
    DY, DX, W, S, Offsets, num_experts,
    N, K_BYTES,
    stride_dym, stride_dxm, stride_we, stride_wn, stride_se, stride_sn,
    XA, LB, R, stride_xam, stride_lbe, stride_lbn, stride_lbr, lora_scale,
    HAS_LORA: tl.constexpr, R_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr, PACKED: tl.constexpr,
    SCALE_WORDS: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """dx^T = W_e^T dy^T (+ LoRA's (s dy B_e) A_e) for BLOCK_K output columns: the dequantised weights, transposed,
    are the left operand, loaded transposed (one-byte loads); the even and odd columns are two dots into two
    accumulators."""
    expert, rows, row_ok = _tile(Offsets, num_experts, BLOCK_M, E_PAD)
    if expert < 0:
        return
    b0 = tl.program_id(0) * (BLOCK_K // 2)
    W += expert * stride_we
    S += expert * stride_se
    acc_even = tl.zeros((BLOCK_K // 2, BLOCK_M), dtype=tl.float32)
    acc_odd = tl.zeros((BLOCK_K // 2, BLOCK_M), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        w_even, w_odd = _weight_tile(W, S, n, n < N, b0, K_BYTES, stride_wn, stride_sn,
                                     DOT_DTYPE, BLOCK_N, BLOCK_K // 2, TRANSPOSED=True, PACKED=PACKED,
                                     SWIZZLED=False, SCALE_WORDS=SCALE_WORDS)  # fmt: skip
        dy = tl.load(DY + rows[:, None] * stride_dym + n[None, :], mask=row_ok[:, None] & (n[None, :] < N), other=0.0)
        dy_t = tl.trans(dy.to(DOT_DTYPE))
        acc_even = tl.dot(w_even, dy_t, acc_even, input_precision="ieee")
        acc_odd = tl.dot(w_odd, dy_t, acc_odd, input_precision="ieee")
        if PACKED:  # as in the forward: the dots are wgmmas reading the codes from registers
            acc_even, acc_odd = _settled(acc_even), _settled(acc_odd)
    acc_even *= _UNSHIFT
    acc_odd *= _UNSHIFT
    byte = b0 + tl.arange(0, BLOCK_K // 2)
    if HAS_LORA:  # LB = A_e^T [K, R]: its even and odd rows into the even and odd columns' accumulators
        acc_even = _add_lora_b(acc_even, XA, LB, expert, rows, row_ok, 2 * byte, byte < K_BYTES, R, stride_xam,
                               stride_lbe, stride_lbn, stride_lbr, lora_scale, DOT_DTYPE, R_PAD, ROWS_FIRST=False)
        acc_odd = _add_lora_b(acc_odd, XA, LB, expert, rows, row_ok, 2 * byte + 1, byte < K_BYTES, R, stride_xam,
                              stride_lbe, stride_lbn, stride_lbr, lora_scale, DOT_DTYPE, R_PAD, ROWS_FIRST=False)
    dx_ptr = DX + rows[None, :] * stride_dxm + 2 * byte[:, None]
    dx_ok = (byte[:, None] < K_BYTES) & row_ok[None, :]
    tl.store(dx_ptr, acc_even.to(DX.dtype.element_ty), mask=dx_ok)
    tl.store(dx_ptr + 1, acc_odd.to(DX.dtype.element_ty), mask=dx_ok)
