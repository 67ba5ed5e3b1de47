"""The kernel rewards on a whole batch: checks one after another against checks started side by side, same run.

    PYTHONPATH=.shim python bench/kernel_batch.py [--batch 8] [--rounds 3] [--device cuda]

TRL scores a step's completions in one call per reward; `rewards.kernelgen.verdicts` checks their answers with
`STARTED_AHEAD` sandbox calls in flight, which start up (torch, CUDA, Triton: most of a check) together and run
their kernels one at a time (`kernel_check.ONE_AT_A_TIME`). The baseline is `STARTED_AHEAD = 1`, one check after
another, as before. Each round gives both modes a batch of distinct correct PyTorch softmax answers (a numbered
comment apiece, so no cache or deduplication helps), modes taking turns; it prints seconds per batch and the
speed-ups the checks measured in each mode, which must agree if overlapping start-ups leave the timing alone.
"""

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from oss_grpo.rewards import kernelgen

SOURCE = (Path(__file__).resolve().parents[1] / "tests" / "kernelgen_solutions" / "softmax_torch.py").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    ahead = kernelgen.STARTED_AHEAD
    seconds: dict[int, list[float]] = {1: [], ahead: []}
    speedups: dict[int, list[float]] = {1: [], ahead: []}
    answer = 0
    for _ in range(args.rounds):
        for mode in seconds:
            kernelgen.STARTED_AHEAD = mode
            batch = []
            for _ in range(args.batch):
                answer += 1
                batch.append(SimpleNamespace(final=f"```python\n# answer {answer}\n{SOURCE}```"))
            start = time.monotonic()
            verdicts = kernelgen.verdicts(batch, ["softmax"] * args.batch, [args.device] * args.batch)
            seconds[mode].append(time.monotonic() - start)
            assert all(v.correct == 1.0 for v in verdicts), [v.reason for v in verdicts if v.correct < 1.0]
            speedups[mode] += [v.speedup for v in verdicts]
    print(f"| checks in flight | s per batch of {args.batch} (median of {args.rounds}) | min | max "
          f"| median speed-up measured |\n|---|---:|---:|---:|---:|")
    for mode, ts in seconds.items():
        print(f"| {mode}{' (baseline)' if mode == 1 else ''} | {statistics.median(ts):.2f} | {min(ts):.2f} "
              f"| {max(ts):.2f} | {statistics.median(speedups[mode]):.3f} |")
    print(f"\nbatch time, baseline over side by side: {statistics.median(seconds[1]) / statistics.median(seconds[ahead]):.2f}x")


if __name__ == "__main__":
    main()
