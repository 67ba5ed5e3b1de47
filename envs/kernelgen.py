"""The kernel-generation tasks: what the model must write, the reference it is checked against, inputs, tolerances.

Each task asks for one function in destination-passing style, `name(*inputs, *outputs) -> None`: the checker
(`oss_grpo.rewards.kernel_check`) allocates the output buffers, fills them with poison (NaN), and compares what the
function wrote with the reference's result on the same inputs. The model may answer with a Triton kernel and its
launcher, or with plain PyTorch built from smaller ops; the op the task is about (`forbidden_ops`) is off limits.

Cases are several shapes (odd sizes included, so unmasked tails fail) and dtypes. They are small because on a CPU the
Triton interpreter runs every program instance in Python. Tolerances are per output dtype: float32 allows a different
summation order, bfloat16 one or two rounding steps (the interpreter's bf16 store rounds ~2x worse than a GPU's,
DESIGN), MXFP4 dequantization is exact.

`KernelGenEnv` is the same task set as a Gymnasium environment (`oss_grpo/KernelGen-v0`), one kernel per episode:

    env = gymnasium.make("oss_grpo/KernelGen-v0")
    prompt_text, info = env.reset(seed=0, options={"task": "softmax"})
    _, reward, terminated, _, info = env.step(source_code)   # info["correct"], info["speedup"], info["reason"]

Training does not go through it (TRL scores completions with the `kernel_*` rewards, rl/tasks.py); it is for
evaluating a model or a hand-written kernel with Gymnasium tooling. Its score comes from the checker, which lives in
`oss_grpo.rewards` (envs may not import it: tests/test_style.py), so the environment takes the checker as an
argument, a `"module:function"` id like Gymnasium's entry points, resolved on the first step; any function
`(task_name, answer) -> verdict` with the attributes of `oss_grpo.rewards.kernel_check.KernelVerdict` fits.
"""

import dataclasses
import importlib
import string
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch
from gymnasium import spaces

from oss_grpo.kernels import mxfp4
from oss_grpo.kernels.swiglu import ALPHA, LIMIT, swiglu

Spec = dict
"""A tensor as data (see `oss_grpo.rewards._kernel_harness.Spec`): shape, dtype and how to draw it."""
EPS = 1e-5
"""The epsilon of the norm tasks (gpt-oss's RMSNorm uses 1e-5)."""


def normal(shape: tuple[int, ...], dtype: str = "float32", scale: float = 1.0) -> Spec:
    return {"shape": list(shape), "dtype": dtype, "kind": "normal", "scale": scale}


def integers(shape: tuple[int, ...], low: int, high: int, dtype: str = "uint8") -> Spec:
    return {"shape": list(shape), "dtype": dtype, "kind": "integers", "low": low, "high": high}


def output(shape: tuple[int, ...], dtype: str) -> Spec:
    return {"shape": list(shape), "dtype": dtype}


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One shape and dtype combination: the inputs to draw and the output buffers to fill."""

    inputs: tuple[Spec, ...]
    outputs: tuple[Spec, ...]


@dataclasses.dataclass(frozen=True)
class KernelTask:
    """One kernel to write, with everything the prompt and the checker need."""

    name: str
    """Task id, also the function the model must define."""
    signature: str
    """The function's signature as shown in the prompt."""
    description: str
    """What the function computes, in the prompt's words (shapes, layout, constants)."""
    reference: Callable[..., tuple[torch.Tensor, ...]]
    """inputs -> outputs, computed in float32 and cast to each output's dtype."""
    cases: tuple[KernelCase, ...]
    """The shapes and dtypes every check runs, one trial each."""
    timing_case: KernelCase | None = None
    """The case timed for the speed-up reward: larger than the checked cases, so the time is the kernel's work rather
    than Python's call overhead (still small for a GPU, where it measures launch cost mostly); None: the first
    case."""
    forbidden_ops: tuple[str, ...] = ()
    """torch ops (function, method or functional names) that implement the task: statically refused, and trapped
    at run time."""
    forbid_matmul_operator: bool = False
    """Refuse `a @ b` outside @triton.jit functions (the matmul task)."""
    tolerance: dict[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2)})
    """Output dtype -> (atol, rtol) of `torch.isclose` against the reference."""


