"""Time a kernel against its task's reference inside the sandbox child, on a clock the kernel cannot move.

`_kernel_harness.run_trials` calls `time_against_reference` after the trials when the parent asks for a speed-up.
Each of `warmup + iters` rounds draws fresh values into the same input tensors, runs the reference and the kernel
on them (alternating which goes first, so neither always finds the other's data in cache), checks the kernel's
output against the reference's and that nothing the timing depends on was replaced, and keeps the medians. The
clock is a pair of CUDA events with a device-wide synchronize before the end event when the inputs are on a GPU
(work left on a side stream is counted), else `time.perf_counter`.

Why the kernel cannot move the clock: the clock functions are bound here at import, before any model code exists
in the process, and only those bindings are called; patching `time.perf_counter`, `torch.cuda.Event` or
`torch.cuda.synchronize` later changes nothing this module calls. It is still reported: `Watch` remembers, at
import, the identity of every attribute of the modules the timing and the references use (time, torch and its
tensor/functional namespaces, torch.cuda and its Event, the harness, this module, the task table), and code that
replaced or added any of them fails the sample ("tampered"), so a kernel that slows the reference down by wrapping
`torch.exp` scores nothing. The static rules (`kernel_policy`: no attribute assignment, no `sys`/`cuda`) refuse
all of this before it runs; this is the run-time layer under them. It is not a wall: code that reaches the
internals of this module's objects by reflection can forge any number it reports, as it can forge anything the
sandbox child returns (sandbox.py, "What is NOT covered").
"""

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import torch

_perf_counter = time.perf_counter
_Event = torch.cuda.Event
_synchronize = torch.cuda.synchronize
_median = statistics.median
_MISSING = object()

Kernel = Callable[..., Any]
"""A function in destination-passing style: `fn(*inputs, *outputs) -> None`."""


class Watch:
    """The identity of every attribute of some namespaces, remembered at construction; `changes()` names what
    differs later. `expected` holds what the harness itself put there (its trapped ops), keyed by
    `(id(namespace), name)`."""

    def __init__(self, namespaces: Mapping[str, object]) -> None:
        self._watched = [(label, id(ns), _attributes(ns), dict(_attributes(ns))) for label, ns in namespaces.items()]
        self.expected: dict[tuple[int, str], object] = {}

    def changes(self) -> list[str]:
        """"torch.exp", "time.perf_counter", ...: every attribute replaced, removed or added since construction.
        A module appearing as an attribute is not a change: importing a submodule binds it on its package."""
        changed = []
        for label, key, live, snapshot in self._watched:
            expected = {name: value for (owner, name), value in self.expected.items() if owner == key}
            for name, value in snapshot.items():
                if live.get(name, _MISSING) is not expected.get(name, value):
                    changed.append(f"{label}.{name}")
            added = set(expected) - set(snapshot)
            if len(live) != len(snapshot):  # equal sizes: an addition implies a removal, reported above
                added |= live.keys() - snapshot.keys()
            for name in added:
                have, want = live.get(name, _MISSING), expected.get(name, _MISSING)
                if have is not want and not (want is _MISSING and isinstance(have, ModuleType)):
                    changed.append(f"{label}.{name}")
        return sorted(changed)


def poison_(buffer: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer, in place, with what a kernel that writes nothing cannot pass with: NaN for floats,
    0xA5 bytes otherwise; returns it."""
    return buffer.fill_(float("nan") if buffer.dtype.is_floating_point else 0xA5)


def _attributes(namespace: object) -> Mapping[str, Any]:
    """The live mapping of a namespace's attributes: a dict as itself, a module's or class's `__dict__`."""
    return namespace if isinstance(namespace, dict) else vars(namespace)


def elapsed_seconds(fn: Kernel, tensors: Sequence[torch.Tensor], cuda: bool) -> float:
    """Wall time of one `fn(*tensors)`, by CUDA events around a device-wide synchronize on a GPU, else
    `perf_counter`; only the bindings made at import are called."""
    if cuda:
        start, end = _Event(enable_timing=True), _Event(enable_timing=True)
        _synchronize()
        start.record()
        fn(*tensors)
        _synchronize()  # all streams: work the kernel left on a side stream is inside the span
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    began = _perf_counter()
    fn(*tensors)
    return _perf_counter() - began


def time_against_reference(kernel: Kernel, reference: Kernel, inputs: list[torch.Tensor],
                           draw: Callable[[int], list[torch.Tensor]], outputs: tuple[list, list],
                           close: Callable[[torch.Tensor, torch.Tensor, int], bool], rounds: tuple[int, int],
                           arm: Callable[[bool], None], changes: Callable[[], list[str]]) -> dict:
    """Median seconds of `reference` and `kernel` over `rounds = (warmup, iters)` rounds on the same fresh values.

    Args:
        kernel, reference: both in destination-passing style.
        inputs: the tensors every round refills in place with `draw(round)` (on the device that is timed).
        outputs: `(reference buffers, kernel buffers)`; the kernel's are refilled with NaN (poison) every round.
        close: `close(got, want, output index)` says whether the kernel's output matches the reference's.
        arm: `arm(True)` arms the harness's traps for the kernel's turn, `arm(False)` gives the reference its ops.
        changes: `Watch.changes`, checked after every call of the kernel (only the kernel can change anything).

    Returns `{"reference": s, "kernel": s}`, or `{"tampered": [names]}` when the kernel replaced something the
    timing or the reference uses, or `{"error": why}` when a timed call raised or wrote a different answer.
    """
    warmup, iters = rounds
    ref_out, out = outputs
    cuda = inputs[0].is_cuda
    times: dict[str, list[float]] = {"reference": [], "kernel": []}
    for i in range(warmup + iters):
        for t, new in zip(inputs, draw(i), strict=True):
            t.copy_(new)
        for buffer in out:
            poison_(buffer)
        spent = {}
        for turn in (("reference", "kernel") if i % 2 == 0 else ("kernel", "reference")):
            arm(turn == "kernel")
            try:
                spent[turn] = elapsed_seconds(reference if turn == "reference" else kernel,
                                              [*inputs, *(ref_out if turn == "reference" else out)], cuda)
            except Exception as e:  # the kernel's bug (the reference does not raise on its own task's inputs)
                return {"error": f"timed call {i} raised {type(e).__name__}: {e}"[:500]}
            changed = changes() if turn == "kernel" else []
            if changed:  # before the reference runs on what the kernel may have slowed down
                return {"tampered": changed}
        wrong = [j for j, (got, want) in enumerate(zip(out, ref_out, strict=True)) if not close(got, want, j)]
        if wrong:
            return {"error": f"timed call {i}: output {wrong[0]} differs from the reference on the same inputs"}
        if i >= warmup:
            for turn, seconds in spent.items():
                times[turn].append(seconds)
    return {turn: _median(ts) for turn, ts in times.items()}
