"""Sandbox calls per second on CPU (process start overhead), against a bare interpreter start.

    PYTHONPATH=.shim python bench/sandbox.py [--calls 40] [--threads 2]

Rows: the baseline `subprocess.run([python, "-I", "-S", "-c", "pass"])`; `unshare` namespaces around that
same bare start; `sandbox.run` on a trivial function and on a 2048-style strategy, with every layer
the host grants; the fallback without namespaces; the strategy from several threads at once
(throughput when the caller fans out); and 2048 strategy mode's cost per answer (issue #5): `--games`
seeded games played by one sandbox call (`play_strategy`, uncached) and, apart, the parent's replay of
their moves. Every row is timed in this same run after warm-up calls, the
rows taking turns (so load from other processes falls on all alike); each row reports its median and
its calls per second (calls / time spent in them). Prints a markdown table.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from oss_grpo.envs.game2048_strategy import WARM_START_ANSWERS, replay, spawn_table
from oss_grpo.rewards import sandbox
from oss_grpo.rewards.game2048_strategy import ALLOWED_IMPORTS, ENTRY, extract_code, harness_source, play_strategy

TRIVIAL = "def f():\n    return 1\n"
STRATEGY = """
import random

def strategy(board):
    empty = sum(row.count(0) for row in board)
    return "W" if empty > 8 else random.choice("ASD")
"""
BOARD = [[2, 0, 0, 4], [0, 0, 2, 0], [4, 8, 0, 0], [0, 0, 0, 2]]


def _interleaved(rows: list[Callable[[], object]], calls: int, warmup: int = 3) -> list[tuple[float, float]]:
    """Median ms per call and calls/s of each row, the rows taking turns so that load from other
    processes on a shared machine falls on all of them alike."""
    for fn in rows:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(calls):
        for fn, spent in zip(rows, times):
            t = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - t)
    return [(statistics.median(spent) * 1e3, len(spent) / sum(spent)) for spent in times]


def _once_ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _threaded(fn: Callable[[], object], calls: int, threads: int) -> tuple[float, float]:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: fn(), range(threads)))  # warm-up
        start = time.perf_counter()
        per_call = list(pool.map(lambda _: _once_ms(fn), range(calls)))
        return statistics.median(per_call), calls / (time.perf_counter() - start)


def _ok(result: sandbox.SandboxResult) -> sandbox.SandboxResult:
    assert result.ok, result  # a benchmark of failing calls would measure the wrong path
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--games", type=int, default=4, help="games per answer in the strategy-mode rows")
    opts = parser.parse_args()

    bare = [sys.executable, "-I", "-S", "-c", "pass"]
    iso = sandbox.isolation()
    rows: list[tuple[str, Callable[[], object]]] = [
        ("baseline: `subprocess.run([python, -I, -S, -c, pass])`", lambda: subprocess.run(bare, check=True)),
    ]
    if iso.namespaces:
        unshare = [*sandbox._namespace_command(), *bare]
        rows.append(("same, inside `unshare` (pid, net, mount, ipc, uts)", lambda: subprocess.run(unshare, check=True)))
    rows += [
        ("`sandbox.run`: trivial function, all layers", lambda: _ok(sandbox.run(TRIVIAL, "f"))),
        ("`sandbox.run`: 2048 strategy (imports random)",
         lambda: _ok(sandbox.run(STRATEGY, "strategy", args=(BOARD,)))),
    ]
    fallback = sandbox.Isolation(namespaces=False, root=iso.root, seccomp=iso.seccomp)
    strategy = rows[-1][1]

    def strategy_fallback() -> object:
        real_isolation, sandbox.isolation = sandbox.isolation, lambda: fallback
        try:
            return strategy()
        finally:
            sandbox.isolation = real_isolation

    rows.append(("`sandbox.run`: 2048 strategy, fallback without namespaces", strategy_fallback))
    code, seeds = extract_code(WARM_START_ANSWERS[1]), tuple(range(opts.games))  # a cycle of moves: plays to the end
    first = play_strategy.__wrapped__(code, seeds, 2000, 30.0)
    assert first.failure is None, first
    moves = sum(g.moves for g in first.games)
    rows.append((f"strategy mode: one answer, {opts.games} games ({moves} moves) in one sandbox call + replay",
                 lambda: play_strategy.__wrapped__(code, seeds, 2000, 30.0)))
    played = _ok(sandbox.run(code + "\n\n" + harness_source(), ENTRY,
                             args=([spawn_table(s, 2000) for s in seeds], 2000, 30.0), timeout_s=30.0,
                             allowed_imports=ALLOWED_IMPORTS)).value
    rows.append((f"strategy mode: the parent's replay of those {moves} moves alone",
                 lambda: [replay(seed, m, 2000) for seed, m in zip(seeds, played)]))
    timings = _interleaved([fn for _, fn in rows], opts.calls)
    results = [(name, *timing) for (name, _), timing in zip(rows, timings)]
    threaded = _threaded(strategy, opts.calls, opts.threads)
    results.append((f"`sandbox.run`: 2048 strategy, {opts.threads} threads (calls/s of the whole pool)", *threaded))

    print(f"{platform.node()} | {os.cpu_count()} CPUs | Python {platform.python_version()} | {iso}")
    print(f"{opts.calls} calls per row\n")
    print("| what | median ms/call | calls/s |")
    print("|---|---|---|")
    for name, ms, rate in results:
        print(f"| {name} | {ms:.1f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
