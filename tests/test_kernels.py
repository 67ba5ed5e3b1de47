"""MXFP4 format, routing and the grouped expert kernels, each against its plain-torch reference.

On a machine without CUDA, conftest.py sets TRITON_INTERPRET=1 before anything imports Triton, so the Triton code
paths run here on CPU (slowly: shapes stay small, but cover K = 2880, empty experts and multi-tile experts). With CUDA
the kernel inputs go to the GPU (DEVICE): CPU tensors would take the torch reference and test it against itself.
"""

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ptx_emulator import emulate_inline_asm
from triton.runtime.interpreter import InterpreterBuilder

from oss_grpo.kernels import _e2m1, _mxfp4_matmul
from oss_grpo.kernels import grouped_matmul as grouped_matmul_module
from oss_grpo.kernels import mxfp4_matmul as mxfp4_matmul_module
from oss_grpo.kernels.expert_matmul import ExpertLora, expert_linear, expert_linear_torch
from oss_grpo.kernels.grouped_matmul import grouped_matmul, grouped_matmul_torch, grouped_outer, grouped_outer_torch
from oss_grpo.kernels.mxfp4 import (
    E2M1_VALUES,
    MAX_SCALE,
    MIN_SCALE,
    check_scales,
    dequantize,
    pack_codes,
    quantize,
    unpack_codes,
)
from oss_grpo.kernels.mxfp4_matmul import (
    LoraProduct,
    Tiles,
    mxfp4_matmul,
    mxfp4_matmul_torch,
    mxfp4_matmul_transposed,
    mxfp4_matmul_transposed_torch,
    pad_scales,
    runs_triton,
    scale_words,
)
from oss_grpo.kernels.routing import ExpertGroups, route, sort_by_expert
from oss_grpo.kernels.swiglu import BLOCK as SWIGLU_BLOCK
from oss_grpo.kernels.swiglu import swiglu, swiglu_torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the kernel tests put their inputs: the compiled kernels on a GPU, the interpreter otherwise."""

# (counts of rows per expert, N, K): an empty expert, one longer than a 64-row tile, K = 2880 (not a multiple of 128),
# N over one column tile, and mean counts that reach every entry of mxfp4_matmul's two tile tables.
SHAPES = [
    ([5, 0, 70], 40, 96),
    ([50, 70], 40, 96),
    ([3, 9], 24, 2880),
    ([0, 0, 4], 64, 32),
    ([130, 0, 200], 136, 64),
    ([20, 0, 40], 40, 64),
]


def random_mxfp4(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes and scales near 127 (the gpt-oss range) for a [..., K] weight."""
    g = torch.Generator().manual_seed(seed)
    *lead, k = shape
    codes = torch.randint(0, 16, (*lead, k), generator=g)
    scales = torch.randint(118, 132, (*lead, k // 32), generator=g).to(torch.uint8)
    return pack_codes(codes), scales


def test_triton_paths_are_the_ones_tested() -> None:
    """Without this the kernel tests below would compare the reference with itself."""
    assert runs_triton(torch.zeros(1, device=DEVICE))
    assert torch.cuda.is_available() or _mxfp4_matmul.INTERPRETED


def test_e2m1_table_is_the_bit_format() -> None:
    """Each code decodes as sign (bit 3), exponent (bits 2-1, bias 1) and mantissa (bit 0), subnormal at exponent 0."""
    for code, value in enumerate(E2M1_VALUES):
        sign, exponent, mantissa = code >> 3, (code >> 1) & 3, code & 1
        magnitude = mantissa * 0.5 if exponent == 0 else 2.0 ** (exponent - 1) * (1 + mantissa / 2)
        assert (-1) ** sign * magnitude == value and (sign == 1) == (str(value)[0] == "-")


@triton.jit
def _decode_bytes(Codes, ScaleBits, Even, Odd, SIZE: tl.constexpr, IN_K_ORDER: tl.constexpr):
    i = tl.arange(0, SIZE)
    if IN_K_ORDER:
        even, odd = _e2m1._e2m1_bytes_to_bf16(tl.load(Codes + i), tl.load(ScaleBits + i))
    else:
        even, odd = _e2m1._e2m1_pairs_to_bf16(tl.load(Codes + i), tl.load(ScaleBits + i).to(tl.int16))
    tl.store(Even + i, even)
    tl.store(Odd + i, odd)


@pytest.fixture
def packed(monkeypatch) -> None:
    """The packed (PTX) decoders on: a GPU of compute capability 9+ takes them for bf16 by itself; under the
    interpreter, which runs no PTX, their assembly runs in tests/ptx_emulator.py and mxfp4_matmul is told to take
    them for bf16, so the code path of every bf16 GPU run is tested here too."""
    if DEVICE.type == "cuda":
        if torch.cuda.get_device_capability()[0] < 9:
            pytest.skip("PTX bf16x2 decoding needs compute capability 9+")
        return
    monkeypatch.setattr(InterpreterBuilder, "create_inline_asm", emulate_inline_asm)
    monkeypatch.setattr(mxfp4_matmul_module, "packed_dequant", lambda x: x.dtype == torch.bfloat16)


def decoding(request, dtype: torch.dtype | str) -> torch.dtype:
    """A dtype parameter of the kernel tests: torch.float32 or torch.bfloat16 as they are, or "packed": bf16 through
    the PTX decoders (the `packed` fixture)."""
    if dtype != "packed":
        return dtype
    request.getfixturevalue("packed")
    return torch.bfloat16


@pytest.mark.parametrize("in_k_order", [True, False], ids=["bytes_to_bf16", "pairs_to_bf16"])
def test_packed_decoding_is_exact_for_every_byte_and_scale(packed, in_k_order: bool) -> None:
    """Both PTX decoders against dequantize times 2^-WEIGHT_SHIFT, bit for bit: all 256 bytes (every pair of codes)
    under scales across the window they serve, subnormal and zero codes included. Neighbouring bytes have different
    scales, so a decoder that multiplies one byte's codes by another's scale fails too."""
    window = torch.tensor([MIN_SCALE, 100, 119, 127, 128, 129, 140, MAX_SCALE])
    codes = torch.arange(256, dtype=torch.uint8).repeat(len(window))
    i = torch.arange(codes.numel())
    scales = window[(i + i // 256) % len(window)]  # the r-th copy of byte b gets scale r + b: each byte meets each
    field = scales + 126 - _e2m1.WEIGHT_SHIFT  # the exponent field of the multiplier 2^(s - 1 - WEIGHT_SHIFT)
    bits = (field << 7) | (field << 23) if in_k_order else field << 7  # its bf16 bits, twice or once
    even, odd = (torch.empty(codes.numel(), dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    _decode_bytes[(1,)](codes.to(DEVICE), bits.int().to(DEVICE), even, odd, SIZE=codes.numel(), IN_K_ORDER=in_k_order)
    weights = dequantize(codes.view(-1, 1, 1).expand(-1, 1, 16), scales.view(-1, 1).to(torch.uint8), torch.float32)
    expected = (weights[:, :2] * 2.0**-_e2m1.WEIGHT_SHIFT).bfloat16()  # exact: a power of two, normal
    assert torch.equal(even.cpu(), expected[:, 0]) and torch.equal(odd.cpu(), expected[:, 1])


def test_layout_low_nibble_first_and_one_scale_per_32() -> None:
    blocks = torch.zeros(1, 2, 16, dtype=torch.uint8)
    blocks[0, 0, 0] = 0x21  # k = 0 holds code 1 (+0.5), k = 1 holds code 2 (+1.0)
    blocks[0, 1, 15] = 0xF9  # k = 62 holds code 9 (-0.5), k = 63 holds code 15 (-6.0)
    scales = torch.tensor([[128, 125]], dtype=torch.uint8)  # x2 for k < 32, x1/4 for 32 <= k < 64
    w = dequantize(blocks, scales, torch.float32)
    assert w.shape == (1, 64)
    expected = torch.zeros(1, 64)
    expected[0, [0, 1, 62, 63]] = torch.tensor([1.0, 2.0, -0.125, -1.5])
    assert torch.equal(w, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_round_trip_is_exact_on_the_grid(dtype: torch.dtype) -> None:
    blocks, scales = random_mxfp4((3, 5, 128), seed=0)
    codes = unpack_codes(blocks)
    codes[..., ::32] = 7 + 8 * (codes[..., ::32] >> 3)  # a +-6 in every block: quantize must pick the same scale
    blocks = pack_codes(codes)
    w = dequantize(blocks, scales, dtype)
    assert torch.equal(dequantize(*quantize(w), dtype), w)
    again_blocks, again_scales = quantize(w)
    assert torch.equal(again_blocks, blocks) and torch.equal(again_scales, scales)


def test_quantize_rounds_to_nearest_even_and_saturates() -> None:
    # One block with amax 6 (scale 2^0): ties go to the even code, beyond 6 saturates to 6.
    row = torch.zeros(32, dtype=torch.float64)
    row[:10] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.3, -2.6])
    blocks, scales = quantize(row)
    assert scales.tolist() == [127]
    expected = [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, -3.0]
    assert dequantize(blocks, scales, torch.float64)[:10].tolist() == expected
    big = torch.full((32,), 7.9, dtype=torch.float64)  # amax 7.9 keeps scale 2^0, then saturates
    assert dequantize(*quantize(big), torch.float64).unique().tolist() == [6.0]


def test_quantize_keeps_to_the_scales_the_kernels_decode_and_larger_ones_are_named() -> None:
    tiny, huge = torch.full((32,), 2.0**-120, dtype=torch.float64), torch.full((32,), 2.0**40, dtype=torch.float64)
    assert quantize(tiny)[1].item() == MIN_SCALE and quantize(huge)[1].item() == MAX_SCALE
    check_scales("ok", torch.tensor([MIN_SCALE, MAX_SCALE], dtype=torch.uint8))
    with pytest.raises(ValueError, match=rf"layer\.3\.down_proj_scales: MXFP4 scale {MAX_SCALE + 1}"):
        check_scales("layer.3.down_proj_scales", torch.tensor([127, MAX_SCALE + 1], dtype=torch.uint8))


def test_quantize_error_is_at_most_half_the_widest_grid_gap() -> None:
    """Gaps on the e2m1 grid are at most 2 x scale (between 4 and 6); the OCP scale lets |w| reach 8 x scale before
    saturating at 6, so a saturated value may be off by up to 2 x scale."""
    w = torch.randn(4, 256, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    blocks, scales = quantize(w)
    scale = torch.exp2(scales.double() - 127).repeat_interleave(32, -1)
    error = (dequantize(blocks, scales, torch.float64) - w).abs()
    inside = w.abs() <= 6 * scale
    assert (error[inside] <= scale[inside]).all() and (error <= 2 * scale).all() and (~inside).any()


@triton.jit
def _tile_probe(Offsets, num_experts, Expert, Rows, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Each program stores the expert `_tile` gives it and its rows (-1 where masked)."""
    expert, rows, row_ok = _mxfp4_matmul._tile(Offsets, num_experts, BLOCK_M, E_PAD)
    t = tl.program_id(1)
    tl.store(Expert + t, expert.to(tl.int32))
    tl.store(Rows + t * BLOCK_M + tl.arange(0, BLOCK_M), tl.where(row_ok & (expert >= 0), rows, -1))


@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=6), block_m=st.sampled_from([1, 16, 64]))
@example(counts=[17, 1, 0, 33], block_m=16)  # every expert with rows one past a whole tile: the grid's bound is met
def test_tiles_cover_every_row_once_within_one_expert(counts: list[int], block_m: int) -> None:
    """What every grouped kernel's programs work out from the offsets: each row in exactly one tile of its expert,
    on a grid of `row_tiles`, which is never short of the tiles the counts need."""
    groups = ExpertGroups.from_counts(torch.tensor(counts, device=DEVICE), sum(counts))
    num_tiles = groups.row_tiles(block_m)
    assert num_tiles >= sum(-(-c // block_m) for c in counts)
    expert = torch.empty(num_tiles, dtype=torch.int32, device=DEVICE)
    rows = torch.empty(num_tiles, block_m, dtype=torch.int32, device=DEVICE)
    _tile_probe[(1, num_tiles)](groups.offsets, groups.num_experts, expert, rows, groups.padded_experts, block_m)
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    seen = torch.zeros(sum(counts), dtype=torch.long)
    for e, tile_rows in zip(expert.tolist(), rows.cpu()):
        tile_rows = tile_rows[tile_rows >= 0].long()
        assert (e >= 0) == (len(tile_rows) > 0) and (owner[tile_rows] == e).all()
        seen[tile_rows] += 1
    assert (seen == 1).all()


def test_more_row_tiles_than_a_grid_axis_takes_is_a_clear_error() -> None:
    """The row tiles go on the grid's second axis (at most 65,535): more fails before any launch, saying why."""
    groups = ExpertGroups.from_counts(torch.tensor([70_000]), 70_000)
    with pytest.raises(ValueError, match="70000 routed rows need more than 65535 tiles of 1"):
        groups.row_tiles(1)
    assert groups.row_tiles(2) == 35_000


def test_route_softmax_over_k_in_float32() -> None:
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    indices, weights = route(logits, top_k=2)
    assert weights.dtype == torch.float32
    top = logits.double().gather(1, indices)
    assert (top[:, 0] >= logits.double().topk(2).values[:, 1]).all()
    torch.testing.assert_close(weights.double(), torch.softmax(top, -1), rtol=1e-6, atol=1e-7)


def test_sort_by_expert_groups_rows_and_maps_back() -> None:
    indices = torch.tensor([[2, 0], [0, 2], [2, 3], [3, 2]])
    order = sort_by_expert(indices, num_experts=5)
    assert order.groups.offsets.tolist() == [0, 2, 2, 6, 8, 8]  # expert 1 and 4 get nothing
    assert indices.flatten()[order.slot].tolist() == [0, 0, 2, 2, 2, 2, 3, 3]
    assert order.token.tolist() == [0, 1, 0, 1, 2, 3, 2, 3]  # stable: token order inside each expert


def test_swiglu_matches_transformers_gate() -> None:
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    from oss_grpo.rl.tiny_model import tiny_config

    h = torch.randn(6, 32, dtype=torch.float64) * 6  # beyond the clamps on both sides
    torch.testing.assert_close(swiglu_torch(h), GptOssExperts(tiny_config())._apply_gate(h), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_swiglu_matches_the_reference_forward_and_backward(dtype: torch.dtype) -> None:
    """The Triton pass each way against autograd through `swiglu_torch`: values beyond both clamps, exactly at them
    (torch passes the gradient there), a NaN, and a size that leaves the last program partly masked."""
    g = torch.Generator().manual_seed(0)
    rows, width = 5, 2 * (SWIGLU_BLOCK // 4 + 3)  # 5 x 259 outputs: two programs, the second mostly masked
    h = (torch.randn(rows, width, generator=g) * 6).to(dtype)
    h[0, :6] = torch.tensor([7.0, -7.0, 7.0, 7.0, -3.0, -7.0])  # gate and up on the bounds
    h[1, 10] = float("nan")
    dout = torch.randn(rows, width // 2, generator=g).to(dtype)
    assert runs_triton(h.to(DEVICE))
    got_h, ref_h = h.clone().to(DEVICE).requires_grad_(), h.clone().requires_grad_()
    got, ref = swiglu(got_h), swiglu_torch(ref_h)
    (got * dout.to(DEVICE)).sum().backward()
    (ref * dout).sum().backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=8e-3, atol=1e-5)  # bf16: 1 ulp
    assert got.dtype == got_h.grad.dtype == dtype
    torch.testing.assert_close(got.cpu(), ref.detach(), equal_nan=True, **tol)
    torch.testing.assert_close(got_h.grad.cpu(), ref_h.grad, equal_nan=True, **tol)
    assert got[1, 5].isnan()  # a NaN gate is not clamped away (its gradient is 0, as through torch.clamp)
    assert (got_h.grad.cpu()[:, 0::2][h[:, 0::2].float() > 7] == 0).all()  # clamped gates pass no gradient
    with pytest.raises(ValueError, match="even"):
        swiglu(h[:, :-1])


def inputs(counts: list[int], n: int, k: int, dtype: torch.dtype, seed: int) -> tuple:
    """(x, blocks, scales, groups, bias) on DEVICE, drawn on the CPU so that every device sees the same values."""
    groups = ExpertGroups.from_counts(torch.tensor(counts, device=DEVICE), sum(counts))
    blocks, scales = random_mxfp4((len(counts), n, k), seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(sum(counts), k, generator=g).to(dtype)
    bias = torch.randn(len(counts), n, generator=g)
    return x.to(DEVICE), blocks.to(DEVICE), scales.to(DEVICE), groups, bias.to(DEVICE)


def assert_close_to(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    """fp32 kernels agree with the fp64 reference to accumulation error; bf16 ones to bf16 output rounding."""
    scale = reference.abs().max().item() + 1e-30
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    assert (actual.double() - reference).abs().max().item() <= tol * scale


def lora_product(counts: list[int], n: int, rank: int, dtype: torch.dtype, seed: int) -> LoraProduct:
    """x A^T rows in `dtype` and B [E, n, rank] float32 as a strided view (PEFT's factors are parameters of their own
    shape), on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    xa = torch.randn(sum(counts), rank, generator=g).to(dtype).to(DEVICE)
    b = torch.randn(len(counts), rank, n, generator=g).to(DEVICE).transpose(1, 2)
    return LoraProduct(xa, b, 0.5)


def as_double(lora: LoraProduct | None) -> LoraProduct | None:
    return lora and LoraProduct(lora.xa.double(), lora.b.to(lora.xa.dtype).double(), lora.scaling)


@pytest.mark.parametrize("counts,n,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [None, 8, 32], ids=["no_lora", "lora8", "lora32"])
def test_mxfp4_matmul_matches_reference(counts: list[int], n: int, k: int, dtype: torch.dtype, rank: int | None) -> None:
    """Bias and, when given, LoRA's B product (added in the kernel's epilogue; rank 8 padded to a 16-wide dot)."""
    x, blocks, scales, groups, bias = inputs(counts, n, k, dtype, seed=3)
    lora = rank and lora_product(counts, n, rank, dtype, seed=8)
    y = mxfp4_matmul(x, blocks, scales, groups, bias.to(dtype), lora)
    assert y.dtype == dtype and y.shape == (sum(counts), n)
    expected = mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.to(dtype).double(), as_double(lora))
    assert_close_to(y, expected, dtype)


def test_a_lora_product_of_another_shape_is_named() -> None:
    x, blocks, scales, groups, _ = inputs([3, 9], 24, 64, torch.float32, seed=3)
    with pytest.raises(ValueError, match=r"LoRA xa \(12, 8\) and B \(2, 40, 8\)"):
        mxfp4_matmul(x, blocks, scales, groups, lora=lora_product([3, 9], 40, 8, torch.float32, seed=8))


def test_native_mx_forward_matches_reference(monkeypatch) -> None:
    """The forward kept for GPUs with MXFP4 tensor cores (tl.dot_scaled; none is lent here), forced on: same numbers
    (LoRA's B product included), and only from the table's last entry (few rows per expert keep the short wx tiles)."""
    monkeypatch.setattr(mxfp4_matmul_module, "native_mx", lambda x: True)
    x, blocks, scales, groups, bias = inputs([130, 0, 200], 136, 64, torch.bfloat16, seed=3)
    assert mxfp4_matmul_module.forward_tiles(x, groups).scaled
    assert not mxfp4_matmul_module.forward_tiles(x, ExpertGroups.from_counts(torch.tensor([3, 9]), 12)).scaled
    lora = lora_product([130, 0, 200], 136, 16, torch.bfloat16, seed=8)
    y = mxfp4_matmul(x, blocks, scales, groups, bias.bfloat16(), lora)
    expected = mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.bfloat16().double(), as_double(lora))
    assert_close_to(y, expected, torch.bfloat16)


@pytest.mark.parametrize("counts,n,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rank", [None, 8], ids=["no_lora", "lora8"])
def test_mxfp4_matmul_transposed_matches_reference(counts: list[int], n: int, k: int, dtype: torch.dtype,
                                                   rank: int | None) -> None:  # fmt: skip
    """With LoRA, (s dy B) A added in the epilogue: A's even and odd columns go to dx's even and odd columns."""
    _, blocks, scales, groups, _ = inputs(counts, n, k, dtype, seed=4)
    dy = torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(5)).to(dtype).to(DEVICE)
    lora = rank and lora_product(counts, k, rank, dtype, seed=9)
    dx = mxfp4_matmul_transposed(dy, blocks, scales, groups, lora)
    assert dx.dtype == dtype and dx.shape == (sum(counts), k)
    assert_close_to(dx, mxfp4_matmul_transposed_torch(dy.double(), blocks, scales, groups, as_double(lora)), dtype)


@pytest.mark.parametrize("counts,n,k", SHAPES)
def test_packed_decoders_in_the_kernels_match_the_reference(packed, counts: list[int], n: int, k: int) -> None:
    """The forward (bias, LoRA's B product) and dX (LoRA's A product) in bf16 through the PTX decoders, each scale of
    its own: every tile of the tables, two-warp mma.sync and swizzled one-warpgroup ones, the settled dots included."""
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.bfloat16, seed=10)
    assert mxfp4_matmul_module.packed_dequant(x)
    lora = lora_product(counts, n, 8, torch.bfloat16, seed=11)
    y = mxfp4_matmul(x, blocks, scales, groups, bias.bfloat16(), lora)
    expected = mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.bfloat16().double(), as_double(lora))
    assert_close_to(y, expected, torch.bfloat16)
    dy = torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(12)).bfloat16().to(DEVICE)
    lora = lora_product(counts, k, 8, torch.bfloat16, seed=13)
    dx = mxfp4_matmul_transposed(dy, blocks, scales, groups, lora)
    assert_close_to(dx, mxfp4_matmul_transposed_torch(dy.double(), blocks, scales, groups, as_double(lora)),
                    torch.bfloat16)  # fmt: skip


@pytest.mark.parametrize("scale", [MIN_SCALE, MAX_SCALE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "packed"])
def test_both_ends_of_the_scale_window_decode_exactly(request, scale: int, dtype: torch.dtype | str) -> None:
    """Weights of 2^-102 (every scale MIN_SCALE) and of 12 * 2^24 (MAX_SCALE) through the forward and dX: the one
    multiply of the decoders and the sums scaled back by 2^WEIGHT_SHIFT neither flush nor overflow. |x| in [1, 2):
    products stay normal floats too, as the tensor cores may flush below (only far smaller weights ever meet that).
    "packed": bf16 through the PTX decoders."""
    dtype = decoding(request, dtype)
    counts, n, k = [3, 0, 20], 40, 96
    blocks, _ = random_mxfp4((len(counts), n, k), seed=6)
    scales = torch.full((len(counts), n, k // 32), scale, dtype=torch.uint8)
    g = torch.Generator().manual_seed(7)
    signs = lambda *shape: torch.randint(0, 2, shape, generator=g) * 2 - 1  # noqa: E731
    x = (signs(sum(counts), k) * (1 + torch.rand(sum(counts), k, generator=g))).to(dtype)
    dy = (signs(sum(counts), n) * (1 + torch.rand(sum(counts), n, generator=g))).to(dtype)
    groups = ExpertGroups.from_counts(torch.tensor(counts, device=DEVICE), sum(counts))
    blocks, scales, x, dy = (t.to(DEVICE) for t in (blocks, scales, x, dy))
    y, dx = mxfp4_matmul(x, blocks, scales, groups), mxfp4_matmul_transposed(dy, blocks, scales, groups)
    assert_close_to(y, mxfp4_matmul_torch(x.double(), blocks, scales, groups), dtype)
    assert_close_to(dx, mxfp4_matmul_transposed_torch(dy.double(), blocks, scales, groups), dtype)
    assert y.abs().max() > 0 and dx.abs().max() > 0


@pytest.mark.parametrize("tiles", [Tiles(64, 64, 128, 4, 3, swizzled=True), Tiles(16, 32, 64, 2, 3, swizzled=True)])
@pytest.mark.parametrize("counts,n,k", [SHAPES[0], SHAPES[2]])
def test_swizzled_forward_gives_the_same_product(monkeypatch, tiles: Tiles, counts, n: int, k: int) -> None:
    """The forward reading the codes in swizzled order (mxfp4_matmul.swizzle_k), forced for every size, matches the
    reference, with LoRA's B product: one warpgroup and two warps, K = 2880, an empty expert."""
    monkeypatch.setattr(mxfp4_matmul_module, "FORWARD_TILES", ((float("inf"), tiles),))
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.bfloat16, seed=6)
    assert mxfp4_matmul_module.forward_tiles(x, groups).swizzled
    lora = lora_product(counts, n, 16, torch.bfloat16, seed=8)
    y = mxfp4_matmul(x, blocks, scales, groups, bias.bfloat16(), lora)
    expected = mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.bfloat16().double(), as_double(lora))
    assert_close_to(y, expected, torch.bfloat16)


@pytest.mark.parametrize("tiles", [Tiles(64, 64, 64, 4, 3, weights_right=True), Tiles(16, 32, 128, 2, 3,
                                                                                   weights_right=True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "packed"])
def test_forward_with_the_weights_on_the_right_gives_the_same_product(request, monkeypatch, tiles: Tiles,
                                                                      dtype) -> None:  # fmt: skip
    """The forward with the decoded weights as the dot's right operand (Tiles.weights_right), forced for every size:
    bias and LoRA's B product, K = 2880, an empty expert, several row tiles of one expert."""
    dtype = decoding(request, dtype)
    monkeypatch.setattr(mxfp4_matmul_module, "FORWARD_TILES", ((float("inf"), tiles),))
    for counts, n, k in (SHAPES[0], SHAPES[2], SHAPES[4]):
        x, blocks, scales, groups, bias = inputs(counts, n, k, dtype, seed=20)
        lora = lora_product(counts, n, 8, dtype, seed=21)
        y = mxfp4_matmul(x, blocks, scales, groups, bias.to(dtype), lora)
        expected = mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.to(dtype).double(), as_double(lora))
        assert_close_to(y, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "packed"])
def test_scales_read_as_words_give_the_same_products(request, dtype) -> None:
    """Scales padded to rows of a multiple of 4 bytes (pad_scales) are read four a load: the forward (bias, LoRA) and
    dX (LoRA) match the references on every shape, whose 1, 2, 3 and 90 groups a row end inside a word, with a
    different scale for each group (a wrong shift takes a neighbour's), N past the last column tile, empty experts."""
    dtype = decoding(request, dtype)
    for counts, n, k in SHAPES:
        x, blocks, scales, groups, bias = inputs(counts, n, k, dtype, seed=22)
        padded = pad_scales(scales)
        assert scale_words(padded) and torch.equal(padded, scales)
        lora = lora_product(counts, n, 8, dtype, seed=23)
        y = mxfp4_matmul(x, blocks, padded, groups, bias.to(dtype), lora)
        assert_close_to(y, mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.to(dtype).double(),
                                              as_double(lora)), dtype)  # fmt: skip
        dy = torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(24)).to(dtype).to(DEVICE)
        lora = lora_product(counts, k, 8, dtype, seed=25)
        dx = mxfp4_matmul_transposed(dy, blocks, padded, groups, lora)
        assert_close_to(dx, mxfp4_matmul_transposed_torch(dy.double(), blocks, scales, groups, as_double(lora)), dtype)


def test_only_padded_aligned_scales_are_read_as_words() -> None:
    """The word loads read up to the next multiple of 4 bytes of each row: checkpoint rows of 90 scales are not."""
    scales = torch.full((2, 8, 90), 127, dtype=torch.uint8)
    assert not scale_words(scales)
    assert scale_words(pad_scales(scales)) and pad_scales(scales).stride(1) == 92
    assert not scale_words(pad_scales(scales)[:, :, 1:])  # rows no longer 4-byte aligned
    assert scale_words(torch.full((2, 8, 4), 127, dtype=torch.uint8))  # rows of 4 need no padding


def test_swizzle_k_is_its_own_inverse_and_moves_pairs() -> None:
    """Column pair 4a + b of each 32 comes from pair 4b + a: the order the swizzled kernels assume."""
    x = torch.arange(2 * 64).reshape(2, 64)
    swizzled = mxfp4_matmul_module.swizzle_k(x)
    assert torch.equal(mxfp4_matmul_module.swizzle_k(swizzled), x)
    assert swizzled[0, 2 * 1 : 2 * 1 + 2].tolist() == [8, 9]  # pair 1 (a 0, b 1) <- pair 4
    assert swizzled[1, 32 + 2 * 6 : 32 + 2 * 6 + 2].tolist() == [64 + 32 + 2 * 9, 64 + 32 + 2 * 9 + 1]  # 6 <- 9


# gpt-oss-20b's gate_up on a GPU (N 5760, K 2880, 32 experts: each routing repeated 8 times), a narrow stand-in with
# fewer rows under the interpreter; rows per expert as a decode step, a prefill pass and a prompt whose near-identical
# tokens all pick the same experts route them.
WIDE = (5760, 2880, 32) if DEVICE.type == "cuda" else (136, 2880, 4)
ROUTINGS = {"decode": [2, 1, 3, 0], "prefill": [128, 120, 136, 128], "skewed": [700, 0, 3, 297]}
REPEATS = 24 if DEVICE.type == "cuda" else 2
if DEVICE.type != "cuda":
    ROUTINGS.update(prefill=[34, 30, 36, 32], skewed=[90, 0, 3, 40])


@pytest.mark.parametrize("routing", sorted(ROUTINGS))
def test_full_width_products_are_finite_and_repeatable(routing: str) -> None:
    """Every run gives the same bits, nothing is NaN or infinite, and both products match the reference, at gpt-oss
    width in bf16 with activations of size ~30: what a compiled kernel's race or uninitialised read breaks. A guard,
    not a proof: the race of two dots chained into one accumulator (NaN logits in the 20b trainer) showed in 1 of 120
    launches in one H100 run and in none of 96 in the next (docs/BENCHMARKS.md, 2026-12-06)."""
    n, k, experts = WIDE
    counts = ROUTINGS[routing] * (experts // 4)
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.bfloat16, seed=15)
    x, bias = x * 30, bias.bfloat16()
    dy = (torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(16)) * 30).to(torch.bfloat16).to(DEVICE)
    runs = [(mxfp4_matmul(x, blocks, scales, groups, bias), mxfp4_matmul_transposed(dy, blocks, scales, groups))
            for _ in range(REPEATS)]  # fmt: skip
    for y, dx in runs:
        assert y.isfinite().all() and dx.isfinite().all()
        assert torch.equal(y, runs[0][0]) and torch.equal(dx, runs[0][1])
    assert_close_to(runs[0][0], mxfp4_matmul_torch(x.double(), blocks, scales, groups, bias.double()), torch.bfloat16)
    assert_close_to(runs[0][1], mxfp4_matmul_transposed_torch(dy.double(), blocks, scales, groups), torch.bfloat16)


@pytest.mark.parametrize("k", [40, 300, 1000])  # one reduction step; several (ragged); K split over programs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_matmul_and_outer_match_reference(dtype: torch.dtype, k: int) -> None:
    counts = [5, 0, 70]
    groups = ExpertGroups.from_counts(torch.tensor(counts, device=DEVICE), sum(counts))
    g = torch.Generator().manual_seed(6)
    x = torch.randn(sum(counts), k, generator=g).to(dtype).to(DEVICE)
    v = torch.randn(3, 8, k, generator=g).to(DEVICE).transpose(1, 2)  # float32 and strided, as LoRA passes A^T
    ref = grouped_matmul_torch(x.double(), v.to(dtype).double(), groups)  # the kernel rounds v to x's dtype
    y = grouped_matmul(x, v, groups)
    assert_close_to(y, ref, dtype)
    assert torch.equal(grouped_matmul(x, v, groups, -0.5), -0.5 * y)  # a power of 2 scales exactly, rounding included
    b = torch.randn(sum(counts), 8, generator=g).to(dtype).to(DEVICE)
    outer = grouped_outer(x, b, groups)
    assert outer.dtype == torch.float32 and (outer[1] == 0).all()
    assert_close_to(outer, grouped_outer_torch(x.double(), b.double(), groups), torch.float32)


def test_few_rows_split_a_long_k_over_more_programs(monkeypatch) -> None:
    """A decode step's x A_e^T (few rows, K = 2880): the reduction runs in slices of 3 K steps on the grid's third
    axis (the last one shorter) and their float32 sums add up to the unsplit product, up to float32 rounding."""
    grids = []
    kernel = grouped_matmul_module.jit._grouped_matmul_kernel
    monkeypatch.setattr(grouped_matmul_module.jit, "_grouped_matmul_kernel",
                        type("Spy", (), {"__getitem__": lambda self, grid: grids.append(grid) or kernel[grid]})())
    counts = [3, 0, 5, 4]
    groups = ExpertGroups.from_counts(torch.tensor(counts, device=DEVICE), sum(counts))
    g = torch.Generator().manual_seed(7)
    x = torch.randn(sum(counts), 2880, generator=g).to(DEVICE)
    v = torch.randn(4, 16, 2880, generator=g).to(DEVICE).transpose(1, 2)
    y = grouped_matmul(x, v, groups, 0.5)
    monkeypatch.setattr(grouped_matmul_module, "SPLIT_BELOW_PROGRAMS", 0)
    unsplit = grouped_matmul(x, v, groups, 0.5)
    assert grids[0][2] == 8 and grids[1][2] == 1  # 23 steps of 128 in 8 slices of 3, and the same launch unsplit
    assert_close_to(y, grouped_matmul_torch(x.double(), v.double(), groups) * 0.5, torch.float32)
    assert_close_to(y, unsplit.double(), torch.float32)


def lora_for(counts: list[int], n: int, k: int, rank: int, dtype: torch.dtype, seed: int) -> ExpertLora:
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(len(counts), rank, k, generator=g) / k**0.5).to(dtype).to(DEVICE).requires_grad_()
    b = torch.randn(len(counts), n, rank, generator=g).to(dtype).to(DEVICE).requires_grad_()  # not zero: B's init hides bugs
    return ExpertLora(a, b, scaling=2.0)


@pytest.mark.parametrize("counts,n,k", SHAPES[:2])
def test_expert_linear_gradients_match_autograd_on_the_reference(counts: list[int], n: int, k: int) -> None:
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.float32, seed=7)
    x.requires_grad_(), bias.requires_grad_()
    lora = lora_for(counts, n, k, rank=4, dtype=torch.float32, seed=8)
    dy = torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    y = expert_linear(x, blocks, scales, groups, bias, lora)
    grads = torch.autograd.grad(y, (x, bias, lora.A, lora.B), dy)

    leaves = [t.detach().double().requires_grad_() for t in (x, bias, lora.A, lora.B)]
    ref_lora = ExpertLora(leaves[2], leaves[3], lora.scaling)
    y_ref = expert_linear_torch(leaves[0], blocks, scales, groups, leaves[1], ref_lora)
    ref_grads = torch.autograd.grad(y_ref, leaves, dy.double())
    assert_close_to(y, y_ref, torch.float32)
    for name, grad, ref in zip(("x", "bias", "A", "B"), grads, ref_grads):
        assert grad.dtype == torch.float32, name
        assert_close_to(grad, ref, torch.float32)
    for expert, count in enumerate(counts):
        assert (grads[1][expert] == 0).all() == (count == 0)  # an expert without rows gets no bias gradient


def test_expert_linear_passes_gradcheck_in_float64() -> None:
    """float64 takes the reference primitives, so this checks the Function's backward formulas by finite differences."""
    counts, n, k = [3, 0, 4], 6, 32
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.float64, seed=10)
    lora = lora_for(counts, n, k, rank=2, dtype=torch.float64, seed=11)

    def f(x: torch.Tensor, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return expert_linear(x, blocks, scales, groups, bias, ExpertLora(a, b, lora.scaling))

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), bias.double().requires_grad_(), lora.A, lora.B))


def test_bf16_expert_linear_gradients_stay_near_the_reference() -> None:
    counts, n, k = [5, 0, 70], 40, 96
    x, blocks, scales, groups, bias = inputs(counts, n, k, torch.bfloat16, seed=12)
    lora = lora_for(counts, n, k, rank=4, dtype=torch.bfloat16, seed=13)
    x.requires_grad_()
    dy = torch.randn(sum(counts), n, generator=torch.Generator().manual_seed(14)).to(torch.bfloat16).to(DEVICE)
    grads = torch.autograd.grad(expert_linear(x, blocks, scales, groups, None, lora), (x, lora.A, lora.B), dy)
    leaves = [t.detach().double().requires_grad_() for t in (x, lora.A, lora.B)]
    y_ref = expert_linear_torch(leaves[0], blocks, scales, groups, None, ExpertLora(*leaves[1:], lora.scaling))
    for grad, ref in zip(grads, torch.autograd.grad(y_ref, leaves, dy.double())):
        assert grad.dtype == torch.bfloat16
        assert_close_to(grad, ref, torch.bfloat16)
