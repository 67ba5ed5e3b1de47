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
kernels that key a cache on `id()` or `data_ptr()` instead of the values.
"""

import base64
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton
import triton.language as tl
import triton.runtime.interpreter  # noqa: F401  (what @triton.jit loads under TRITON_INTERPRET=1)

from oss_grpo.envs.kernelgen import KERNEL_TASKS

Spec = dict[str, Any]
"""One tensor as JSON data: `shape`, `dtype` (a torch dtype name), and how to draw it: `kind` "normal" (times
`scale`) or "integers" (in [`low`, `high`))."""

_TRAPPED_NAMESPACES = (torch, torch.Tensor, torch.nn.functional, torch.special, torch.linalg)
RUNTIME_IMPORTS = frozenset({"builtins", "collections", "numpy"})
"""What Triton's interpreter imports (already loaded) inside a kernel call; the sandbox's import guard must admit
them at run time, while the static check still refuses them in the model's code."""


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


if triton.knobs.runtime.interpret:
    warm_up()


def draw_inputs(specs: Sequence[Spec], seed: int) -> list[torch.Tensor]:
    """Random tensors for `specs`, reproducible from `seed` within one process.

    Not across processes: torch picks its random kernels by the CPU features it detects, and the jailed child has
    no /proc/cpuinfo. Hence the parent draws the trials' inputs and sends their bytes."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), getattr(torch, spec["dtype"])
        if spec["kind"] == "integers":
            t = torch.randint(spec["low"], spec["high"], shape, generator=generator, dtype=torch.int64)
        else:
            t = torch.randn(shape, generator=generator) * spec["scale"]
        tensors.append(t.to(dtype))
    return tensors


def poisoned(spec: Spec) -> torch.Tensor:
    """An output buffer a kernel that writes nothing cannot pass with: NaN for floats, 0xA5 bytes otherwise."""
    dtype = getattr(torch, spec["dtype"])
    if dtype.is_floating_point:
        return torch.full(tuple(spec["shape"]), float("nan"), dtype=dtype)
    return torch.full(tuple(spec["shape"]), 0xA5, dtype=dtype)


def encode(t: torch.Tensor) -> str:
    """The tensor's raw bytes as base64 text: exact for every dtype, bfloat16 included, and JSON-compatible."""
    return base64.b64encode(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).decode()


def decode(text: str, spec: Spec) -> torch.Tensor:
    """Inverse of `encode` for a tensor of `spec`'s shape and dtype; ValueError when the byte count differs."""
    raw = bytearray(base64.b64decode(text, validate=True))
    dtype, shape = getattr(torch, spec["dtype"]), tuple(spec["shape"])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    if flat.numel() != dtype.itemsize * torch.Size(shape).numel():
        raise ValueError(f"{flat.numel()} bytes for a {spec['dtype']} tensor of shape {list(shape)}")
    return flat.view(dtype).reshape(shape)


def _trap(name: str) -> Callable[..., Any]:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{name} is the op this task asks you to implement; it is disabled in the checker")
    return forbidden


def install_traps(names: Sequence[str]) -> None:
    """Make the task's own framework ops raise wherever torch exposes them (function, method, functional, special)."""
    for name in names:
        for namespace in _TRAPPED_NAMESPACES:
            if hasattr(namespace, name):
                setattr(namespace, name, _trap(f"torch {name}"))


def run_trials(kernel: Callable[..., Any], task: str, trials: Sequence[dict], timing: dict | None = None) -> dict:
    """Call `kernel(*inputs, *outputs)` once per trial and return each trial's raw outputs and inputs after the call.

    Each trial is `{"inputs": [base64 bytes], "input_specs": [Spec], "outputs": [Spec], "reuse": bool}`: the parent
    drew the inputs, so no verdict depends on this process's random numbers. `reuse` copies the new values into the
    previous trial's input tensors (same objects, same storage) and re-poisons its output buffers. A trial whose
    kernel raises an Exception reports `error` and the run goes on; anything else ends the sample. With `timing`
    (`{"warmup", "iters", "seed"}`), the reference and then the kernel are timed on the first trial's shapes
    (`median_seconds`); the reference goes first, before the traps disable the ops it may use.
    """
    torch.set_grad_enabled(False)
    times = None
    if timing:
        reference = _into_outputs(KERNEL_TASKS[task].reference, len(trials[0]["input_specs"]))
        times = {"reference": _median_on(reference, trials[0], timing)}
    install_traps(KERNEL_TASKS[task].forbidden_ops)
    results, inputs, outputs = [], [], []
    for trial in trials:
        fresh = [decode(text, spec) for text, spec in zip(trial["inputs"], trial["input_specs"], strict=True)]
        if trial.get("reuse") and inputs:
            for old, new in zip(inputs, fresh, strict=True):
                old.copy_(new)
            for buffer, spec in zip(outputs, trial["outputs"], strict=True):
                buffer.copy_(poisoned(spec))
        else:
            inputs, outputs = fresh, [poisoned(spec) for spec in trial["outputs"]]
        start = time.perf_counter()
        try:
            kernel(*inputs, *outputs)
            error = None
        except Exception as e:  # the kernel's bug: this trial fails, the next one still runs
            error = f"{type(e).__name__}: {e}"[:500]
        seconds = time.perf_counter() - start
        results.append({"error": error, "seconds": seconds, "outputs": [encode(t) for t in outputs],
                        "inputs": [encode(t) for t in inputs]})
    if timing:
        times["kernel"] = _median_on(kernel, trials[0], timing)
    return {"trials": results, "timing": times}


def _into_outputs(reference: Callable[..., Sequence[torch.Tensor]], n_inputs: int) -> Callable[..., None]:
    """The reference (inputs -> outputs) in the kernels' calling convention (inputs, then buffers to fill)."""
    def call(*tensors: torch.Tensor) -> None:
        for out, value in zip(tensors[n_inputs:], reference(*tensors[:n_inputs]), strict=True):
            out.copy_(value)
    return call


def _median_on(fn: Callable[..., Any], trial: dict, timing: dict) -> float:
    inputs = draw_inputs(trial["input_specs"], timing["seed"])
    outputs = [poisoned(spec) for spec in trial["outputs"]]
    return median_seconds(fn, inputs, outputs, trial["input_specs"], timing["warmup"], timing["iters"],
                          timing["seed"])


def median_seconds(fn: Callable[..., Any], inputs: list[torch.Tensor], outputs: list[torch.Tensor],
                   specs: Sequence[Spec], warmup: int, iters: int, seed: int) -> float:
    """Median time of `fn(*inputs, *outputs)` with fresh values before every call, so no cache can answer.

    On CUDA each call sits between two events with a device-wide synchronize before the end event: work launched on
    a side stream is counted. On CPU a monotonic clock. Refilling the inputs happens outside the timed span.
    """
    cuda = inputs[0].is_cuda
    times = []
    for i in range(warmup + iters):
        for t, new in zip(inputs, draw_inputs(specs, seed + i), strict=True):
            t.copy_(new)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn(*inputs, *outputs)
            torch.cuda.synchronize()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            began = time.perf_counter()
            fn(*inputs, *outputs)
            seconds = time.perf_counter() - began
        if i >= warmup:
            times.append(seconds)
    return statistics.median(times)
