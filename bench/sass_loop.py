"""Compile one of the MXFP4 expert kernels for sm_90 on a machine without a GPU and count what its main loop runs.

    python bench/sass_loop.py _mxfp4_wx_kernel 128,128,64,8,4 [--swizzled] [--weights-right] [--scale-words]
        [--kernels FILE]

The tile is (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); the other constants are the ones mxfp4_matmul launches a bf16
GPU call with (packed decoding, no bias, 32 experts; the scales one byte a load unless --scale-words, as
Mxfp4Experts' padded scales are read), and the integer arguments get the divisibility by 16 that Triton's
launcher finds on gpt-oss shapes, without which it pipelines differently. Prints the registers per thread, the shared
memory, the kernel's instruction count and, per loop (a backward branch), its instructions and its shared, global and
tensor-core instructions, and the loop's register races (`register_races`; tests/test_kernel_sass.py asserts there
are none). Run it with the Triton of the GPU machine (3.6 there): another version compiles other code.
`--kernels` takes another copy of the kernels' file, e.g. an older commit's, to compare the two.
"""

import argparse
import importlib.util
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
DIVISIBLE = {"N", "K", "K_BYTES", "K_SLICE", "num_experts", "stride_xm", "stride_ym", "stride_dym", "stride_dxm",
             "stride_we", "stride_wn", "stride_se", "stride_be"}  # fmt: skip
"""Integer arguments that are multiples of 16 at gpt-oss shapes (stride_sn = K / 32 = 90 is not)."""
POINTERS = {"X": "*bf16", "Y": "*bf16", "DY": "*bf16", "DX": "*bf16", "Bias": "*bf16", "W": "*u8", "S": "*u8",
            "V": "*fp32", "XA": "*bf16", "LB": "*fp32", "Offsets": "*i32", "TileExpert": "*i32",
            "TileRow": "*i32"}  # fmt: skip


def compile_kernel(path: Path, name: str, tile: tuple[int, ...], swizzled: bool, weights_right: bool = False,
                   scale_words: bool = False):
    spec = importlib.util.spec_from_file_location("kernels_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, name)
    block_m, block_n, block_k, warps, stages = tile
    values = dict(HAS_BIAS=False, HAS_LORA=False, R_PAD=16, DOT_DTYPE=triton.language.bfloat16, PACKED=True,
                  SWIZZLED=swizzled, W_RIGHT=weights_right, SCALE_WORDS=scale_words, E_PAD=32, BLOCK_M=block_m,
                  BLOCK_N=block_n, BLOCK_K=block_k)
    signature = {a: POINTERS.get(a, "fp32" if a in ("scale", "lora_scale") else "i32") for a in fn.arg_names}
    constants = {}
    for i, arg in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            signature[arg], constants[(i,)] = "constexpr", values[arg]
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if signature[a].startswith("*") or a in DIVISIBLE}  # fmt: skip
    source = ASTSource(fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


def loop_bodies(sass: str) -> list[list[str]]:
    """Each loop of the disassembly: the instructions from a label to the branch back to it."""
    instructions, labels = [], {}
    for line in sass.splitlines():
        if label := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[label.group(1)] = len(instructions)
        elif re.match(r"\s+/\*[0-9a-f]{4}\*/", line):
            instructions.append(line)
    bodies = []
    for i, line in enumerate(instructions):
        target = re.search(r"BRA[^`]*`\(\.(L_x_\d+)\)", line)
        if target and labels.get(target.group(1), i + 1) <= i:
            bodies.append(instructions[labels[target.group(1)] : i + 1])
    return bodies


def loops(sass: str) -> list[dict]:
    """Each loop of the disassembly, counted."""
    return [{"instructions": len(body), "shared loads": sum("LDS" in b for b in body),
             "global loads": sum("LDG" in b for b in body),
             "tensor core": sum(op in b for b in body for op in ("HGMMA", "HMMA")),
             "register races": len(register_races(body))} for body in loop_bodies(sass)]  # fmt: skip


def register_races(body: list[str]) -> list[str]:
    """The instructions of a loop body that write a register an asynchronous tensor-core instruction may still read.

    A Hopper `HGMMA` (wgmma) whose A operand comes from registers reads them after it issues, until a
    `WARPGROUP.DEPBAR.LE gsb0, n` leaves at most n of them in flight; writing those registers before then is undefined
    (PTX ISA, wgmma.mma_async). Triton 3.6 lets wgmmas run across the loop's back edge and ptxas has been seen to write
    the next step's decoded codes into a register an in-flight wgmma reads: infinities at 512 rows per expert
    (docs/BENCHMARKS.md, session 17). The body is scanned twice, so that what the first pass leaves in flight at the
    back edge is in flight when the second begins; each pending wgmma holds its 4 operand registers.
    """
    pending: list[set[int]] = []
    races = []
    for scan in range(2):
        for line in body:
            if wait := re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x(\d+)", line):
                keep = int(wait.group(1))
                pending = pending[max(len(pending) - keep, 0) :]
            elif operand := re.search(r"HGMMA\.\S+ R\d+, R(\d+),", line):
                first = int(operand.group(1))
                pending.append(set(range(first, first + 4)))
            elif written := re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s+R(\d+)\b", line):
                stores = written.group(1).startswith(("ST", "LDGSTS", "RED", "ATOM"))  # their first register is read
                if scan and not stores and any(int(written.group(2)) in operands for operands in pending):
                    races.append(line.strip())
    return races


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", help="e.g. _mxfp4_wx_kernel, _mxfp4_wx_transposed_kernel (_grouped_matmul_kernel "
                        "with --kernels kernels/_grouped_matmul.py)")
    parser.add_argument("tile", help="BLOCK_M,BLOCK_N,BLOCK_K,warps,stages")
    parser.add_argument("--swizzled", action="store_true", help="the forward reading codes in swizzle_k order")
    parser.add_argument("--weights-right", action="store_true", help="the forward's W_RIGHT (Tiles.weights_right)")
    parser.add_argument("--scale-words", action="store_true", help="scales read as 32-bit words (pad_scales)")
    parser.add_argument("--kernels", type=Path, default=ROOT / "kernels" / "_mxfp4_matmul.py")
    parser.add_argument("--loop-out", type=Path, help="write the longest loop's instructions to this file")
    args = parser.parse_args()
    tile = tuple(int(v) for v in args.tile.split(","))
    compiled = compile_kernel(args.kernels, args.kernel, tile, args.swizzled, args.weights_right, args.scale_words)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:  # one per process: the tests compile several tiles
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tools / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tools / "nvdisasm", "-c", f.name], capture_output=True, text=True).stdout
    registers = re.search(r"REG:(\d+)", usage).group(1)
    total = sum(bool(re.match(r"\s+/\*[0-9a-f]{4}\*/", line)) for line in sass.splitlines())
    if args.loop_out:
        args.loop_out.write_text("".join(line + "\n" for line in max(loop_bodies(sass), key=len)))
    print(f"{args.kernel} {tile}: {registers} registers, {compiled.metadata.shared} B shared, {total} instructions;"
          f" loops: {[loop for loop in loops(sass) if loop['instructions'] > 1]}")


if __name__ == "__main__":
    main()
