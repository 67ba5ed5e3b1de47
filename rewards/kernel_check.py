"""Score a model-written kernel: extract it, refuse cheats by reading it, run it in the sandbox, judge in the parent.

    verdict = check_kernel(KERNEL_TASKS["softmax"], source)
    verdict.runs, verdict.correct, verdict.reason      # True, 1.0, "" for a right kernel

One sample is one `sandbox.run` (importing torch and Triton costs seconds, a trial milliseconds): the sandbox child
imports `_kernel_harness`, which runs every trial beside the kernel and sends back only raw bytes, the outputs and
the inputs after each call. Here, in the parent, which drew the inputs and sent them, the reference runs, and each
trial is judged: outputs within the task's atol/rtol per dtype, inputs untouched. The trials are one per
task case (shapes x dtypes) on fresh seeds, then the last case again with the same tensor objects refilled in place,
which a cache keyed on `id()`/`data_ptr()` answers wrongly. The output buffers hold NaN before every call.

The speed-up (`timing`, on by default) is the one number the parent cannot recompute: `_kernel_timer` measures it in
the child after the trials, on the task's larger `timing_case`: warm-up rounds, then the median of timed rounds of
the reference and the kernel on the same fresh inputs, on a clock bound before the code existed, with the kernel's
output checked against the reference's every round. Code seen replacing the clock, torch's ops or the harness
fails the sample ("tampered"); a timed round that disagrees with the reference zeroes `correct`. A speed-up is kept
only for a fully correct kernel. On a CPU, PyTorch kernels are timed for real; Triton kernels run in Triton's
interpreter (`TRITON_INTERPRET=1`), whose speed says nothing about the kernel, so they are not timed (`speedup`
None, `speedup_note` says why). `device="cuda"` runs the check in the sandbox's GPU profile (sandbox.py), inputs
on the GPU and CUDA events for the clock; compiled Triton kernels build there without exec (`_triton_jail`).
"""

import dataclasses
import functools
import math
import re
import secrets
import threading

import torch

from oss_grpo.envs.kernelgen import ALLOWED_IMPORTS, KERNEL_TASKS, KernelTask
from oss_grpo.rewards import sandbox
from oss_grpo.rewards._kernel_bytes import TRITON_JAIL_ENV, decode, draw_inputs, encode
from oss_grpo.rewards.kernel_policy import kernel_findings
from oss_grpo.rewards.source_check import check_source
from oss_grpo.rl.errors import SandboxError

HARNESS = "oss_grpo.rewards._kernel_harness:run_trials"
RUNTIME_IMPORTS = frozenset({"builtins", "collections", "numpy", "ntpath"})
"""What Triton imports (already loaded) inside a kernel call: its interpreter the first three, its GPU compiler
`ntpath` (Python 3.12's `pathlib.Path()` imports it in every call; traced on an H100). The sandbox's import guard
must admit them at run time, while the static check still refuses them in the model's code."""
TIMEOUT_S = 90.0
"""Wall clock of one sample's sandbox call: ~3 s of torch/Triton start-up plus every trial under the interpreter."""
MEMORY_MB = 2048
"""Address space on top of the child's start-up (torch and Triton already mapped)."""
SPEEDUP_CLIP = 4.0
"""`speedup_score` is log2 of the speed-up clipped to [-SPEEDUP_CLIP, SPEEDUP_CLIP]: 16x either way is the bound."""
TIMING = {"warmup": 3, "iters": 9}
"""Rounds of the speed-up measurement: warm-up rounds (caches, allocator, first-call costs), then timed ones."""
ONE_AT_A_TIME = threading.Lock()
"""Every check's sandbox gate (`sandbox.run`'s `gate`): checks called from several threads start up together
(torch, CUDA, Triton: most of a check's time) and run the kernels one at a time, so no kernel is timed beside another
check's work (start-ups excepted: they touch neither the timed GPU stream nor, much, the timed CPU core)."""
INTERPRETED = "not timed: Triton kernels run in Triton's CPU interpreter here, whose speed says nothing about them"
_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class KernelVerdict:
    """What the parent concluded about one submission."""

    runs: bool
    """The code passed the static rules, loaded, and every trial returned without raising."""
    correct: float
    """Fraction of trials whose outputs matched the reference and whose inputs were left untouched."""
    reason: str = ""
    """Why it is not fully correct (the first failing trial, the finding, or the sandbox's error); "" when it is."""
    trials: tuple[str, ...] = ()
    """Per trial: "ok" or why it failed."""
    seconds: float = 0.0
    """Wall time of the sandbox call."""
    speedup: float | None = None
    """Median reference time over median kernel time on the task's timing case, when timed and fully correct."""
    speedup_note: str = ""
    """Why `speedup` is None ("not timed: ..."); "" when there is a speed-up."""

    @property
    def speedup_score(self) -> float | None:
        """log2 of `speedup`, clipped to [-SPEEDUP_CLIP, SPEEDUP_CLIP]: each doubling is worth the same, and past 16x
        either way a timing glitch is likelier than a kernel. None when there is no speed-up."""
        if self.speedup is None:
            return None
        return max(-SPEEDUP_CLIP, min(SPEEDUP_CLIP, math.log2(self.speedup)))


