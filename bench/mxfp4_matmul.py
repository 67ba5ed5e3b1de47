"""Benchmark the MXFP4 grouped expert GEMMs against bf16 on one GPU, and print markdown for docs/BENCHMARKS.md.

Run on a CUDA machine from the repo root (nothing needed beyond torch, triton and transformers):

    python bench/mxfp4_matmul.py                       # gpt-oss-20b and -120b shapes, 16 .. 16384 routed rows
    python bench/mxfp4_matmul.py --models 20b --rows 16,4096

For each model (hidden 2880, intermediate 2880, top-4; 32 or 128 experts), projection (gate_up_proj: N=5760,
down_proj: N=2880; K=2880) and number of routed rows M (token copies after random top-4 routing), it times in the
same run, median of triton.testing.do_bench (which flushes L2 between runs, so weights come from HBM):

    mxfp4        ours (kernels/mxfp4_matmul.py): forward = in-register dequant, weights as the left dot operand
                 ("wx"; tl.dot_scaled instead from 64 rows per expert where the tensor cores take MXFP4), tile
                 shape by rows per expert (printed with the table); backward (dX = dY W) = "wx" transposed
    bf16 grouped cuBLAS/CUTLASS grouped GEMM (torch._grouped_mm) on weights dequantised beforehand
    dense        one cuBLAS bf16 GEMM of the same M x N x K: the ceiling for any grouped kernel
    deq+grouped  dequantise the whole stack to bf16 (plain torch) on every call, then the grouped GEMM

next to the memory-bandwidth floor of ours (bytes of the experts touched + activations, at the copy bandwidth
measured here) and our error against the float32 reference on random, non-zero inputs. Targets (issue #8): ours
within 1.11x of bf16 grouped at M >= 4096 and 2x faster at <= 64 rows per expert. Last, the peak memory of a
forward+backward through one gpt-oss-20b MoE layer, to show no bf16 copy of the experts is made, and the fused
swiglu (kernels/swiglu.py) against its torch reference on [M, 5760] bf16: time forward and forward+backward, the
no-grad forward's extra peak memory, next to its floor (read 2I, write I values); and what LoRA r16 on the experts
adds to a projection's forward and forward+backward (`expert_linear` with and without it); last, one 20b MoE layer's
experts end to end (routing and host time included) at a decode step's and training's token counts.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import triton

# Import the oss_grpo of this checkout whatever else is installed: the repo root is the package, so link it under
# that name in a temporary folder put first on sys.path.
_shim = Path(tempfile.mkdtemp()) / "oss_grpo"
_shim.symlink_to(Path(__file__).resolve().parents[1])
sys.path.insert(0, str(_shim.parent))

from oss_grpo.kernels.expert_matmul import ExpertLora, expert_linear
from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.kernels.mxfp4_matmul import (
    FORWARD_TILES,
    TRANSPOSED_TILES,
    mxfp4_matmul,
    mxfp4_matmul_torch,
    mxfp4_matmul_transposed,
    mxfp4_matmul_transposed_torch,
)
from oss_grpo.kernels.routing import ExpertGroups, route, sort_by_expert
from oss_grpo.kernels.swiglu import swiglu, swiglu_torch
from oss_grpo.rl.moe import Mxfp4Experts

HIDDEN = INTERMEDIATE = 2880
TOP_K = 4
EXPERTS = {"20b": 32, "120b": 128}
PROJECTIONS = {"gate_up_proj": (2 * INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}  # (N, K)


def random_mxfp4(experts: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes (every byte value) and scales near 127, as trained gpt-oss weights have."""
    blocks = torch.randint(0, 256, (experts, n, k // 32, 16), dtype=torch.uint8, device="cuda")
    scales = torch.randint(118, 130, (experts, n, k // 32), dtype=torch.uint8, device="cuda")
    return blocks, scales


def random_groups(rows: int, experts: int) -> ExpertGroups:
    """Route rows / TOP_K tokens to TOP_K distinct random experts each."""
    tokens = max(rows // TOP_K, 1)
    indices, _ = route(torch.randn(tokens, experts, device="cuda"), TOP_K)
    return sort_by_expert(indices, experts).groups


def grouped_bf16(a: torch.Tensor, w: torch.Tensor, groups: ExpertGroups) -> torch.Tensor:
    """a [M, K] @ w_e [K, N] per expert, one grouped launch (cuBLAS/CUTLASS on Hopper)."""
    return torch._grouped_mm(a, w, offs=groups.offsets[1:])


def median_us(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def copy_bandwidth() -> float:
    """Achievable HBM bandwidth in bytes/s: a 1 GiB device-to-device copy (reads + writes)."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / (median_us(lambda: dst.copy_(src)) * 1e-6)


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return ((actual.float() - reference).abs().max() / reference.abs().max()).item()


def bench_shape(model: str, proj: str, rows: int, bandwidth: float) -> list[dict]:
    experts = EXPERTS[model]
    n, k = PROJECTIONS[proj]
    blocks, scales = random_mxfp4(experts, n, k)
    w = dequantize(blocks, scales, torch.bfloat16)  # (E, N, K): the pre-dequantised baseline's weights
    groups = random_groups(rows, experts)
    m = groups.num_rows
    counts = groups.offsets.diff()
    touched = int((counts > 0).sum())
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    dy = torch.randn(m, n, dtype=torch.bfloat16, device="cuda")
    weight_bytes = touched * n * k * (0.5 + 1 / 32)  # codes + scales of the experts that have rows
    results = []
    passes = {
        "forward": dict(
            ours=lambda: mxfp4_matmul(x, blocks, scales, groups),
            grouped=lambda: grouped_bf16(x, w.transpose(1, 2), groups),
            dense=lambda: x @ w[0].T,
            dequant=lambda: grouped_bf16(x, dequantize(blocks, scales).transpose(1, 2), groups),
            reference=lambda: mxfp4_matmul_torch(x.float(), blocks, scales, groups),
            activation_bytes=2 * m * (k + n),
        ),
        "backward dX": dict(
            ours=lambda: mxfp4_matmul_transposed(dy, blocks, scales, groups),
            grouped=lambda: grouped_bf16(dy, w, groups),
            dense=lambda: dy @ w[0],
            dequant=lambda: grouped_bf16(dy, dequantize(blocks, scales), groups),
            reference=lambda: mxfp4_matmul_transposed_torch(dy.float(), blocks, scales, groups),
            activation_bytes=2 * m * (k + n),
        ),
    }
    for name, p in passes.items():
        error = relative_error(p["ours"](), p["reference"]())
        times = {key: median_us(p[key]) for key in ("ours", "grouped", "dense", "dequant")}
        results.append(
            dict(
                model=model, proj=proj, pass_=name, rows=m, per_expert=m / experts, error=error,
                floor=(weight_bytes + p["activation_bytes"]) / bandwidth * 1e6, **times,
            )
        )  # fmt: skip
    del w
    torch.cuda.empty_cache()
    return results


def moe_layer(rank: int, lora_dtype: torch.dtype) -> tuple[Mxfp4Experts, dict[str, ExpertLora]]:
    """One gpt-oss-20b MoE layer's experts (random MXFP4, bf16 biases) and LoRA of `rank` on both projections."""
    experts = EXPERTS["20b"]
    packed = {proj: random_mxfp4(experts, n, k) for proj, (n, k) in PROJECTIONS.items()}
    layer = Mxfp4Experts(
        blocks={p: packed[p][0] for p in PROJECTIONS},
        scales={p: packed[p][1] for p in PROJECTIONS},
        biases={p: torch.randn(experts, n, device="cuda", dtype=torch.bfloat16) for p, (n, _) in PROJECTIONS.items()},
        alpha=1.702,
        limit=7.0,
    )
    lora = {
        p: ExpertLora(
            (torch.randn(experts, rank, k, device="cuda", dtype=lora_dtype) / k**0.5).requires_grad_(),
            torch.randn(experts, n, rank, device="cuda", dtype=lora_dtype).mul_(0.01).requires_grad_(),
            scaling=2.0,
        )
        for p, (n, k) in PROJECTIONS.items()
    }
    return layer, lora


def peak_memory_of_one_layer(tokens: int, rank: int) -> str:
    """Forward+backward through one gpt-oss-20b MoE layer (bf16, LoRA on both projections): extra peak memory."""
    layer, lora = moe_layer(rank, torch.bfloat16)
    experts = layer.num_experts
    h = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    indices, weights = route(torch.randn(tokens, experts, device="cuda"), TOP_K)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    layer(h, indices, weights, lora=lora).float().square().mean().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    bf16_stack = sum(experts * n * k * 2 for n, k in PROJECTIONS.values())
    mxfp4_stack = sum(layer.get_buffer(f"{p}_{part}").numel() for p in PROJECTIONS for part in ("blocks", "scales"))
    verdict = "no bf16 copy of the experts" if extra < bf16_stack else "MORE than a bf16 copy of the experts"
    return (
        f"Peak extra memory, forward+backward of one gpt-oss-20b MoE layer ({tokens} tokens, top-{TOP_K},"
        f" LoRA r={rank}, bf16): {extra / 2**20:.0f} MiB; the experts take {mxfp4_stack / 2**20:.0f} MiB in MXFP4"
        f" and would take {bf16_stack / 2**20:.0f} MiB in bf16: {verdict}."
    )


def layer_table(tokens: list[int], rank: int) -> str:
    """One gpt-oss-20b MoE layer's experts as the model calls them (routing, sorting, both projections with LoRA of
    `rank` in float32 as training keeps it, swiglu, the weighted combine), us: the forward without grad (what decoding
    runs: 32 tokens is a batch-32 decode step) and forward+backward (training). Host time counts here, as it does in
    an eager model."""
    layer, lora = moe_layer(rank, torch.float32)
    lines = ["| tokens | routed rows | forward (no grad) | forward+backward |", "|---:|---:|---:|---:|"]
    for t in tokens:
        h = torch.randn(t, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        indices, weights = route(torch.randn(t, layer.num_experts, device="cuda"), TOP_K)
        dout = torch.randn(t, HIDDEN, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            forward = median_us(lambda: layer(h, indices, weights, lora=lora))
        params = [h, *(f for low_rank in lora.values() for f in (low_rank.A, low_rank.B))]
        both = median_us(lambda: torch.autograd.grad(layer(h, indices, weights, lora=lora), params, dout))
        lines.append(f"| {t} | {t * TOP_K} | {forward:.1f} | {both:.1f} |")
    return "\n".join(lines)


def lora_table(model: str, rows: list[int], rank: int) -> str:
    """What LoRA on the experts costs a projection: `expert_linear` with and without float32 factors of `rank` (as
    training keeps them), forward and forward+backward (dX and the factors' gradients), us, same run."""
    experts = EXPERTS[model]
    lines = [f"| {model} proj | rows M | plain fwd | LoRA fwd | LoRA adds | plain fwd+bwd | LoRA fwd+bwd | LoRA adds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for proj, (n, k) in PROJECTIONS.items():
        blocks, scales = random_mxfp4(experts, n, k)
        bias = torch.randn(experts, n, device="cuda", dtype=torch.bfloat16)
        a = (torch.randn(experts, rank, k, device="cuda") / k**0.5).requires_grad_()
        b = (torch.randn(experts, n, rank, device="cuda") * 0.01).requires_grad_()
        for m in rows:
            groups = random_groups(m, experts)
            x = torch.randn(groups.num_rows, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            dy = torch.randn(groups.num_rows, n, device="cuda", dtype=torch.bfloat16)
            times = []
            for lora, wrt in ((None, [x]), (ExpertLora(a, b, scaling=2.0), [x, a, b])):
                def run() -> torch.Tensor:
                    return expert_linear(x, blocks, scales, groups, bias, lora)

                with torch.no_grad():
                    times.append(median_us(run))
                times.append(median_us(lambda: torch.autograd.grad(run(), wrt, dy)))
            plain, plain_both, low_rank, low_rank_both = times
            lines.append(f"| {proj} | {groups.num_rows} | {plain:.1f} | {low_rank:.1f} | {low_rank / plain - 1:+.0%} |"
                         f" {plain_both:.1f} | {low_rank_both:.1f} | {low_rank_both / plain_both - 1:+.0%} |")
    return "\n".join(lines)


def swiglu_table(rows: list[int], bandwidth: float) -> str:
    """Fused swiglu against `swiglu_torch` on `[M, 2I]` bf16 gate_up: us forward, us forward+backward, extra peak
    MiB of a no-grad forward (what generation pays), and the forward's HBM floor."""
    lines = ["| rows M | fused fwd | torch fwd | fused fwd+bwd | torch fwd+bwd | fused peak MiB | torch peak MiB"
             " | fwd floor |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        h = torch.randn(m, 2 * INTERMEDIATE, device="cuda", dtype=torch.bfloat16) * 4
        dout = torch.randn(m, INTERMEDIATE, device="cuda", dtype=torch.bfloat16)
        row = [str(m)]
        for fn in (swiglu, swiglu_torch):
            row.append(f"{median_us(lambda: fn(h)):.1f}")
        for fn in (swiglu, swiglu_torch):
            leaf = h.clone().requires_grad_()
            row.append(f"{median_us(lambda: fn(leaf).backward(dout)):.1f}")
        for fn in (swiglu, swiglu_torch):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                fn(h)
            row.append(f"{(torch.cuda.max_memory_allocated() - before) / 2**20:.0f}")
        row.append(f"{h.numel() * 2 * 1.5 / bandwidth * 1e6:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(results: list[dict], bandwidth: float) -> str:
    lines = [
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; copy bandwidth "
        f"{bandwidth / 1e9:.0f} GB/s; times in us (median).",
        "Tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, scaled) below each bound of mean rows per expert: forward"
        f" {[(bound, tuple(t)) for bound, t in FORWARD_TILES]},"
        f" dX {[(bound, tuple(t)) for bound, t in TRANSPOSED_TILES]}.",
        "",
        "| model | proj | pass | rows M | rows/expert | mxfp4 (ours) | bf16 grouped | dense bf16 | deq+grouped"
        " | ours vs bf16 grouped | ours floor (HBM) | rel. err vs fp32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['proj']} | {r['pass_']} | {r['rows']} | {r['per_expert']:.1f} | {r['ours']:.1f}"
            f" | {r['grouped']:.1f} | {r['dense']:.1f} | {r['dequant']:.1f} | {r['grouped'] / r['ours']:.2f}x"
            f" | {r['floor']:.1f} | {r['error']:.1e} |"
        )
    return "\n".join(lines)


TABLES = ("gemm", "memory", "swiglu", "lora", "layer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="20b,120b", help="comma list of " + ", ".join(EXPERTS))
    parser.add_argument("--rows", default="16,64,256,1024,2048,4096,16384", help="routed rows M (tokens x top-4)")
    parser.add_argument("--memory-tokens", type=int, default=2048, help="tokens for the peak-memory check")
    parser.add_argument("--lora-rows", default="128,1024,4096,16384", help="routed rows for the LoRA r16 table")
    parser.add_argument("--layer-tokens", default="32,1024,4096", help="tokens for the MoE layer table (20b)")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma list of " + ", ".join(TABLES))
    args = parser.parse_args()
    tables, models = args.tables.split(","), args.models.split(",")
    if unknown := set(tables) - set(TABLES):
        parser.error(f"--tables: unknown {sorted(unknown)}; choose from {', '.join(TABLES)}")
    if not torch.cuda.is_available():
        raise SystemExit("bench/mxfp4_matmul.py needs a CUDA GPU")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    rows = [int(r) for r in args.rows.split(",")]
    if "gemm" in tables:
        results = []
        for model in models:
            for proj in PROJECTIONS:
                for m in rows:
                    results.extend(bench_shape(model, proj, m, bandwidth))
                    print(f"done {model} {proj} M={m}", file=sys.stderr, flush=True)
        print(markdown(results, bandwidth), end="\n\n")
    if "memory" in tables:
        print(peak_memory_of_one_layer(args.memory_tokens, rank=16), end="\n\n")
    if "swiglu" in tables:
        print(swiglu_table([m for m in rows if m >= 1024], bandwidth), end="\n\n")
    if "lora" in tables:
        for model in models:
            print(lora_table(model, [int(r) for r in args.lora_rows.split(",")], rank=16), end="\n\n")
    if "layer" in tables:
        print(layer_table([int(t) for t in args.layer_tokens.split(",")], rank=16), end="\n\n")


if __name__ == "__main__":
    main()
