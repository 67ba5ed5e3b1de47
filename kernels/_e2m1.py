"""Decoding MXFP4's e2m1 codes into registers inside the Triton kernels of _mxfp4_matmul.py: exact, and cheap.

An e2m1 code (sign, 2 exponent bits, 1 mantissa bit) put into a float's bits at the exponent/mantissa boundary
reads as the code times 2^-126 (the code 0.5 a subnormal), so decoding is a few integer operations and one multiply
by the block's scale folded with 2^126. That multiply is by 2^(s - 1 - WEIGHT_SHIFT), one power of two that stays a
normal float for every scale the kernels accept; each weight comes out times 2^-WEIGHT_SHIFT, and the kernels scale
their float32 sums back by 2^WEIGHT_SHIFT (exact).

    _e2m1_to_bf16         one code per operation, float32 math (any GPU, and the interpreter)
    _e2m1_bytes_to_bf16   PTX, two codes per instruction, each byte's two codes in one register in k order (forward)
    _e2m1_pairs_to_bf16   PTX, two codes per instruction, pairs from two bytes (dX with the codes loaded transposed)

The PTX decoders need compute capability 9+ (mul.bf16x2); the interpreter runs them only in the tests, emulated
(tests/ptx_emulator.py).
"""

import triton
import triton.language as tl

WEIGHT_SHIFT = 24
"""The decoders make each weight times 2^-WEIGHT_SHIFT and the wx kernels multiply their float32 sums by
2^WEIGHT_SHIFT. Why: a code placed in a float's bits reads as the code times 2^-126, and one multiply by
2^(s - 1 - WEIGHT_SHIFT) then scales it, where 2^(s - 1) itself would overflow above s = 128 and take a second
multiply (by 2^126, then by the scale: one instruction in five of the packed decoders). Every value on the way stays a
normal float for s in [mxfp4.MIN_SCALE, mxfp4.MAX_SCALE] = [26, 152], weights of 2^-102 to 12 * 2^24."""
_SCALE_OFFSET = tl.constexpr(126 - WEIGHT_SHIFT)  # s + this = the float exponent field of 2^(s - 1 - WEIGHT_SHIFT)
_UNSHIFT = tl.constexpr(2.0**WEIGHT_SHIFT)


@triton.jit
def _e2m1_to_bf16(codes, scale):
    """e2m1 codes (int32, the code in bits 0..3) and the multiplier 2^(s - 1 - WEIGHT_SHIFT) (float32) -> the exact
    bfloat16 values times 2^-WEIGHT_SHIFT.

    The code's sign and 3 magnitude bits go to float32 bits 31 and 24..22, which read as the code times 2^-126 (the
    code 0.5 becomes a denormal); one exact multiply finishes it. That is 3 integer ops and 1 float op a code, against
    ~11 integer ops for building the bf16 bits with 0.5 and 0 handled apart (measured on the H100: 20-45% faster
    kernels); it needs denormals kept, which Triton's float multiply does.
    """
    raw = (((codes & 7) << 22) | ((codes & 8) << 28)).to(tl.float32, bitcast=True)
    return (raw * scale).to(tl.bfloat16)


