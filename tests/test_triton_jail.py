"""How the kernel checker's GPU jail launches compiled Triton without Triton's C launcher (`_triton_jail`): the
argument packing, checked here against the conventions of Triton's generated C; the launch itself runs only on a
GPU (tests/test_kernelgen.py checks compiled Triton kernels in the jail there)."""

import ctypes
import struct

import pytest
import torch

from oss_grpo.rewards import _triton_jail


def test_arguments_are_packed_as_tritons_c_launcher_packs_them() -> None:
    types = ["*fp32", "i32", "constexpr", ("fp32", "*bf16"), "bf16", "fp16", "i1", "u64", "i64", "fp64"]
    values = [0x7F00, -3, 128, (1.1, None), 1.1, 1.1, True, 2**64 - 1, -(2**40), 1.1]
    seen: list[tuple[object, int]] = []

    def address(value: object, index: int) -> int:
        seen.append((value, index))
        return 0 if value is None else int(value)

    params = _triton_jail.kernel_params(_triton_jail.flatten(types), _triton_jail.flatten(values), address)
    fp32 = struct.unpack("<I", struct.pack("<f", 1.1))[0]
    assert [p.value for p in params] == [
        0x7F00, -3,  # the constexpr (128) is not a kernel parameter
        fp32, 0,  # a tuple argument is flattened in order; None is a null pointer
        fp32 >> 16,  # bf16: float32's top half (Triton truncates, it does not round)
        int(torch.tensor(1.1, dtype=torch.float16).view(torch.int16)) & 0xFFFF,  # fp16: IEEE half bits
        1, 2**64 - 1, -(2**40), struct.unpack("<Q", struct.pack("<d", 1.1))[0]]
    assert [ctypes.sizeof(p) for p in params] == [8, 4, 4, 8, 2, 2, 1, 8, 8, 8]  # each in its C type's width
    assert seen == [(0x7F00, 0), (None, 4)]  # pointers go through the resolver with their flat index


def test_unsupported_arguments_fail_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="takes 2 arguments, 1 were given"):
        _triton_jail.kernel_params(["i32", "i32"], [1], lambda v, i: 0)
    with pytest.raises(RuntimeError, match="'nvTmaDesc' is not supported"):
        _triton_jail.kernel_params(["nvTmaDesc"], [object()], lambda v, i: 0)


def test_the_cubin_stage_hands_the_driver_nul_terminated_ptx() -> None:
    stages = {"ptx": None, "cubin": None}
    _triton_jail._ptx_to_the_driver(None, stages, None, None, 90)
    assert stages["cubin"](".version 8.7\n.target sm_90a\n", {}) == b".version 8.7\n.target sm_90a\n\0"
