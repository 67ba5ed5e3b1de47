"""Kernel-checker time per sample on CPU, against a bare sandbox call that imports torch, in the same run.

    PYTHONPATH=.shim python bench/kernel_check.py [--samples 5]

Rows (taking turns, medians over `--samples`): `sandbox.run` of a trivial function that imports torch (the floor
any torch kernel check pays: a jailed child that loads torch); `check_kernel` on the correct PyTorch softmax and on
the correct Triton softmax (tests/kernelgen_solutions/), which adds Triton and its interpreter's start-up, 4 trials
and the parent's verdicts. Prints a markdown table.
"""

import argparse
import statistics
import time
from pathlib import Path

from oss_grpo.envs.kernelgen import KERNEL_TASKS
from oss_grpo.rewards import sandbox
from oss_grpo.rewards.kernel_check import check_kernel

SOLUTIONS = Path(__file__).resolve().parents[1] / "tests" / "kernelgen_solutions"
BARE = "import torch\n\ndef f():\n    return 1\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    rows = {
        "sandbox.run, import torch, trivial function (baseline)":
            lambda: sandbox.run(BARE, "f", allowed_imports={"torch"}, timeout_s=60, memory_mb=2048).ok,
        "check_kernel, PyTorch softmax": lambda: check_kernel(
            KERNEL_TASKS["softmax"], (SOLUTIONS / "softmax_torch.py").read_text()).correct == 1.0,
        "check_kernel, Triton softmax (TRITON_INTERPRET=1)": lambda: check_kernel(
            KERNEL_TASKS["softmax"], (SOLUTIONS / "softmax_triton.py").read_text()).correct == 1.0,
    }
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


if __name__ == "__main__":
    main()