def extract_code(answer: str | None, function: str) -> str | None:
    """The code of a final answer: the first fenced block that defines `function`, else the only block, else the
    whole answer when it defines `function`; None when there is no candidate."""
    if not answer:
        return None
    blocks = _FENCE.findall(answer)
    for block in blocks:
        if re.search(rf"^\s*def\s+{re.escape(function)}\s*\(", block, re.MULTILINE):
            return block
    if len(blocks) == 1:
        return blocks[0]
    return answer if not blocks and re.search(rf"\bdef\s+{re.escape(function)}\s*\(", answer) else None


def plan_trials(task: KernelTask, seed: int) -> tuple[list[dict], list[list[torch.Tensor]]]:
    """The trials to send (inputs as bytes) and the parent's copy of their inputs.

    One trial per case on fresh values, then the last case again on the same tensor objects (`reuse`)."""
    cases = [*task.cases, task.cases[-1]]
    inputs = [draw_inputs(case.inputs, seed + i) for i, case in enumerate(cases)]
    trials = [{"inputs": [encode(t) for t in tensors], "input_specs": list(case.inputs),
               "outputs": list(case.outputs), "reuse": i == len(task.cases)}
              for i, (case, tensors) in enumerate(zip(cases, inputs))]
    return trials, inputs


def judge_trial(task: KernelTask, trial: dict, inputs: list[torch.Tensor], report: dict) -> str:
    """"ok", or why the trial failed, from the raw bytes the child sent and the parent's own reference run."""
    if report.get("error"):
        return f"raised {report['error']}"
    try:
        after = [decode(text, spec) for text, spec in zip(report["inputs"], trial["input_specs"], strict=True)]
        outputs = [decode(text, spec) for text, spec in zip(report["outputs"], trial["outputs"], strict=True)]
    except (ValueError, TypeError, KeyError) as e:
        return f"unreadable result ({e})"
    for i, (before, now) in enumerate(zip(inputs, after)):
        if not torch.equal(before.view(-1).view(torch.uint8), now.view(-1).view(torch.uint8)):
            return f"modified input {i}"
    expected = task.reference(*inputs)
    for i, (got, want, spec) in enumerate(zip(outputs, expected, trial["outputs"], strict=True)):
        atol, rtol = task.tolerance[spec["dtype"]]
        got, want = got.float(), want.float()
        if got.isnan().all():
            return f"output {i} was not written (still the poison)"
        close = torch.isclose(got, want, rtol=rtol, atol=atol)
        if not close.all():
            where = tuple(int(j) for j in (~close).nonzero()[0])
            return (f"output {i} is wrong at {where} of shape {tuple(got.shape)}: {got[where].item():.6g} instead "
                    f"of {want[where].item():.6g} ({int((~close).sum())} of {close.numel()} elements off)")
    return "ok"


