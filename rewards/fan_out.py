"""Score a batch's answers side by side: each distinct job once, on a thread pool, the results in batch order.

TRL calls each reward once per step with the whole batch. The answers run in sandbox child processes, so threads
that only wait on their pipes spread them over the cores (docs/BENCHMARKS.md: sandbox throughput grows with
threads up to the core count); a group of completions often repeats an answer, which is checked once.
"""

from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def map_distinct(fn: Callable[..., T], jobs: Sequence[tuple[Hashable, ...]], workers: int) -> list[T]:
    """`[fn(*job) for job in jobs]`, with each distinct job run once and up to `workers` at a time."""
    unique = list(dict.fromkeys(jobs))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = dict(zip(unique, pool.map(lambda job: fn(*job), unique)))
    return [found[job] for job in jobs]
