"""Sweep tile shapes of the MXFP4 expert kernels on one GPU, to pick the ones kernels/mxfp4_matmul.py uses.

    python bench/mxfp4_tune.py [--rows 64,2048,4096,16384] [--kinds scaled,wx,wxs,wxt] [--experts 32]
        [--scales bytes,words]

gpt-oss gate_up shape (N=5760, K=2880), random top-4 routing over the experts, random (never zero) inputs. For each
kernel variant and routed-row count it prints the median time (triton.testing.do_bench, L2 flushed between runs),
the bf16 grouped cuBLAS time of the same product in the same run, and the error against the float32 reference; a
configuration that fails to compile or exceeds 1e-2 relative error is reported as such, never timed.
"""

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import triton

_shim = Path(tempfile.mkdtemp()) / "oss_grpo"
_shim.symlink_to(Path(__file__).resolve().parents[1])
sys.path.insert(0, str(_shim.parent))

from oss_grpo.kernels import _mxfp4_matmul as jit  # noqa: E402
from oss_grpo.kernels.mxfp4 import dequantize  # noqa: E402
from oss_grpo.kernels.mxfp4_matmul import (  # noqa: E402
    _lora_args,
    dot_dtype,
    mxfp4_matmul_torch,
    mxfp4_matmul_transposed_torch,
    packed_dequant,
    pad_scales,
    swizzle_k,
)
from oss_grpo.kernels.routing import ExpertGroups, route, sort_by_expert  # noqa: E402

N, K, TOP_K = 5760, 2880, 4
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel: "scaled" = tl.dot_scaled forward, "wx" = forward
# with the weights dequantised in registers as the left operand (BLOCK_N of W's rows by BLOCK_M routed rows),
# "wxs" = "wx" with the codes read in swizzled order (mxfp4_matmul.swizzle_k; the time includes copying x into that
# order), "wxt" = dX the same way as "wx" (BLOCK_N of the reduction by BLOCK_K output columns), "xw" = the forward
# with the decoded weights as the right operand, from shared memory.
CONFIGS: dict[str, list[tuple[int, int, int, int, int]]] = {
    "scaled": [(16, 64, 128, 4, 3), (64, 64, 128, 4, 3), (128, 128, 128, 8, 3)],
    "wx": [
        (16, 32, 64, 2, 4), (16, 32, 128, 2, 3), (16, 32, 128, 2, 4), (16, 32, 128, 4, 4), (16, 64, 64, 4, 4),
        (16, 64, 64, 4, 6), (16, 64, 128, 2, 4), (16, 64, 128, 4, 4), (16, 64, 128, 4, 6), (16, 128, 128, 4, 4),
        (16, 128, 256, 4, 3), (32, 32, 128, 2, 4), (32, 64, 128, 2, 4), (32, 128, 128, 4, 4), (64, 64, 128, 2, 3),
        (64, 128, 128, 4, 3), (64, 128, 128, 8, 4), (128, 64, 64, 4, 4), (128, 64, 128, 4, 3), (128, 128, 64, 8, 4),
        (128, 128, 128, 8, 3), (128, 256, 64, 8, 3), (256, 64, 64, 4, 4), (256, 64, 128, 4, 3), (256, 64, 128, 8, 3),
        (256, 128, 64, 8, 3),
    ],
    "wxt": [
        (16, 32, 128, 2, 4), (16, 64, 128, 2, 4), (16, 64, 128, 4, 4), (16, 128, 128, 4, 4), (32, 32, 128, 2, 4),
        (32, 64, 128, 2, 4), (32, 64, 128, 4, 4), (64, 32, 128, 2, 3), (64, 64, 128, 4, 3), (64, 128, 128, 8, 3),
        (128, 64, 128, 4, 3), (128, 64, 128, 8, 3), (128, 128, 64, 8, 3), (128, 128, 128, 8, 3), (128, 64, 256, 8, 3),
        (256, 64, 128, 8, 3), (256, 64, 64, 8, 3), (256, 64, 64, 8, 4),
    ],
}  # fmt: skip
CONFIGS["wxs"] = CONFIGS["wx"]
CONFIGS["xw"] = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 64, 64, 8, 3), (256, 128, 32, 8, 3),
                 (256, 128, 64, 8, 3)]  # the forward with the weights as the right operand (Tiles.weights_right)


