"""The trusted half of a kernel check that runs inside the sandbox child, beside the model's kernel.

`kernel_check` passes `harness="oss_grpo.rewards._kernel_harness:run_trials"` to `sandbox.run`, so the child imports
this module (torch, Triton and its interpreter included) before it locks down, then calls `run_trials(kernel, ...)`
once for all trials of a sample: importing torch costs seconds, a trial milliseconds. It only produces raw data:
it takes each trial's inputs as the bytes the parent drew, fills the output buffers with poison, calls the kernel,
and returns the bytes of the outputs and of the inputs after the call. The parent runs the reference on its own
copy and decides; nothing here is trusted to say "correct", because the kernel shares this process and could forge
anything this module returns, except a right answer it did not compute.

Two traps make cheating fail loudly rather than score: the torch ops the task asks to implement are replaced by a
function that raises, and a trial that reuses the previous trial's tensor objects with new values in place catches
kernels that key a cache on `id()` or `data_ptr()` instead of the values. `WATCH` remembers every attribute of
torch, the clock and this harness at import; a kernel seen to have replaced one ends the sample as "tampered".

The speed-up is the one number the parent cannot recompute, so it is measured here, after the trials, by
`_kernel_timer` (its docstring says how the clock is kept out of the kernel's reach, and how far that goes).
"""

import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton
import triton.language as tl
import triton.runtime.interpreter  # noqa: F401  (what @triton.jit loads under TRITON_INTERPRET=1)

from oss_grpo.envs import kernelgen
from oss_grpo.envs.kernelgen import KERNEL_TASKS, KernelTask
from oss_grpo.rewards import _kernel_timer
from oss_grpo.rewards._kernel_bytes import TRITON_JAIL_ENV, Spec, decode, draw_inputs, encode
from oss_grpo.rewards._kernel_timer import Watch, elapsed_seconds, poison_, time_against_reference

_TRAPPED_NAMESPACES = (torch, torch.Tensor, torch.nn.functional, torch.special, torch.linalg)


@triton.jit
def _warm_up_kernel(X, W, Y, N: tl.constexpr):
    offsets = tl.arange(0, N)
    x = tl.load(X + offsets[:, None] * N + offsets[None, :], mask=offsets[:, None] < N, other=0.0)
    w = tl.load(W + offsets[:, None] * N + offsets[None, :])
    y = tl.dot(x, w) + tl.exp(x) + tl.sqrt(tl.abs(x)) + tl.sigmoid(x) + tl.rsqrt(tl.abs(x) + 1.0)
    y = tl.where(y > 0, y, -y) + tl.max(y, axis=1)[:, None] + tl.sum(y, axis=0)[None, :]
    tl.store(Y + tl.program_id(0) * N * N + offsets[:, None] * N + offsets[None, :], tl.maximum(y, 0.0))


def warm_up() -> None:
    """Run one small interpreted kernel: its first call imports ~50 Triton modules, which after the sandbox's
    lock-down (no files) would fail to load. Called at import, before lock-down, when TRITON_INTERPRET=1."""
    x = torch.ones(16, 16)
    _warm_up_kernel[(1,)](x, x, torch.empty(16, 16), N=16)


def warm_up_cuda() -> None:
    """Initialise CUDA and run every reference and the timer once on the GPU: the driver, cuBLAS and the libraries
    the references use load from files, which the sandbox's lock-down hides (sandbox.py, GPU profile). For code
    that imports Triton (`TRITON_JAIL_ENV`), Triton is then set up to compile without exec (`_triton_jail`) and one
    kernel is compiled and run that way, which loads the driver's PTX compiler and Triton's compiler modules (1-2 s,
    so only then). Called at import when a GPU is visible and Triton is not interpreting. The trainer never imports
    this module (the sandbox child does; benches and tests that run trials in-process may): it must not touch a GPU
    for a reward's sake."""
    for task in KERNEL_TASKS.values():
        task.reference(*[t.cuda() for t in draw_inputs(task.cases[0].inputs, 0)])
    x = torch.ones(4, device="cuda")
    torch.isclose(x, x).all()  # what the timer's output check runs
    elapsed_seconds(torch.cuda.synchronize, [], cuda=True)
    if all(os.environ.get(k) == v for k, v in TRITON_JAIL_ENV.items()):
        from oss_grpo.rewards import _triton_jail  # imports Triton's CUDA driver module: only where a GPU is

        _triton_jail.install(cache_dir=os.path.join(os.getcwd(), "triton-cache"))  # the work dir, then the jail's
        x = torch.ones(16, 16, device="cuda")
        _warm_up_kernel[(1,)](x, x, torch.empty(16, 16, device="cuda"), N=16)
        torch.cuda.synchronize()


if triton.knobs.runtime.interpret:
    warm_up()
elif torch.cuda.is_available():
    warm_up_cuda()


def poisoned(spec: Spec) -> torch.Tensor:
    """A new output buffer of `spec`, poisoned (`_kernel_timer.poison_`)."""
    return poison_(torch.empty(tuple(spec["shape"]), dtype=getattr(torch, spec["dtype"])))


def _trap(name: str) -> Callable[..., Any]:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is the op this task asks you to implement; it is disabled in the checker")
    return forbidden


Trap = tuple[object, str, object, Callable[..., Any]]
"""(namespace, name, the original, the function that raises in its place)."""


def install_traps(names: Sequence[str]) -> list[Trap]:
    """Make the task's own framework ops raise wherever torch exposes them (function, method, functional, special);
    returns the traps so the reference can have the real ops back while it runs (`set_traps`)."""
    traps = [(namespace, name, getattr(namespace, name), _trap(f"torch {name}"))
             for name in names for namespace in _TRAPPED_NAMESPACES if hasattr(namespace, name)]
    set_traps(traps, armed=True)
    return traps


