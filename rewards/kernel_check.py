"""Score a model-written kernel: extract it, refuse cheats by reading it, run it in the sandbox, judge in the parent.

    verdict = check_kernel(KERNEL_TASKS["softmax"], source)
    verdict.runs, verdict.correct, verdict.reason      # True, 1.0, "" for a right kernel

One sample is one `sandbox.run` (importing torch and Triton costs seconds, a trial milliseconds): the sandbox child
imports `_kernel_harness`, which runs every trial beside the kernel and sends back only raw bytes, the outputs and
the inputs after each call. Here, in the parent, which drew the inputs and sent them, the reference runs, and each
trial is judged: outputs within the task's atol/rtol per dtype, inputs untouched. The trials are one per
task case (shapes x dtypes) on fresh seeds, then the last case again with the same tensor objects refilled in place,
which a cache keyed on `id()`/`data_ptr()` answers wrongly. The output buffers hold NaN before every call.

On a CPU the kernel runs under `TRITON_INTERPRET=1` (Triton's interpreter: right answers, no speed). `timing=True`
adds the median time of the reference and of the kernel on the first case (`_kernel_harness.median_seconds`: warm-up,
fresh values before each call, CUDA events with a device-wide synchronize on a GPU). The sandbox cannot reach a GPU
yet (sandbox.py, "What is NOT covered"), so today timings are CPU timings and the rewards do not use them.
"""

import dataclasses
import functools
import re
import secrets

import torch

from oss_grpo.envs.kernelgen import ALLOWED_IMPORTS, KERNEL_TASKS, KernelTask
from oss_grpo.rewards import sandbox
from oss_grpo.rewards._kernel_harness import RUNTIME_IMPORTS, decode, draw_inputs, encode
from oss_grpo.rewards.kernel_policy import kernel_findings
from oss_grpo.rewards.source_check import check_source

HARNESS = "oss_grpo.rewards._kernel_harness:run_trials"
TIMEOUT_S = 90.0
"""Wall clock of one sample's sandbox call: ~3 s of torch/Triton start-up plus every trial under the interpreter."""
MEMORY_MB = 2048
"""Address space on top of the child's start-up (torch and Triton already mapped)."""
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
    """Reference time over kernel time on the first case, when timed and fully correct; else None."""


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


def check_kernel(task: KernelTask, source: str, *, seed: int | None = None, timing: bool = False,
                 timeout_s: float = TIMEOUT_S) -> KernelVerdict:
    """Run every trial of `task` on `source` in one sandbox call and judge it; never raises for what the code does."""
    report = check_source(source, ALLOWED_IMPORTS)  # the sandbox admits RUNTIME_IMPORTS too; the code may not
    findings = [report.syntax_error] if report.syntax_error else [*report.findings, *kernel_findings(source, task)]
    if findings:
        return KernelVerdict(False, 0.0, "; ".join(findings))
    seed = secrets.randbits(31) if seed is None else seed
    trials, inputs = plan_trials(task, seed)
    timing_args = {"warmup": 2, "iters": 5, "seed": seed + len(trials)} if timing else None
    result = sandbox.run(source, task.name, args=(task.name, trials, timing_args), timeout_s=timeout_s,
                         memory_mb=MEMORY_MB, allowed_imports=ALLOWED_IMPORTS | RUNTIME_IMPORTS, harness=HARNESS,
                         env={"TRITON_INTERPRET": "1"}, result_limit_bytes=64 << 20)
    if not result.ok:
        return KernelVerdict(False, 0.0, f"{result.failure}: {result.error}", seconds=result.seconds)
    value = result.value
    if not (isinstance(value, dict) and isinstance(value.get("trials"), list) and len(value["trials"]) == len(trials)
            and all(isinstance(r, dict) for r in value["trials"])):
        return KernelVerdict(False, 0.0, "bad_result: the harness's report is malformed", seconds=result.seconds)
    outcomes = tuple(judge_trial(task, trial, tensors, report)
                     for trial, tensors, report in zip(trials, inputs, value["trials"]))
    correct = sum(o == "ok" for o in outcomes) / len(outcomes)
    runs = not any(o.startswith("raised") for o in outcomes)
    reason = next((f"trial {i}: {o}" for i, o in enumerate(outcomes) if o != "ok"), "")
    return KernelVerdict(runs, correct, reason, outcomes, result.seconds,
                         _speedup(value.get("timing")) if correct == 1.0 else None)


def _speedup(timing: object) -> float | None:
    if not isinstance(timing, dict):
        return None
    reference, kernel = timing.get("reference"), timing.get("kernel")
    if not all(isinstance(t, float) and t > 0 for t in (reference, kernel)):
        return None
    return reference / kernel


@functools.lru_cache(maxsize=1024)
def check_answer(task_name: str, answer: str | None) -> KernelVerdict:
    """`check_kernel` on the code of a final answer, once per (task, answer): the kernel rewards share one run."""
    task = KERNEL_TASKS[task_name]
    source = extract_code(answer, task.name)
    if source is None:
        return KernelVerdict(False, 0.0, f"no code block defining {task.name}() in the final answer")
    return check_kernel(task, source)
