"""The PTX emulator that lets the interpreter run our kernels' inline assembly: its semantics on cases worked by hand
from the PTX ISA, so that a kernel test passing under it means what it says."""

import numpy as np
import pytest
from ptx_emulator import run_ptx


def run(asm: str, **registers: int) -> int:
    state = {f"${name[1:]}" if name.startswith("r") else name: np.array([value], dtype=np.uint32)
             for name, value in registers.items()}  # fmt: skip
    run_ptx(asm, state)
    return int(state["$0"][0])


def test_prmt_picks_bytes_of_both_registers_and_replicates_signs() -> None:
    a, b = 0x8433_2211, 0x7766_55F5
    assert run("prmt.b32 $0, $1, $2, 0x3210;", r1=a, r2=b) == a
    assert run("prmt.b32 $0, $1, $2, 0x7654;", r1=a, r2=b) == b
    assert run("prmt.b32 $0, $1, $2, 0x4140;", r1=a, r2=b) == 0xF5_22_F5_11  # byte 4 is b's lowest
    assert run("prmt.b32 $0, $1, $2, 0x8C83;", r1=a, r2=b) == 0x00_FF_00_84  # 8 + i: byte i's sign bit, 8 times


def test_bf16x2_multiply_rounds_each_lane_to_nearest_even() -> None:
    one_and_a_half, one_and_a_bit, two = 0x3FC0, 0x3F81, 0x4000  # 1.5, 1 + 2^-7, 2.0
    # 1.5 (1 + 2^-7) lies halfway between 1.5 + 2^-7 (odd last bit, 0x3FC1) and 1.5 + 2^-6 (even, 0x3FC2)
    product = run("mul.rn.bf16x2 $0, $1, $2;", r1=one_and_a_half | two << 16, r2=one_and_a_bit | two << 16)
    assert product == 0x3FC2 | 0x4080 << 16  # and 2 x 2 = 4 in the high lane


def test_shifts_and_multiplies_wrap_at_32_bits() -> None:
    assert run("shl.b32 $0, $1, 4;", r1=0xF000_0001) == 0x10
    assert run("shr.b32 $0, $1, 4;", r1=0xF000_0000) == 0x0F00_0000  # zeros shifted in, not the sign
    assert run("{ .reg .b32 t; mul.lo.u32 t, $1, 0x1040; and.b32 $0, t, 0xFFFFFFFF; }", r1=0x0010_0001) == 0x0400_1040


def test_what_it_does_not_emulate_is_named() -> None:
    with pytest.raises(NotImplementedError, match="cvt.rn.f32.s32"):
        run("cvt.rn.f32.s32 $0, $1;", r1=1)
    with pytest.raises(NotImplementedError, match="register selector"):
        run("prmt.b32 $0, $1, $2, $3;", r1=1, r2=2, r3=3)
