"""Tensors between the kernel check's parent and its sandbox child: drawn from JSON specs, sent as raw bytes.

Apart from `_kernel_harness` because the parent needs these too, and importing the harness initialises CUDA and runs
every reference (what the child must do before it locks down, and the trainer process must not).
"""

import base64
from collections.abc import Sequence
from typing import Any

import torch

TRITON_JAIL_ENV = {"OSS_GRPO_TRITON_JAIL": "1", "CUDA_CACHE_DISABLE": "1"}
"""The sandbox child's environment for a GPU check of code that imports Triton: the harness sets Triton up to compile
in the jail (`_triton_jail`), and the driver's JIT keeps no cache in the host's home."""

Spec = dict[str, Any]
"""One tensor as JSON data: `shape`, `dtype` (a torch dtype name), and how to draw it: `kind` "normal" (times
`scale`) or "integers" (in [`low`, `high`))."""


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


def encode(t: torch.Tensor) -> str:
    """The tensor's raw bytes as base64 text: exact for every dtype, bfloat16 included, and JSON-compatible."""
    return base64.b64encode(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).decode()


def decode(text: str, spec: Spec) -> torch.Tensor:
    """Inverse of `encode` for a tensor of `spec`'s shape and dtype; ValueError when the byte count differs."""
    raw = bytearray(base64.b64decode(text, validate=True))
    dtype, shape = getattr(torch, spec["dtype"]), tuple(spec["shape"])
    flat = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    if flat.numel() != dtype.itemsize * torch.Size(shape).numel():
        raise ValueError(f"{flat.numel()} bytes for a {spec['dtype']} tensor of shape {list(shape)}")
    return flat.view(dtype).reshape(shape)
