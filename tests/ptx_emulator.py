"""The inline PTX of our Triton kernels run inside Triton's CPU interpreter, which refuses inline assembly.

Why: the packed decoders of kernels/_mxfp4_matmul.py are PTX, and every bf16 run on a GPU of compute capability 9+
takes them; without this they are tested only where a GPU is lent. `emulate_inline_asm` executes the few PTX
instructions our kernels use on numpy arrays, with Triton's operand packing: one asm invocation takes `pack`
consecutive elements, and an operand narrower than 32 bits packs them into registers, the first element in the low
bits. Anything else it meets (another opcode, a register selector for prmt) raises, naming it, rather than guess.
"""

import re
from collections.abc import Callable

import numpy as np
from triton.runtime.interpreter import TensorHandle, _get_np_dtype

U32 = np.uint32
MASK = 0xFFFFFFFF


def _prmt(a: np.ndarray, b: np.ndarray, selector: int) -> np.ndarray:
    """prmt.b32, default mode: result byte i is byte (nibble i of the selector) & 7 of {b, a} (a holds bytes 0-3, b
    bytes 4-7), or that byte's sign bit copied to all 8 bits when the nibble's bit 3 is set."""
    source = (b.astype(np.uint64) << 32) | a
    out = np.zeros(a.shape, dtype=np.uint64)
    for i in range(4):
        nibble = (selector >> (4 * i)) & 0xF
        byte = (source >> np.uint64(8 * (nibble & 7))) & 0xFF
        if nibble & 8:
            byte = np.where(byte & 0x80, np.uint64(0xFF), np.uint64(0))
        out |= byte << np.uint64(8 * i)
    return out.astype(U32)


def _bf16x2_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mul.rn.bf16x2: each 16-bit lane a bfloat16, multiplied and rounded to nearest even. The product of two bf16
    values is exact in float32 wherever it is a normal float32 (8 + 8 significant bits), so rounding float32's
    product to bf16 rounds once; NaN payloads are not modelled."""
    lanes = []
    for shift in (0, 16):
        fa = (((a >> shift) & 0xFFFF) << 16).astype(U32).view(np.float32)
        fb = (((b >> shift) & 0xFFFF) << 16).astype(U32).view(np.float32)
        bits = (fa * fb).view(U32).astype(np.uint64)
        lanes.append(((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF)
    return (lanes[0] | (lanes[1] << 16)).astype(U32)


OPCODES: dict[str, Callable[..., np.ndarray]] = {
    "mov.b32": lambda a: a,
    "and.b32": lambda a, b: a & b,
    "or.b32": lambda a, b: a | b,
    "shl.b32": lambda a, b: ((a.astype(np.uint64) << b) & MASK).astype(U32),
    "shr.b32": lambda a, b: a >> b,  # .b32 and .u32 shift in zeros
    "mul.lo.u32": lambda a, b: ((a.astype(np.uint64) * b) & MASK).astype(U32),
    "mul.rn.bf16x2": _bf16x2_mul,
}


def run_ptx(asm: str, registers: dict[str, np.ndarray]) -> None:
    """Execute `asm` on `registers` (names such as "$0" or a block's own `.reg`s -> uint32 arrays), in place."""
    for statement in asm.replace("{", ";").replace("}", ";").split(";"):
        statement = statement.strip()
        if not statement or statement.startswith(".reg"):
            continue
        opcode, operands = statement.split(None, 1)
        dest, *sources = [o.strip() for o in operands.split(",")]
        if opcode == "prmt.b32":
            a, b, selector = sources
            if not re.fullmatch(r"0x[0-9a-fA-F]+|\d+", selector):
                raise NotImplementedError(f"prmt with a register selector: {statement!r}")
            registers[dest] = _prmt(_value(a, registers), _value(b, registers), int(selector, 0))
        elif opcode in OPCODES:
            registers[dest] = OPCODES[opcode](*(_value(s, registers) for s in sources))
        else:
            raise NotImplementedError(f"PTX opcode {opcode!r} is not emulated: {statement!r}")


def _value(operand: str, registers: dict[str, np.ndarray]) -> np.ndarray | U32:
    if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", operand):
        return U32(int(operand, 0))
    return registers[operand]


def _bits(handle: TensorHandle) -> tuple[np.ndarray, int]:
    """A handle's elements as unsigned integers of their own width, and that width."""
    width = handle.dtype.scalar.primitive_bitwidth
    return handle.data.view(np.dtype(f"uint{width}")).reshape(-1), width


class _Results:
    def __init__(self, handles: list[TensorHandle]) -> None:
        self.handles = handles

    def get_result(self, i: int) -> TensorHandle:
        return self.handles[i]


def emulate_inline_asm(builder, asm: str, constraints: str, values: list[TensorHandle], types: list, is_pure: bool,
                       pack: int) -> _Results:  # fmt: skip
    """A drop-in for the interpreter's `InterpreterBuilder.create_inline_asm` (install it with monkeypatch)."""
    shape = values[0].data.shape
    size = int(np.prod(shape))
    if size % pack:
        raise ValueError(f"{size} elements do not split into asm invocations of {pack}")
    groups = size // pack
    output_widths = [t.scalar.primitive_bitwidth for t in types]
    output_registers = [-(-pack * w // 32) for w in output_widths]
    registers, n = {}, sum(output_registers)
    for handle in values:  # inputs follow the outputs: $n, $n+1, ...
        bits, width = _bits(handle)
        bits = bits.reshape(groups, pack).astype(np.uint64)
        for r in range(-(-pack * width // 32)):
            word = np.zeros(groups, dtype=np.uint64)
            for j in range(pack):
                if (j * width) // 32 == r:
                    word |= bits[:, j] << np.uint64((j * width) % 32)
            registers[f"${n}"] = word.astype(U32)
            n += 1
    if n != len(constraints.split(",")):
        raise ValueError(f"{n} registers for {len(constraints.split(','))} constraints {constraints!r}")
    for r in range(sum(output_registers)):
        registers[f"${r}"] = np.zeros(groups, dtype=U32)
    run_ptx(asm, registers)
    results, first = [], 0
    for t, width, count in zip(types, output_widths, output_registers):
        elements = np.zeros((groups, pack), dtype=np.uint64)
        for j in range(pack):
            word = registers[f"${first + (j * width) // 32}"].astype(np.uint64)
            elements[:, j] = (word >> np.uint64((j * width) % 32)) & ((1 << width) - 1)
        data = elements.astype(np.dtype(f"uint{width}")).view(_get_np_dtype(t.scalar)).reshape(shape)
        results.append(TensorHandle(data, t.scalar))
        first += count
    return _Results(results)
