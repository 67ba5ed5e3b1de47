"""Built-in rewards of the kernel-generation environment (`oss_grpo/KernelGen-v0`): runs, correct, speed-up.

All three read the `kernel_task` column (a task id of `oss_grpo.envs.kernelgen.KERNEL_TASKS`) and the completion's
final answer, and share one checker run per (task, answer) (`kernel_check.check_answer`). A completion with no
final answer, no code, refused code or a crash scores 0, never an error: a random model's garbage is data.
"""

import math
from typing import Any

from oss_grpo.rewards.kernel_check import KernelVerdict, check_answer
from oss_grpo.rewards.registry import reward


@reward("kernel_runs", range=(0.0, 1.0))
def kernel_runs(completions: list[Any], kernel_task: list[str], **columns: Any) -> list[float]:
    """1.0 when the answer's code passes the static rules, loads, and no trial raises; else 0.0. Range {0, 1}."""
    return [float(check_answer(task, c.final).runs) for c, task in zip(completions, kernel_task, strict=True)]


@reward("kernel_correct", range=(0.0, 1.0))
def kernel_correct(completions: list[Any], kernel_task: list[str], **columns: Any) -> list[float]:
    """Fraction of the checker's trials (shapes x dtypes, fresh inputs, poisoned outputs) that match the reference
    with inputs untouched; 0.0 for refused or crashing code. Range [0, 1]."""
    return [check_answer(task, c.final).correct for c, task in zip(completions, kernel_task, strict=True)]


def speedup_score(verdict: KernelVerdict) -> float | None:
    """log2 of the speed-up over the reference, clipped to [-1, 3]; None when the verdict was not timed (or the
    kernel is not fully correct, which `check_kernel` never times)."""
    if verdict.speedup is None:
        return None
    return max(-1.0, min(3.0, math.log2(verdict.speedup)))


@reward("kernel_speedup", range=(-1.0, 3.0))
def kernel_speedup(completions: list[Any], kernel_task: list[str], **columns: Any) -> list[float | None]:
    """`speedup_score` of the answer's kernel: None today on every machine, so TRL leaves it out of the advantage.

    A speed-up needs the kernel timed on a GPU, and the sandbox cannot reach one yet (sandbox.py, "What is NOT
    covered"); on a CPU the kernel runs under Triton's interpreter, whose speed says nothing about the kernel, so
    `check_answer` does not time. Range [-1, 3] or None.
    """
    return [speedup_score(check_answer(task, c.final)) for c, task in zip(completions, kernel_task, strict=True)]
