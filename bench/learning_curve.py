"""Does the embedded default learn? Trains configs/2048-tiny.yaml with 3 seeds and compares early and late reward.

    python bench/learning_curve.py [--config configs/2048-tiny.yaml] [--seeds 0 1 2] [--out runs/bench-learning] [--jobs 1]

For each seed: mean reward over the first 20% and the last 20% of steps. The claim holds when the mean gain
(last - first) is larger than the spread of the final reward across seeds (max - min of the last-20% means).
Prints a markdown table for docs/BENCHMARKS.md. `--jobs 3` trains the seeds side by side (a many-core machine; each
run's wall time then includes sharing the cores). A seed whose run folder already holds a finished run (a metrics.jsonl
row for every step) is read, not trained again, so an interrupted bench continues where it stopped, and the README's
main command (seed 0, `runs/2048-tiny`) can be copied in as `OUT/seed0`; its wall time is then the sum of its steps'.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(config: str, seed: int, out: Path) -> tuple[float, float, float]:
    run_dir = out / f"seed{seed}"
    steps = yaml.safe_load(Path(config).read_text())["max_steps"]
    rows = read_rows(run_dir)
    if len(rows) == steps:
        seconds = sum(row["seconds"] for row in rows)
    else:
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "oss_grpo", "train", config, "--set", f"seed={seed}",
                        "--set", f"output_dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.monotonic() - start
        rows = read_rows(run_dir)
    rewards = [row["reward_mean"] for row in rows]
    fifth = max(1, len(rewards) // 5)
    return statistics.mean(rewards[:fifth]), statistics.mean(rewards[-fifth:]), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/2048-tiny.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-learning"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (each run is its own process)")
    args = parser.parse_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(args.seeds, pool.map(lambda seed: run(args.config, seed, args.out), args.seeds)))
    print("| seed | first 20% mean reward | last 20% mean reward | gain | wall time (s) |\n|---|---|---|---|---|")
    for seed, (first, last, seconds) in results.items():
        print(f"| {seed} | {first:.3f} | {last:.3f} | {last - first:+.3f} | {seconds:.0f} |")
    gain = statistics.mean(last - first for first, last, _ in results.values())
    spread = max(r[1] for r in results.values()) - min(r[1] for r in results.values())
    print(f"\nmean gain {gain:+.3f}, spread of the last-20% reward across seeds {spread:.3f}: "
          f"{'gain > spread (learns)' if gain > spread else 'gain <= spread (NOT shown)'}")


if __name__ == "__main__":
    main()