def _softmax(x: torch.Tensor) -> tuple[torch.Tensor]:
    return (torch.softmax(x.float(), dim=-1).to(x.dtype),)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor]:
    h = x.float()
    return ((h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * weight.float()).to(x.dtype),)


def _layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor]:
    y = torch.nn.functional.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), EPS)
    return (y.to(x.dtype),)


def _swiglu(h: torch.Tensor) -> tuple[torch.Tensor]:
    return (swiglu(h),)


def _matmul_bias(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
    return ((x.float() @ w.float() + b.float()).to(x.dtype),)


def _dequantize(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor]:
    return (mxfp4.dequantize(blocks, scales, torch.bfloat16),)


def _rows(make: Callable[[int, int, str], KernelCase]) -> dict[str, object]:
    """`cases` and `timing_case` of a row-wise task."""
    return {"cases": tuple(make(m, n, dtype) for m, n, dtype in
                           ((4, 64, "float32"), (7, 100, "float32"), (5, 300, "bfloat16"))),
            "timing_case": make(64, 1024, "float32")}


KERNEL_TASKS: dict[str, KernelTask] = {task.name: task for task in (
    KernelTask(
        "softmax", "def softmax(x: torch.Tensor, out: torch.Tensor) -> None",
        "Row-wise softmax over the last dimension of a 2-D tensor x [M, N], written into out [M, N] (same dtype). "
        "Compute in float32 and subtract each row's maximum first so large inputs do not overflow.",
        _softmax,
        **_rows(lambda m, n, d: KernelCase((normal((m, n), d, scale=4.0),), (output((m, n), d),))),
        forbidden_ops=("softmax", "log_softmax", "softmin", "gumbel_softmax", "_softmax"),
    ),
    KernelTask(
        "rmsnorm", "def rmsnorm(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None",
        f"RMSNorm over the last dimension: out = x / sqrt(mean(x**2, -1) + {EPS}) * weight, for x [M, N], weight "
        "[N] (x's dtype), out [M, N] in x's dtype. Compute in float32.",
        _rmsnorm,
        **_rows(lambda m, n, d: KernelCase((normal((m, n), d, 2.0), normal((n,), d)), (output((m, n), d),))),
        forbidden_ops=("rms_norm", "RMSNorm", "normalize"),
    ),
    KernelTask(
        "layernorm",
        "def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None",
        f"LayerNorm over the last dimension: out = (x - mean) / sqrt(var + {EPS}) * weight + bias, with the biased "
        "variance, for x [M, N], weight and bias [N] (x's dtype), out [M, N] in x's dtype. Compute in float32.",
        _layernorm,
        **_rows(lambda m, n, d: KernelCase((normal((m, n), d, 3.0), normal((n,), d), normal((n,), d)),
                                         (output((m, n), d),))),
        forbidden_ops=("layer_norm", "LayerNorm", "native_layer_norm", "group_norm", "instance_norm", "batch_norm"),
    ),
    KernelTask(
        "swiglu", "def swiglu(h: torch.Tensor, out: torch.Tensor) -> None",
        "gpt-oss's clamped SwiGLU. h [M, 2N] holds interleaved pairs: gate = h[:, 0::2] clamped to at most "
        f"{LIMIT:g}, up = h[:, 1::2] clamped to [-{LIMIT:g}, {LIMIT:g}]; out [M, N] (h's dtype) = (up + 1) * gate * "
        f"sigmoid({ALPHA} * gate). Compute in float32.",
        _swiglu,
        **_rows(lambda m, n, d: KernelCase((normal((m, 2 * n), d, scale=5.0),), (output((m, n), d),))),
        forbidden_ops=("glu", "swiglu"),
    ),
    KernelTask(
        "matmul_bias",
        "def matmul_bias(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None",
        "out = x @ w + b for x [M, K], w [K, N], b [N], out [M, N], all of one dtype; accumulate in float32. "
        "Write the product yourself (tl.dot in a Triton kernel, or elementwise products and sums in PyTorch): "
        "torch's matrix products and the @ operator outside a @triton.jit function are not allowed.",
        _matmul_bias,
        tuple(KernelCase((normal((m, k), d), normal((k, n), d), normal((n,), d)), (output((m, n), d),))
              for m, k, n, d in ((8, 32, 16, "float32"), (5, 40, 24, "float32"), (16, 64, 32, "bfloat16"))),
        timing_case=KernelCase((normal((64, 128)), normal((128, 64)), normal((64,))), (output((64, 64), "float32"),)),
        forbidden_ops=("matmul", "mm", "bmm", "addmm", "addbmm", "baddbmm", "addmv", "mv", "linear", "bilinear",
                       "einsum", "tensordot", "inner", "chain_matmul", "multi_dot", "__matmul__", "__rmatmul__"),
        forbid_matmul_operator=True,
        tolerance={"float32": (1e-4, 1e-4), "bfloat16": (5e-2, 2e-2)},
    ),
    KernelTask(
        "mxfp4_dequantize", "def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> None",
        "Dequantize MXFP4 weights. blocks [N, K/32, 16] uint8 hold two 4-bit e2m1 codes per byte, the LOW nibble "
        "first (even k); scales [N, K/32] uint8 are e8m0 exponents, value 2**(s - 127), shared by 32 consecutive k. "
        "e2m1 codes 0..15 are +0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6. Write "
        "out[n, k] = e2m1(code[n, k]) * 2**(scales[n, k // 32] - 127) into out [N, K] (bfloat16).",
        _dequantize,
        tuple(KernelCase((integers((n, k // 32, 16), 0, 256), integers((n, k // 32), 110, 140)),
                         (output((n, k), "bfloat16"),)) for n, k in ((4, 64), (6, 96), (3, 320))),
        timing_case=KernelCase((integers((256, 32, 16), 0, 256), integers((256, 32), 110, 140)),
                               (output((256, 1024), "bfloat16"),)),
        tolerance={"bfloat16": (0.0, 0.0)},
    ),
)}
"""Task id -> task; the order is the order tasks cycle through in a training set."""

ALLOWED_IMPORTS = frozenset({"torch", "triton", "math"})
"""What a submission may import."""


def prompt(task: KernelTask) -> str:
    """The user message of a task: what to write, its signature, the cases it is checked on, and the rules."""
    shapes = "; ".join(", ".join(f"{s['dtype']}{s['shape']}" for s in case.inputs) for case in task.cases)
    forbidden = ", ".join(op for op in task.forbidden_ops if not op.startswith("_"))
    timed = ", ".join(f"{s['dtype']}{s['shape']}" for s in (task.timing_case or task.cases[0]).inputs)
    return (
        f"Write `{task.name}`: {task.description}\n\n"
        f"Signature:\n    {task.signature}\n"
        "The output buffers are allocated for you and hold garbage: write every element. Do not modify the inputs, "
        "do not keep state between calls, and do not return anything.\n"
        f"It is checked on fresh random inputs of these shapes: {shapes}. A correct function is then timed against "
        f"PyTorch on larger inputs ({timed}): faster scores more.\n"
        "Use a Triton kernel (import triton, triton.language as tl) or PyTorch built from smaller ops; imports other "
        f"than torch, triton and math are refused{f', and so are {forbidden}' if forbidden else ''}.\n"
        "Answer with one ```python code block holding the imports, any kernels and the function."
    )


CHECKER = "oss_grpo.rewards.kernel_check:check_answer"
"""The built-in checker: sandboxed trials against the reference, then the timed speed-up."""
CHARSET = frozenset(string.printable)
"""ASCII letters, digits, punctuation and whitespace: every character of the prompts and of Python source."""
MAX_TEXT = 20_000
"""Longest prompt, answer or feedback text, in characters."""


class KernelGenEnv(gym.Env):
    """
    ## Description
    Write one kernel of the kernel-generation task set (`oss_grpo.envs.kernelgen.KERNEL_TASKS`: softmax, rmsnorm,
    layernorm, gpt-oss swiglu, matmul with bias, MXFP4 dequantize). The observation is the task's prompt; the action
    is the answer (Python source, or text holding a ```python block) and is checked in the sandbox: trials on fresh
    random inputs against the reference, then, for a fully correct kernel, its speed-up over the reference.

    ## Action Space
    `Text(MAX_TEXT, charset=CHARSET)`: the answer.

    ## Observation Space
    `Text(MAX_TEXT, charset=CHARSET)`: the task's prompt after `reset`; after `step`, the checker's verdict in words
    (characters outside `CHARSET` become `?`).

    ## Rewards
    The fraction of trials the kernel got right (inputs untouched, outputs within tolerance), plus
    `speedup_weight * max(0, log2(speed-up))` for a fully correct kernel that was timed (log2 clipped at 4 by the
    checker): a correct kernel scores at least 1, one 4x faster than the reference 1 + 2 * `speedup_weight`.
    Refused, crashing or absent code scores 0. On a CPU only PyTorch kernels are timed (Triton kernels run in
    Triton's interpreter there).

    ## Episode End
    Terminated after the one step. `info` holds the verdict: `task`, `runs`, `correct`, `reason`, `trials`,
    `seconds`, `speedup`, `speedup_note`.

    ## Arguments
    `render_mode="ansi"`; `tasks` (task ids `reset` draws from, default all); `speedup_weight` (default 0.25);
    `check` (a `"module:function"` id or the function itself, default `CHECKER`).
    `reset(options={"task": "softmax"})` picks the task instead of drawing it.

    ## Version History
    v0: first version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, render_mode: str | None = None, tasks: list[str] | None = None, speedup_weight: float = 0.25,
                 check: str | Callable[[str, str], Any] = CHECKER) -> None:
        self.tasks = list(tasks or KERNEL_TASKS)
        unknown = [t for t in self.tasks if t not in KERNEL_TASKS]
        if unknown:
            raise ValueError(f"tasks={unknown!r}: unknown kernel tasks; known: {', '.join(KERNEL_TASKS)}")
        self.observation_space = spaces.Text(MAX_TEXT, charset=CHARSET)
        self.action_space = spaces.Text(MAX_TEXT, charset=CHARSET)
        self.render_mode = render_mode
        self.speedup_weight = speedup_weight
        self._check = check
        self.task = self.tasks[0]
        self.text = prompt(KERNEL_TASKS[self.task])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if options and "task" in options:
            if options["task"] not in self.tasks:
                raise ValueError(f"options['task']={options['task']!r}: not one of this env's tasks {self.tasks}")
            self.task = options["task"]
        else:
            self.task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        self.text = prompt(KERNEL_TASKS[self.task])
        return self.text, {"task": self.task}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        verdict = self.checker()(self.task, action)
        bonus = max(0.0, verdict.speedup_score) if verdict.speedup_score is not None else 0.0
        reward = float(verdict.correct) + self.speedup_weight * bonus
        speed = f"{verdict.speedup:.2f}x the reference's speed" if verdict.speedup is not None else \
            verdict.speedup_note
        self.text = _printable(f"{verdict.correct:.0%} of the trials correct. {verdict.reason or 'All correct.'} "
                               f"Speed: {speed}.")
        info = {"task": self.task, "runs": verdict.runs, "correct": verdict.correct, "reason": verdict.reason,
                "trials": list(verdict.trials), "seconds": verdict.seconds, "speedup": verdict.speedup,
                "speedup_note": verdict.speedup_note}
        return self.text, reward, True, False, info

    def checker(self) -> Callable[[str, str], Any]:
        """The checker function, resolved from its `"module:function"` id on first use."""
        if isinstance(self._check, str):
            module, _, name = self._check.partition(":")
            self._check = getattr(importlib.import_module(module), name)
        return self._check

    def render(self) -> str | None:
        return self.text if self.render_mode == "ansi" else None


def _printable(text: str) -> str:
    return "".join(c if c in CHARSET else "?" for c in text)[:MAX_TEXT]
