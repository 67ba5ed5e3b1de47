import torch
import triton
import triton.language as tl


@triton.jit
def dequantize_kernel(BLOCKS, SCALES, OUT, K, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = ks < K
    byte = tl.load(BLOCKS + n * (K // 2) + ks // 2, mask=mask, other=0).to(tl.int32)
    code = tl.where(ks % 2 == 0, byte & 15, byte >> 4)  # the low nibble holds the even k
    scale = tl.load(SCALES + n * (K // 32) + ks // 32, mask=mask, other=127).to(tl.int32)
    magnitude = code & 7  # 0, .5, 1, 1.5, 2, 3, 4, 6: (1 + m/2) * 2**(e - 1), or m/2 for e == 0
    exponent, mantissa = magnitude >> 1, magnitude & 1
    normal = (1.0 + 0.5 * mantissa.to(tl.float32)) * (1 << tl.maximum(exponent - 1, 0)).to(tl.float32)
    value = tl.where(exponent == 0, 0.5 * mantissa.to(tl.float32), normal)
    value = tl.where(code >= 8, -value, value)
    two_to_scale = (scale << 23).to(tl.float32, bitcast=True)  # 2**(s - 127), exact
    tl.store(OUT + n * K + ks, (value * two_to_scale).to(OUT.dtype.element_ty), mask=mask)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> None:
    n, k = out.shape
    dequantize_kernel[(n, triton.cdiv(k, 256))](blocks, scales, out, k, BLOCK=256)