def set_traps(traps: Sequence[Trap], armed: bool) -> None:
    """Arm (kernel's turn) or disarm (reference's turn) the traps, and tell `WATCH` so."""
    for namespace, name, original, trap in traps:
        setattr(namespace, name, trap if armed else original)
        WATCH.expected[(id(namespace), name)] = trap if armed else original


def run_trials(kernel: Callable[..., Any], task: str, trials: Sequence[dict], timing: dict | None = None,
               device: str = "cpu") -> dict:
    """Call `kernel(*inputs, *outputs)` once per trial and return each trial's raw outputs and inputs after the call.

    Each trial is `{"inputs": [base64 bytes], "input_specs": [Spec], "outputs": [Spec], "reuse": bool}`: the parent
    drew the inputs, so no verdict depends on this process's random numbers. `reuse` copies the new values into the
    previous trial's input tensors (same objects, same storage) and re-poisons its output buffers. A trial whose
    kernel raises an Exception reports `error` and the run goes on; anything else ends the sample. With `timing`
    (`{"warmup", "iters", "seed"}`), the kernel and the reference are then timed on the task's `timing_case`
    (`_kernel_timer`). Tensors live on `device` ("cuda" in the sandbox's GPU profile).

    Returns `{"trials": [...], "timing": {"reference": s, "kernel": s} | {"error": why} | None}`, or
    `{"tampered": [names]}` as soon as the code is seen to have replaced a watched attribute (`WATCH`).
    """
    torch.set_grad_enabled(False)
    # One CPU thread. On the CPU: with several, each op ends on a barrier across threads, and on a loaded machine a
    # descheduled thread makes a kernel of many small ops look 10-100x slower than a one-op reference (measured). On
    # a GPU machine too: torch's OpenMP pool takes a thread per core at the first large CPU op (drawing the timing
    # inputs), more than the jail's 64 per uid on a 32-core host, and libgomp then kills the process (seen there).
    torch.set_num_threads(1)
    changed = WATCH.changes()  # the code's top level ran before this call
    if changed:
        return {"tampered": changed}
    spec = KERNEL_TASKS[task]
    traps = install_traps(spec.forbidden_ops)
    try:
        return _run(kernel, spec, trials, timing, traps, device)
    finally:
        set_traps(traps, armed=False)  # torch as it was, for a caller that runs trials in its own process


def _run(kernel: Callable[..., Any], spec: KernelTask, trials: Sequence[dict], timing: dict | None,
         traps: Sequence[Trap], device: str) -> dict:
    results, inputs, outputs = [], [], []
    for trial in trials:
        fresh = [decode(text, s).to(device) for text, s in zip(trial["inputs"], trial["input_specs"], strict=True)]
        if trial.get("reuse") and inputs:
            for old, new in zip(inputs, fresh, strict=True):
                old.copy_(new)
            for buffer in outputs:
                poison_(buffer)
        else:
            inputs, outputs = fresh, [poisoned(s).to(device) for s in trial["outputs"]]
        try:
            kernel(*inputs, *outputs)
            error = None
        except Exception as e:  # the kernel's bug: this trial fails, the next one still runs
            error = f"{type(e).__name__}: {e}"[:500]
        changed = WATCH.changes()
        if changed:
            return {"tampered": changed}
        results.append({"error": error, "outputs": [encode(t) for t in outputs],
                        "inputs": [encode(t) for t in inputs]})
    times = _time(kernel, spec, timing, traps, device) if timing else None
    if times and "tampered" in times:
        return times
    return {"trials": results, "timing": times}


def _time(kernel: Callable[..., Any], task: KernelTask, timing: dict, traps: Sequence[Trap], device: str) -> dict:
    case = task.timing_case or task.cases[0]
    n_inputs = len(case.inputs)

    def reference(*tensors: torch.Tensor) -> None:  # inputs -> outputs, in the kernels' calling convention
        for out, value in zip(tensors[n_inputs:], task.reference(*tensors[:n_inputs]), strict=True):
            out.copy_(value)

    def draw(i: int) -> list[torch.Tensor]:
        return [t.to(device) for t in draw_inputs(case.inputs, timing["seed"] + i)]

    def close(got: torch.Tensor, want: torch.Tensor, j: int) -> bool:
        atol, rtol = task.tolerance[case.outputs[j]["dtype"]]
        return bool(torch.isclose(got.float(), want.float(), rtol=rtol, atol=atol).all())

    buffers = tuple([poisoned(s).to(device) for s in case.outputs] for _ in range(2))
    result = time_against_reference(kernel, reference, draw(0), draw, buffers, close,
                                    (timing["warmup"], timing["iters"]), lambda armed: set_traps(traps, armed),
                                    WATCH.changes)
    set_traps(traps, armed=True)
    return result


WATCH = Watch({
    "time": time, "math": math, "statistics": statistics, "torch": torch, "torch.Tensor": torch.Tensor,
    "torch.nn.functional": torch.nn.functional, "torch.special": torch.special, "torch.linalg": torch.linalg,
    "torch.cuda": torch.cuda, "torch.cuda.Event": torch.cuda.Event, "_kernel_timer": _kernel_timer,
    "_kernel_harness": sys.modules[__name__], "kernelgen": kernelgen, "KERNEL_TASKS": KERNEL_TASKS,
    "mxfp4": kernelgen.mxfp4, "swiglu": sys.modules[kernelgen.swiglu.__module__],  # what the references call
})
"""What the kernel may not replace: the clock, torch's ops (which the references use), this harness, the tasks.
Made last, at import, before any model code exists in this process."""
WATCH.expected[(id(sys.modules[__name__]), "WATCH")] = WATCH  # bound just after its snapshot
