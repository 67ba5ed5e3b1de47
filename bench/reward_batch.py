"""The sandboxed rewards on a whole batch: answers one after another against side by side, same run.

    PYTHONPATH=.shim python bench/reward_batch.py --env kernelgen [--batch 8] [--rounds 3] [--device cuda]
    PYTHONPATH=.shim python bench/reward_batch.py --env 2048 [--batch 16] [--rounds 3]

TRL scores a step's completions in one call per reward. The kernel rewards (`rewards.kernelgen.verdicts`) keep
`STARTED_AHEAD` sandbox calls in flight, which start up (torch, CUDA, Triton: most of a check) together and run their
kernels one at a time (`kernel_check.ONE_AT_A_TIME`); the 2048 strategy rewards (`game2048_strategy._runs`) play
`PLAYED_AT_ONCE` answers at once, one per core. The baseline sets that number to 1: one answer after another, as
before. Each round gives both modes a batch of distinct answers (a numbered comment apiece, so no cache or
deduplication helps; the correct PyTorch softmax, or two warm-start 2048 strategies in turn), modes taking turns.
It prints seconds per batch and what the answers scored in each mode (the kernels' measured speed-up, the strategies'
mean max tile), which must agree if running side by side leaves the measurement alone.
"""

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from oss_grpo.envs.game2048_strategy import WARM_START_ANSWERS
from oss_grpo.rewards import game2048_strategy, kernelgen

PLAYING = WARM_START_ANSWERS[1:3]
"""The deterministic warm-start strategies that play (a fixed cycle, always up), so both modes score the same."""
SOFTMAX = (Path(__file__).resolve().parents[1] / "tests" / "kernelgen_solutions" / "softmax_torch.py").read_text()


def kernel_batch(answers: list[str], device: str) -> list[float]:
    """The speed-up each answer's kernel measured (all must be correct)."""
    batch = [SimpleNamespace(final=f"```python\n{a}```") for a in answers]
    verdicts = kernelgen.verdicts(batch, ["softmax"] * len(batch), [device] * len(batch))
    assert all(v.correct == 1.0 for v in verdicts), [v.reason for v in verdicts if v.correct < 1.0]
    return [v.speedup for v in verdicts]


def strategy_batch(answers: list[str]) -> list[float]:
    """The mean max tile of each answer's 4 games (all must run)."""
    batch = [SimpleNamespace(final=a) for a in answers]
    n = len(batch)
    runs = game2048_strategy._runs(batch, [[1, 2, 3, 4]] * n, [2000] * n, [5.0] * n)
    assert all(r.failure is None for r in runs), [r.error for r in runs if r.failure]
    return [statistics.mean(g.max_tile for g in r.games) for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["kernelgen", "2048"], default="kernelgen")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="kernelgen: where kernels run")
    args = parser.parse_args()
    module, name = (kernelgen, "STARTED_AHEAD") if args.env == "kernelgen" else (game2048_strategy, "PLAYED_AT_ONCE")
    at_once = getattr(module, name)
    seconds: dict[int, list[float]] = {1: [], at_once: []}
    scores: dict[int, list[float]] = {1: [], at_once: []}
    answer = 0
    for _ in range(args.rounds):
        for mode in seconds:
            setattr(module, name, mode)
            answers = []
            for _ in range(args.batch):
                answer += 1
                if args.env == "kernelgen":
                    answers.append(f"# answer {answer}\n{SOFTMAX}")
                else:
                    answers.append(PLAYING[answer % len(PLAYING)].replace("```python\n", f"```python\n# {answer}\n", 1))
            start = time.monotonic()
            scores[mode] += kernel_batch(answers, args.device) if args.env == "kernelgen" else strategy_batch(answers)
            seconds[mode].append(time.monotonic() - start)
    what = "median speed-up measured" if args.env == "kernelgen" else "mean max tile"
    print(f"| {name} | s per batch of {args.batch} (median of {args.rounds}) | min | max | {what} |\n"
          f"|---|---:|---:|---:|---:|")
    for mode, ts in seconds.items():
        score = statistics.median(scores[mode]) if args.env == "kernelgen" else statistics.mean(scores[mode])
        print(f"| {mode}{' (baseline)' if mode == 1 else ''} | {statistics.median(ts):.2f} | {min(ts):.2f} "
              f"| {max(ts):.2f} | {score:.3f} |")
    ratio = statistics.median(seconds[1]) / statistics.median(seconds[at_once])
    print(f"\nbatch time, baseline over side by side: {ratio:.2f}x")


if __name__ == "__main__":
    main()