def check_kernel(task: KernelTask, source: str, *, seed: int | None = None, timing: bool = True,
                 device: str = "cpu", timeout_s: float = TIMEOUT_S) -> KernelVerdict:
    """Run every trial of `task` on `source` in one sandbox call and judge it; never raises for what the code does.

    `timing` asks for the speed-up; `device` is "cpu" (Triton interpreted, the default jail) or "cuda" (the
    sandbox's GPU profile: PyTorch and compiled Triton kernels run and are timed there)."""
    report = check_source(source, ALLOWED_IMPORTS)  # the sandbox admits RUNTIME_IMPORTS too; the code may not
    findings = [report.syntax_error] if report.syntax_error else [*report.findings, *kernel_findings(source, task)]
    if findings:
        return KernelVerdict(False, 0.0, "; ".join(findings), speedup_note="not timed: refused")
    if device not in ("cpu", "cuda"):
        raise SandboxError(f"device={device!r}: must be 'cpu' or 'cuda'")
    uses_triton = any(m.partition(".")[0] == "triton" for m in report.imports)
    interpreted = device == "cpu" and uses_triton
    seed = secrets.randbits(31) if seed is None else seed
    trials, inputs = plan_trials(task, seed)
    timing_args = {**TIMING, "seed": seed + len(trials)} if timing and not interpreted else None
    result = sandbox.run(source, task.name, args=(task.name, trials, timing_args, device), timeout_s=timeout_s,
                         memory_mb=MEMORY_MB, allowed_imports=ALLOWED_IMPORTS | RUNTIME_IMPORTS, harness=HARNESS,
                         env={"TRITON_INTERPRET": "1"} if device == "cpu" else TRITON_JAIL_ENV if uses_triton else {},
                         result_limit_bytes=64 << 20,
                         profile=sandbox.GPU if device == "cuda" else sandbox.CPU, gate=ONE_AT_A_TIME)
    if not result.ok:
        return KernelVerdict(False, 0.0, f"{result.failure}: {result.error}", seconds=result.seconds,
                             speedup_note="not timed: the sandbox call failed")
    value = result.value
    if isinstance(value, dict) and isinstance(value.get("tampered"), list):
        names = ", ".join(str(n) for n in value["tampered"][:5])
        return KernelVerdict(False, 0.0, f"tampered: the code replaced {names} (the checker's clock, torch or the "
                             "harness)", seconds=result.seconds, speedup_note="not timed: tampered")
    if not (isinstance(value, dict) and isinstance(value.get("trials"), list) and len(value["trials"]) == len(trials)
            and all(isinstance(r, dict) for r in value["trials"])):
        return KernelVerdict(False, 0.0, "bad_result: the harness's report is malformed", seconds=result.seconds,
                             speedup_note="not timed: malformed report")
    outcomes = tuple(judge_trial(task, trial, tensors, report)
                     for trial, tensors, report in zip(trials, inputs, value["trials"]))
    correct = sum(o == "ok" for o in outcomes) / len(outcomes)
    runs = not any(o.startswith("raised") for o in outcomes)
    reason = next((f"trial {i}: {o}" for i, o in enumerate(outcomes) if o != "ok"), "")
    verdict = KernelVerdict(runs, correct, reason, outcomes, result.seconds)
    if correct < 1.0:
        return dataclasses.replace(verdict, speedup_note="not timed: not fully correct")
    if timing_args is None:
        return dataclasses.replace(verdict, speedup_note=INTERPRETED if interpreted else "not timed: not asked")
    return _with_speedup(verdict, value.get("timing"))


def _with_speedup(verdict: KernelVerdict, timing: object) -> KernelVerdict:
    """The verdict with the child's timing: a speed-up, or a timed round that disagreed (which the child reports only
    against the kernel's interest, so it is believed: the kernel is not correct), or a malformed report."""
    if isinstance(timing, dict) and isinstance(timing.get("error"), str):
        return dataclasses.replace(verdict, correct=0.0, reason=f"timing: {timing['error'][:500]}",
                                   speedup_note="not timed: a timed call failed")
    reference, kernel = (timing.get("reference"), timing.get("kernel")) if isinstance(timing, dict) else (None, None)
    if not all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in (reference, kernel)):
        return dataclasses.replace(verdict, speedup_note="not timed: malformed timing report")
    return dataclasses.replace(verdict, speedup=reference / kernel)


def check_answer(task_name: str, answer: str | None, device: str = "cpu") -> KernelVerdict:
    """`check_kernel` (timed) on the code of a final answer, once per (task, answer, device): the kernel rewards and
    `KernelGenEnv` share one run."""
    return _check_answer(task_name, answer, device)


@functools.lru_cache(maxsize=1024)
def _check_answer(task_name: str, answer: str | None, device: str) -> KernelVerdict:
    # Apart from check_answer so that a call with the default device and one naming it share the cache entry.
    task = KERNEL_TASKS[task_name]
    source = extract_code(answer, task.name)
    if source is None:
        return KernelVerdict(False, 0.0, f"no code block defining {task.name}() in the final answer",
                             speedup_note="not timed: no code")
    return check_kernel(task, source, device=device)
