"""Built-in rewards of the kernel-generation environment (`oss_grpo/KernelGen-v0`): runs, correct, speed-up.

All three read the `kernel_task` column (a task id of `oss_grpo.envs.kernelgen.KERNEL_TASKS`), the `kernel_device`
column when there is one (the config's `kernelgen_device`, else "cpu") and the completion's final answer, and share
one checker run per (task, answer, device) (`kernel_check.check_answer`). A completion with no
final answer, no code, refused code or a crash scores 0, never an error: a random model's garbage is data.
"""

import os
from typing import Any

from oss_grpo.rewards.fan_out import map_distinct
from oss_grpo.rewards.kernel_check import SPEEDUP_CLIP, KernelVerdict, check_answer
from oss_grpo.rewards.protocol import Score
from oss_grpo.rewards.registry import reward


STARTED_AHEAD = min(3, os.cpu_count() or 1)
"""Checks of one batch in flight at once: one runs its kernels while the next ones start up (a check's sandbox
start-up, 2.5 of its ~3.6 s on an H100, is what the others overlap; kernel_check.ONE_AT_A_TIME keeps the kernels
themselves one at a time)."""


def verdicts(completions: list[Any], kernel_task: list[str], kernel_device: list[str] | None) -> list[KernelVerdict]:
    """The checker's verdict on each completion's final answer (cached: the three rewards share one run), in order."""
    devices = kernel_device or ["cpu"] * len(completions)
    jobs = [(task, c.final, device) for c, task, device in zip(completions, kernel_task, devices, strict=True)]
    return map_distinct(check_answer, jobs, STARTED_AHEAD)


@reward("kernel_runs", range=(0.0, 1.0))
def kernel_runs(completions: list[Any], kernel_task: list[str], kernel_device: list[str] | None = None,
                **columns: Any) -> list[float]:
    """1.0 when the answer's code passes the static rules, loads, and no trial raises; else 0.0. Range {0, 1}."""
    return [float(v.runs) for v in verdicts(completions, kernel_task, kernel_device)]


@reward("kernel_correct", range=(0.0, 1.0))
def kernel_correct(completions: list[Any], kernel_task: list[str], kernel_device: list[str] | None = None,
                   **columns: Any) -> list[float]:
    """Fraction of the checker's trials (shapes x dtypes, fresh inputs, poisoned outputs) that match the reference
    with inputs untouched; 0.0 for refused or crashing code, or when a timed call disagreed. Range [0, 1]."""
    return [v.correct for v in verdicts(completions, kernel_task, kernel_device)]


@reward("kernel_speedup", range=(-SPEEDUP_CLIP, SPEEDUP_CLIP))
def kernel_speedup(completions: list[Any], kernel_task: list[str], kernel_device: list[str] | None = None,
                   **columns: Any) -> list[float | Score]:
    """log2 of the answer's speed-up over the task's reference, clipped to [-4, 4] (`KernelVerdict.speedup_score`),
    for fully correct kernels only; otherwise `Score(None, why)`, which TRL leaves out of this reward's advantage.

    Timed in the sandbox on the task's timing case (medians of interleaved rounds on the same fresh inputs). On a
    CPU that is real for PyTorch kernels; Triton kernels run in Triton's interpreter there and are not timed (None,
    "not timed: Triton kernels run in Triton's CPU interpreter ..."). Range [-4, 4] or None.
    """
    return [v.speedup_score if v.speedup_score is not None else Score(None, v.speedup_note)
            for v in verdicts(completions, kernel_task, kernel_device)]
