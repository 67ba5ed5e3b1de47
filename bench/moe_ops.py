"""Torch ops that one gpt-oss MoE layer's experts dispatch per call: the host work an eager model pays per layer.

    PYTHONPATH=.shim TRITON_INTERPRET=1 python bench/moe_ops.py [--tokens 32]   # CPU: the Triton paths, interpreted

Each op is a dispatch on the host and, on a GPU, at least one kernel launch; a decode step runs 24 such layers (20b)
for a few rows per expert, where these small launches, not the expert GEMMs' bytes, set much of the step's time.
Counted by a TorchDispatchMode on `Mxfp4Experts` (routing, sorting, both projections with LoRA r16 on the experts,
swiglu, the weighted combine) for a forward without grad, as decoding runs it, and a forward+backward. The counts
do not depend on the sizes, so the layer is small (32 experts as in gpt-oss-20b, hidden 64). Triton kernel launches
are counted apart; this runs the interpreter (CPU), whose own torch ops inside a launch are left out.
"""

import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.interpreter import GridExecutor

from oss_grpo.kernels.expert_matmul import ExpertLora
from oss_grpo.kernels.mxfp4 import quantize
from oss_grpo.kernels.routing import route
from oss_grpo.rl.moe import PROJECTIONS, Mxfp4Experts

EXPERTS, HIDDEN, TOP_K, RANK = 32, 64, 4, 16
VIEWS = ("aten.view", "aten.permute", "aten.transpose", "aten.slice", "aten.select", "aten.as_strided",
         "aten.expand", "aten.unsqueeze", "aten.squeeze", "aten.t", "aten._unsafe_view", "aten.alias", "aten.detach")
"""Ops that only make a new view of the same memory: host work, no kernel."""


def small_layer() -> tuple[Mxfp4Experts, dict[str, ExpertLora]]:
    shapes = {"gate_up_proj": (2 * HIDDEN, HIDDEN), "down_proj": (HIDDEN, HIDDEN)}  # (N, K)
    packed = {p: [quantize(torch.randn(n, k)) for _ in range(EXPERTS)] for p, (n, k) in shapes.items()}
    layer = Mxfp4Experts(
        blocks={p: torch.stack([b for b, _ in packed[p]]) for p in PROJECTIONS},
        scales={p: torch.stack([s for _, s in packed[p]]) for p in PROJECTIONS},
        biases={p: torch.zeros(EXPERTS, n, dtype=torch.bfloat16) for p, (n, _) in shapes.items()},
        alpha=1.702,
        limit=7.0,
    )
    lora = {p: ExpertLora((torch.randn(EXPERTS, RANK, k) / k**0.5).requires_grad_(),
                          torch.randn(EXPERTS, n, RANK, requires_grad=True), scaling=2.0)
            for p, (n, k) in shapes.items()}  # fmt: skip
    return layer, lora


class Dispatches(TorchDispatchMode):
    """Counts the aten ops dispatched under it, by name, and Triton kernel launches as "triton" (under the CPU
    interpreter, whose own torch ops inside a launch are not counted: a GPU launch makes none)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.paused:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        launch = GridExecutor.__call__

        def counted(executor, *args, **kwargs):
            self.ops["triton"] += 1
            self.paused = True
            try:
                return launch(executor, *args, **kwargs)
            finally:
                self.paused = False

        self._launch, GridExecutor.__call__ = launch, counted
        return super().__enter__()

    def __exit__(self, *exc):
        GridExecutor.__call__ = self._launch
        return super().__exit__(*exc)


def count_ops(fn) -> Counter:
    fn()  # warm-up: the interpreter loads each kernel once
    with Dispatches() as counter:
        fn()
    return counter.ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens per call (32: a batch-32 decode step)")
    args = parser.parse_args()
    torch.manual_seed(0)
    layer, lora = small_layer()
    h = torch.randn(args.tokens, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    router_logits = torch.randn(args.tokens, EXPERTS)

    def forward() -> torch.Tensor:
        indices, weights = route(router_logits, TOP_K)
        return layer(h, indices, weights, lora=lora)

    with torch.no_grad():
        inference = count_ops(forward)
    training = count_ops(lambda: forward().float().sum().backward())
    for name, ops in (("forward, no grad", inference), ("forward+backward", training)):
        torch_ops = sum(ops.values()) - ops["triton"]
        views = sum(ops[op] for op in VIEWS)
        print(f"{name}: {torch_ops} torch ops ({views} of them views, no kernel) and {ops['triton']} Triton launches;"
              f" most called: {ops.most_common(10)}")


if __name__ == "__main__":
    main()
