"""Kernel-checker time per sample on CPU, against a bare sandbox call that imports torch, in the same run.

    PYTHONPATH=.shim python bench/kernel_check.py [--samples 5] [--device cuda]

Rows (taking turns, medians over `--samples`): `sandbox.run` of a trivial function that imports torch (the floor
any torch kernel check pays: a jailed child that loads torch); `check_kernel` on the correct PyTorch softmax
(tests/kernelgen_solutions/) correctness only (`timing=False`: 4 trials and the parent's verdicts, the baseline of
the speed-up path) and with the speed-up (`timing=True`, the default: 3 warm-up and 9 timed rounds of reference and
kernel on the 64x1024 timing case, output and tamper checks each round); the same for a correct but slow Python
row loop; and the correct Triton softmax, which adds Triton's interpreter and is never timed on a CPU. Then the
harness alone, in this process (no sandbox, no start-up): `run_trials` without and with timing, which isolates what
the speed-up path adds per sample from the start-up noise. Prints markdown tables.

`--device cuda` runs every check in the sandbox's GPU profile and times on the GPU, the Triton softmax included:
compiled inside the jail (rewards/_triton_jail.py) and timed like the others.
"""

import argparse
import statistics
import time
from pathlib import Path

from oss_grpo.envs.kernelgen import KERNEL_TASKS
from oss_grpo.rewards import _kernel_harness, sandbox
from oss_grpo.rewards.kernel_check import TIMING, KernelVerdict, check_kernel, plan_trials

SOLUTIONS = Path(__file__).resolve().parents[1] / "tests" / "kernelgen_solutions"
BARE = "import torch\n\ndef f():\n    return 1\n"
ROW_LOOP = ("import torch\n\ndef softmax(x, out):\n    for i in range(x.shape[0]):\n        row = x[i].float()\n"
            "        e = torch.exp(row - row.max())\n        out[i] = e / e.sum()\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    softmax_torch = (SOLUTIONS / "softmax_torch.py").read_text()
    softmax_triton = (SOLUTIONS / "softmax_triton.py").read_text()
    profile = sandbox.GPU if args.device == "cuda" else sandbox.CPU

    names = {softmax_torch: "PyTorch softmax", ROW_LOOP: "row-loop softmax", softmax_triton: "Triton softmax"}
    speedups: dict[str, list[float]] = {name: [] for name in names.values()}

    def check(source: str, timing: bool = True) -> KernelVerdict:
        verdict = check_kernel(KERNEL_TASKS["softmax"], source, timing=timing, device=args.device)
        if verdict.speedup is not None:
            speedups[names[source]].append(verdict.speedup)
        elif verdict.correct != 1.0:
            print(f"{names[source]} failed: {verdict}")
        return verdict

    rows = {
        "sandbox.run, import torch, trivial function (baseline)": lambda: bare(profile),
        "check_kernel, PyTorch softmax, correctness only (baseline)":
            lambda: check(softmax_torch, timing=False).correct == 1.0,
        "check_kernel, PyTorch softmax, with the speed-up": lambda: check(softmax_torch).speedup is not None,
        "check_kernel, row-loop softmax, correctness only": lambda: check(ROW_LOOP, timing=False).correct == 1.0,
        "check_kernel, row-loop softmax, with the speed-up": lambda: check(ROW_LOOP).speedup is not None,
    }
    if args.device == "cpu":
        rows["check_kernel, Triton softmax (TRITON_INTERPRET=1, not timed)"] = \
            lambda: check(softmax_triton).correct == 1.0
    else:
        rows["check_kernel, Triton softmax, compiled in the jail, with the speed-up"] = \
            lambda: check(softmax_triton).speedup is not None
    times: dict[str, list[float]] = {name: [] for name in rows}
    for fn in rows.values():  # warm-up: page cache, first-import costs
        assert fn()
    for _ in range(args.samples):
        for name, fn in rows.items():
            start = time.monotonic()
            assert fn(), name
            times[name].append(time.monotonic() - start)
    print("| what | median s per sample | min | max |\n|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    harness_rows(softmax_torch, args.samples, args.device)
    print("\n| kernel | median speed-up over torch.softmax | min | max |\n|---|---|---|---|")
    for name, values in speedups.items():
        if not values:
            continue
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")


def bare(profile: sandbox.Profile) -> bool:
    """A jailed child that imports torch and returns; what went wrong is printed, not lost, when it fails."""
    result = sandbox.run(BARE, "f", allowed_imports={"torch"}, timeout_s=60, memory_mb=2048, profile=profile)
    if not result.ok:
        print(f"bare sandbox call failed: {result.failure}: {result.error}\n{result.stderr[-2000:]}")
    return result.ok


def harness_rows(softmax_torch: str, samples: int, device: str) -> None:
    """The harness's own time per sample in this process: trials only, then trials and the speed-up rounds."""
    trials, _ = plan_trials(KERNEL_TASKS["softmax"], seed=0)
    print("\n| harness in-process (no sandbox) | median ms per sample | min | max |\n|---|---|---|---|")
    for name, source in (("PyTorch softmax", softmax_torch), ("row-loop softmax", ROW_LOOP)):
        scope: dict = {}
        exec(source, scope)  # our own test kernels, trusted
        for timing in (None, {**TIMING, "seed": 1}):
            ts = []
            for _ in range(samples + 1):
                start = time.perf_counter()
                _kernel_harness.run_trials(scope["softmax"], "softmax", trials, timing, device)
                ts.append(1e3 * (time.perf_counter() - start))
            ts = ts[1:]  # the first call pays one-off costs
            what = "trials and speed-up" if timing else "trials only (baseline)"
            print(f"| {name}, {what} | {statistics.median(ts):.1f} | {min(ts):.1f} | {max(ts):.1f} |")


if __name__ == "__main__":
    main()