@triton.jit
def _e2m1_bytes_to_bf16(codes, scale_pair):
    """Bytes of two e2m1 codes (uint8) and the multiplier 2^(s - 1 - WEIGHT_SHIFT) as bf16 bits in both halves of an
    int32 -> the exact bfloat16 values of (low nibble, high nibble) times 2^-WEIGHT_SHIFT, four bytes per PTX block
    (GPUs of compute capability 9+ only).

    The idea of _e2m1_to_bf16, two codes per instruction, and each byte's two codes in one register, low nibble in the
    low half: the k order the forward's dot takes its left operand in, so joining the two halves into the tile costs
    no instruction (one prmt a register when the halves came from different bytes). The nibbles are split (and, shr),
    prmt puts byte i's low and high nibble into the two 16-bit lanes, one multiply by 2^12 + 2^6 copies each code
    to bits 12..15 and 6..9 of its lane (disjoint: no carry), and one and keeps the sign at bit 15 and the 3
    magnitude bits at 8..6 (the code times 2^-126, 0.5 a subnormal); one mul.bf16x2 finishes both lanes: 4.75
    instructions a register of two codes.
    """
    pairs = tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 lo, hi;
        and.b32 lo, $4, 0x0F0F0F0F;
        shr.b32 hi, $4, 4;
        and.b32 hi, hi, 0x0F0F0F0F;
        prmt.b32 $0, lo, hi, 0x8480;  prmt.b32 $1, lo, hi, 0x8581;
        prmt.b32 $2, lo, hi, 0x8682;  prmt.b32 $3, lo, hi, 0x8783;
        mul.lo.u32 $0, $0, 0x1040;  and.b32 $0, $0, 0x81C081C0;
        mul.lo.u32 $1, $1, 0x1040;  and.b32 $1, $1, 0x81C081C0;
        mul.lo.u32 $2, $2, 0x1040;  and.b32 $2, $2, 0x81C081C0;
        mul.lo.u32 $3, $3, 0x1040;  and.b32 $3, $3, 0x81C081C0;
        mul.rn.bf16x2 $0, $0, $5;
        mul.rn.bf16x2 $1, $1, $6;
        mul.rn.bf16x2 $2, $2, $7;
        mul.rn.bf16x2 $3, $3, $8;
        }
        """,
        constraints="=r,=r,=r,=r,r,r,r,r,r",
        args=[codes, scale_pair],
        dtype=tl.int32,
        is_pure=True,
        pack=4,
    )
    low = pairs.to(tl.int16).to(tl.bfloat16, bitcast=True)
    high = (pairs >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return low, high


@triton.jit
def _e2m1_pairs_to_bf16(codes, scale_bits):
    """Bytes of two e2m1 codes (uint8) and the bf16 bits of the multiplier 2^(s - 1 - WEIGHT_SHIFT) (int16) -> the
    exact bfloat16 values of (low nibble, high nibble) times 2^-WEIGHT_SHIFT, four bytes per PTX block (GPUs of
    compute capability 9+ only).

    The same idea as _e2m1_to_bf16, two codes per instruction: prmt spreads two bytes into the two 16-bit lanes of a
    register, shifts and masks put each code's sign at bit 15 and its 3 magnitude bits at 8..6 of its lane (the code
    times 2^-126, 0.5 a subnormal), and one mul.bf16x2 finishes both lanes at once: about 3 operations a code against
    about 11.
    """
    return tl.inline_asm_elementwise(
        asm="""
        {
        .reg .b32 lo, hi, t;
        prmt.b32 lo, $4, 0, 0x4140;
        prmt.b32 hi, $4, 0, 0x4342;
        shl.b32 t, lo, 12;  and.b32 t, t, 0x80008000;  shl.b32 $0, lo, 6;  and.b32 $0, $0, 0x01C001C0;  or.b32 $0, $0, t;
        shl.b32 t, hi, 12;  and.b32 t, t, 0x80008000;  shl.b32 $1, hi, 6;  and.b32 $1, $1, 0x01C001C0;  or.b32 $1, $1, t;
        shl.b32 t, lo, 8;  and.b32 t, t, 0x80008000;  shl.b32 $2, lo, 2;  and.b32 $2, $2, 0x01C001C0;  or.b32 $2, $2, t;
        shl.b32 t, hi, 8;  and.b32 t, t, 0x80008000;  shl.b32 $3, hi, 2;  and.b32 $3, $3, 0x01C001C0;  or.b32 $3, $3, t;
        mul.rn.bf16x2 $0, $0, $5;
        mul.rn.bf16x2 $1, $1, $6;
        mul.rn.bf16x2 $2, $2, $5;
        mul.rn.bf16x2 $3, $3, $6;
        }
        """,
        constraints="=r,=r,=r,=r,r,r,r",
        args=[codes, scale_bits],
        dtype=(tl.bfloat16, tl.bfloat16),
        is_pure=True,
        pack=4,
    )