def median_us(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3


def launcher(kind: str, cfg: tuple[int, int, int, int, int], x, dy, w, scales, groups: ExpertGroups,
             words: bool = False) -> Callable:
    """A no-argument call of one kernel variant with one tile configuration, output allocated once; no bias, no LoRA
    (mxfp4_matmul's own placeholders for them, never read). `words`: the scales read as 32-bit words (they must be
    `pad_scales`'), else one byte at a time whatever their layout."""
    bm, bn, bk, warps, stages = cfg
    tiles = groups.row_tiles(bm)
    strides = (w.stride(0), w.stride(1), scales.stride(0), scales.stride(1))
    opts = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, E_PAD=groups.padded_experts, num_warps=warps, num_stages=stages)
    decode = dict(DOT_DTYPE=dot_dtype(x), PACKED=packed_dequant(x),  # as mxfp4_matmul launches the wx kernels
                  SCALE_WORDS=words)
    table = (groups.offsets, groups.num_experts)
    if kind == "wxt":
        out = torch.empty(dy.shape[0], K, dtype=dy.dtype, device=dy.device)
        grid = (triton.cdiv(K, bk), tiles)
        lora, constants = _lora_args(None, dy)
        args = (dy, out, w, scales, *table, N, K // 2, dy.stride(0), out.stride(0), *strides, *lora)
        kernel = jit._mxfp4_wx_transposed_kernel
        return lambda: (kernel[grid](*args, **constants, **decode, **opts), out)[1]
    out = torch.empty(x.shape[0], N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, bn), tiles)
    lora, constants = _lora_args(None, x)
    opts |= dict(HAS_BIAS=False, **constants)
    rest = (x.stride(0), out.stride(0), *strides, 0, *lora)  # x stands in for the bias, stride 0
    if kind in ("wx", "wxs", "xw"):
        swizzled = kind == "wxs"
        order = swizzle_k if swizzled else lambda x: x
        kernel = jit._mxfp4_wx_kernel
        return lambda: (kernel[grid](order(x), out, w, scales, x, *table, N, K // 2, *rest, SWIZZLED=swizzled,
                                     W_RIGHT=kind == "xw", **decode, **opts), out)[1]  # fmt: skip
    kernel = jit._mxfp4_scaled_kernel
    return lambda: (kernel[grid](x, out, w, scales, x, *table, N, K, *rest, DOT_DTYPE=decode["DOT_DTYPE"], **opts),
                    out)[1]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,2048,4096,16384")
    parser.add_argument("--kinds", default="", help="comma-separated CONFIGS keys to sweep (default all)")
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--tiles", default="", help="only these tiles, e.g. '16,32,128,2,3;32,64,128,2,4'")
    parser.add_argument("--scales", default="bytes", help="'bytes', 'words' (pad_scales) or both, comma-separated")
    args = parser.parse_args()
    only = {tuple(map(int, t.split(","))) for t in args.tiles.split(";") if t}
    torch.manual_seed(0)
    e = args.experts
    blocks = torch.randint(0, 256, (e, N, K // 32, 16), dtype=torch.uint8, device="cuda")
    scales = torch.randint(118, 130, (e, N, K // 32), dtype=torch.uint8, device="cuda")
    w = blocks.reshape(e, N, K // 2)
    w_bf16 = dequantize(blocks, scales, torch.bfloat16)
    for rows in map(int, args.rows.split(",")):
        indices, _ = route(torch.randn(max(rows // TOP_K, 1), e, device="cuda"), TOP_K)
        groups = sort_by_expert(indices, e).groups
        m = groups.num_rows
        x = torch.randn(m, K, dtype=torch.bfloat16, device="cuda")
        dy = torch.randn(m, N, dtype=torch.bfloat16, device="cuda")
        offs = groups.offsets[1:]
        refs = {
            "forward": mxfp4_matmul_torch(x.float(), blocks, scales, groups),
            "dX": mxfp4_matmul_transposed_torch(dy.float(), blocks, scales, groups),
        }
        base = {
            "forward": median_us(lambda: torch._grouped_mm(x, w_bf16.transpose(1, 2), offs=offs)),
            "dX": median_us(lambda: torch._grouped_mm(dy, w_bf16, offs=offs)),
        }
        for kind, configs in CONFIGS.items():
            if args.kinds and kind not in args.kinds.split(","):
                continue
            pass_ = "dX" if kind == "wxt" else "forward"
            for cfg, layout in ((c, a) for c in configs if not only or c in only for a in args.scales.split(",")):
                name = f"M={m:6d} {kind:6s} {layout:5s} {cfg}"
                try:
                    words = layout == "words"
                    fn = launcher(kind, cfg, x, dy, w, pad_scales(scales) if words else scales, groups, words)
                    ref = refs[pass_]
                    err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
                except Exception as error:  # a tile shape the compiler rejects: report it, keep sweeping
                    print(f"{name} FAILED {type(error).__name__}: {str(error).splitlines()[:1]}", flush=True)
                    continue
                if not err < 1e-2:
                    print(f"{name} WRONG err {err:.1e}", flush=True)
                    continue
                t = median_us(fn)
                print(f"{name} {t:8.1f} us  bf16 grouped {base[pass_]:8.1f} us  ratio {base[pass_] / t:5.2f}x"
                      f"  err {err:.1e}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
