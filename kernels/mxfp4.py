"""MXFP4, the format gpt-oss ships its MoE expert weights in, written out in plain PyTorch.

A weight row of K values is cut into blocks of 32 along K. Each block stores 32 e2m1 codes (4 bits: sign, 2-bit
exponent, 1-bit mantissa) and one shared e8m0 scale byte s meaning 2^(s - 127). On disk (Hugging Face gpt-oss
checkpoints) a projection of E experts with N outputs and K inputs is two uint8 tensors:

    <proj>_blocks  [E, N, K/32, 16]   two codes per byte, the LOW nibble holds the even k, the high nibble the odd k
    <proj>_scales  [E, N, K/32]       e8m0 exponents

so w[e, n, k] = E2M1[code(e, n, k)] * 2^(scales[e, n, k // 32] - 127). `quantize` and `dequantize` work on any
leading shape (`[..., K]` <-> `[..., K/32, 16]` + `[..., K/32]`). This file is the reference the Triton kernels are
tested against; it materialises full-precision weights, so it never runs in a hot path.
"""

import torch

from oss_grpo.kernels._e2m1 import WEIGHT_SHIFT

# The 16 e2m1 values in code order: codes 0..7 are +0, .5, 1, 1.5, 2, 3, 4, 6 and codes 8..15 their negatives.
E2M1_VALUES: tuple[float, ...] = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)  # fmt: skip
BLOCK = 32
"""Values sharing one e8m0 scale."""
SCALE_BIAS = 127
# Midpoints between consecutive e2m1 magnitudes: rounding a magnitude = counting the midpoints below it.
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
MIN_SCALE, MAX_SCALE = 2 + WEIGHT_SHIFT, 128 + WEIGHT_SHIFT
"""The scales the Triton kernels decode exactly (_e2m1.WEIGHT_SHIFT): quantize clamps to them, the loaders
refuse a checkpoint with a larger one (`check_scales`). Below MIN_SCALE a weight under 2^-102 may round."""


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """`[..., K/32, 16]` uint8 -> `[..., K]` codes in 0..15, low nibble first (even k), as in the checkpoints."""
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1)  # (..., K/32, 16, 2)
    return codes.flatten(-3)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """`[..., K]` codes in 0..15 -> `[..., K/32, 16]` uint8, the inverse of `unpack_codes`."""
    pairs = codes.to(torch.uint8).unflatten(-1, (-1, BLOCK // 2, 2))  # (..., K/32, 16, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """MXFP4 `blocks [..., K/32, 16]`, `scales [..., K/32]` -> `[..., K]` in `dtype`.

    Exact in float32, float64 and bfloat16 for scales in [MIN_SCALE, MAX_SCALE] (a code has at most 2 significant
    bits); float16 overflows or flushes for scales far from 127.
    """
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} are not an MXFP4 pair")
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    table = torch.tensor(E2M1_VALUES, dtype=wide, device=blocks.device)
    values = table[unpack_codes(blocks).int()].unflatten(-1, (-1, BLOCK))  # (..., K/32, 32)
    values = torch.ldexp(values, (scales.to(torch.int32) - SCALE_BIAS).unsqueeze(-1).to(wide))
    return values.flatten(-2).to(dtype)


def check_scales(name: str, scales: torch.Tensor) -> None:
    """Raise ValueError naming `name` when a scale exceeds MAX_SCALE (2^26 or more, no trained weight's; the kernels
    would decode infinities). One reduction: run it when weights load, never per call."""
    largest = int(scales.max()) if scales.numel() else 0
    if largest > MAX_SCALE:
        raise ValueError(f"{name}: MXFP4 scale {largest} (2^{largest - SCALE_BIAS}) is above {MAX_SCALE}, the largest "
                         "the expert kernels decode")


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[..., K]` float -> (`blocks [..., K/32, 16]`, `scales [..., K/32]`), round to nearest, ties to even.

    Each block's scale is the OCP MX choice 2^(floor(log2(amax)) - 2), the largest power of two that keeps amax
    below 8; magnitudes above 6 after scaling saturate to 6. Values already on the MXFP4 grid come back exactly.
    """
    if w.shape[-1] % BLOCK:
        raise ValueError(f"MXFP4 needs the last dim to be a multiple of {BLOCK}, got shape {tuple(w.shape)}")
    w = w.detach().to(torch.float64).unflatten(-1, (-1, BLOCK))  # (..., K/32, 32)
    amax = w.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax)) - 2, torch.zeros_like(amax))
    scales = (exponent + SCALE_BIAS).clamp(MIN_SCALE, MAX_SCALE)
    magnitude = torch.ldexp(w.abs(), -(scales - SCALE_BIAS).unsqueeze(-1))
    midpoints = torch.tensor(_MIDPOINTS, dtype=torch.float64, device=w.device)
    index = torch.bucketize(magnitude.contiguous(), midpoints)  # a tie lands on the smaller magnitude ...
    tie = magnitude == midpoints[index.clamp(max=len(_MIDPOINTS) - 1)]
    index = index + (tie & (index % 2 == 1)).long()  # ... unless that one has an odd code (ties to even)
    codes = index + 8 * torch.signbit(w).long()
    return pack_codes(codes.flatten(-2)), scales.to(torch.uint8)
