"""The kernel-generation env: known-good kernels score correct, each cheat scores a failure, a CPU run trains.

Where a GPU is visible the known-good kernels are checked on it, in the sandbox's GPU profile: Triton compiled
inside the jail (`_triton_jail`) and every kernel timed.

Sandbox calls cost ~2 s each (torch and Triton start-up in the jailed child), so the cases are few and each one
exercises a different layer: the static policy (`kernel_policy`, no process), the trials run in the sandbox and
judged in the parent (`kernel_check`), and the rewards as TRL calls them.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from oss_grpo.envs.kernelgen import KERNEL_TASKS
from oss_grpo.rewards import _kernel_harness, get, kernel_check, sandbox
from oss_grpo.rewards.kernel_check import check_answer, check_kernel, extract_code
from oss_grpo.rl.config import load_config
from oss_grpo.rl.errors import ConfigError, SandboxError

REPO = Path(__file__).resolve().parents[1]
SOLUTIONS = REPO / "tests" / "kernelgen_solutions"
SOFTMAX = KERNEL_TASKS["softmax"]
GOOD_SOFTMAX = (SOLUTIONS / "softmax_torch.py").read_text()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", ["softmax_triton", "softmax_torch", "rmsnorm_triton", "rmsnorm_torch",
                                  "layernorm_torch", "swiglu_triton", "swiglu_torch", "matmul_bias_triton",
                                  "matmul_bias_torch", "mxfp4_dequantize_triton", "mxfp4_dequantize_torch"])
def test_known_good_kernel_scores_correct(name: str) -> None:
    task = KERNEL_TASKS[name.rsplit("_", 1)[0]]
    verdict = check_kernel(task, (SOLUTIONS / f"{name}.py").read_text(), seed=3, device=DEVICE)
    assert verdict.runs and verdict.correct == 1.0, verdict
    assert len(verdict.trials) == len(task.cases) + 1  # every case, then the in-place reuse trial
    assert (verdict.speedup is not None) == (DEVICE == "cuda" or name.endswith("_torch")), verdict


@pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter has no libdevice; run on a GPU (issue #5 note)")
def test_a_triton_kernel_that_links_libdevice_compiles_in_the_gpu_jail() -> None:
    """libdevice is a file the compiler reads after lock-down: the GPU profile copies it into the jail."""
    source = (SOLUTIONS / "rmsnorm_triton.py").read_text().replace("tl.rsqrt(", "libdevice.rsqrt(")
    source = source.replace("import triton.language as tl\n",
                            "import triton.language as tl\nfrom triton.language.extra import libdevice\n")
    assert "libdevice.rsqrt(" in source and "import libdevice" in source
    verdict = check_kernel(KERNEL_TASKS["rmsnorm"], source, seed=3, device="cuda")
    assert verdict.correct == 1.0 and verdict.speedup is not None, verdict


# Each cheat must be refused before it runs: the static half of the anti-cheat rules.
REFUSED = {
    "calls the op": ("import torch\ndef softmax(x, out):\n    out.copy_(torch.softmax(x.float(), -1))\n", "softmax"),
    "calls the method": ("def softmax(x, out):\n    out.copy_(x.float().softmax(-1))\n", "softmax"),
    "imports the op": ("from torch.nn.functional import softmax as s\ndef softmax(x, out):\n    out.copy_(s(x, -1))\n",
                       "importing the op"),
    "imports the reference": ("from oss_grpo.envs import kernelgen\ndef softmax(x, out):\n    pass\n", "oss_grpo"),
    "caches in a module dict": ("import torch\nCACHE = {}\ndef softmax(x, out):\n    out.copy_(CACHE[x.shape])\n",
                                "top level"),
    "caches in a default": ("def softmax(x, out, cache={}):\n    out.copy_(cache[0])\n", "default arguments"),
    "keeps global state": ("N = 0\ndef softmax(x, out):\n    global N\n    N += 1\n", "global"),
    "reads identity": ("def softmax(x, out):\n    k = id(x)\n", "identity"),
    "reads the pointer": ("def softmax(x, out):\n    k = x.data_ptr()\n", "data_ptr"),
    "patches the timer": ("import torch\ndef softmax(x, out):\n    torch.cuda.Event.elapsed_time = abs\n",
                          "assigning the attribute"),
    "syncs a side stream": ("import torch\ndef softmax(x, out):\n    s = torch.cuda.Stream()\n", "'cuda'"),
    "walks to sys": ("import torch\ndef softmax(x, out):\n    m = torch.sys.modules\n", "'sys'"),
    "imports os": ("import os\ndef softmax(x, out):\n    pass\n", "import of 'os'"),
}


@pytest.mark.parametrize("source, finding", REFUSED.values(), ids=REFUSED.keys())
def test_cheat_is_refused_before_it_runs(source: str, finding: str) -> None:
    verdict = check_kernel(SOFTMAX, source)
    assert not verdict.runs and verdict.correct == 0.0 and finding in verdict.reason, verdict
    assert verdict.seconds == 0.0  # no sandbox was started


def test_matmul_operator_only_inside_triton_kernels() -> None:
    task = KERNEL_TASKS["matmul_bias"]
    assert "@ operator" in check_kernel(task, "def matmul_bias(x, w, b, out):\n    out.copy_(x @ w + b)\n").reason
    jitted = "import triton\n@triton.jit\ndef k(a, b):\n    c = a @ b\ndef matmul_bias(x, w, b, out):\n    k(x, w)\n"
    assert "@ operator" not in check_kernel(task, jitted).reason


# Each of these passes the static rules and must fail on what it does: judged in the parent from raw outputs.
MISBEHAVING = {
    "writes nothing (returns the poisoned buffer)": ("def softmax(x, out):\n    return None\n", "not written"),
    "mutates its input": ("import torch\ndef softmax(x, out):\n    x.sub_(x.amax(-1, keepdim=True))\n"
                          "    e = torch.exp(x.float())\n    out.copy_(e / e.sum(-1, keepdim=True))\n", "modified input"),
    "reduces the wrong dimension": ("import torch\ndef softmax(x, out):\n    e = torch.exp(x.float())\n"
                                    "    out.copy_(e / e.sum(0, keepdim=True))\n", "is wrong"),
    "raises": ("def softmax(x, out):\n    raise ValueError('no')\n", "raised ValueError"),
    "takes 50 GB of host memory": ("import torch\ndef softmax(x, out):\n    torch.ones(50 << 30, dtype=torch.uint8)\n",
                                   "can't allocate memory"),
    "does not compile": ("import triton\nimport triton.language as tl\n@triton.jit\ndef k(X):\n"
                         "    tl.store(X, tl.no_such_op(1.0))\ndef softmax(x, out):\n    k[(1,)](out)\n", "no_such_op"),
}


@pytest.mark.parametrize("source, reason", MISBEHAVING.values(), ids=MISBEHAVING.keys())
def test_misbehaving_kernel_scores_zero(source: str, reason: str) -> None:
    verdict = check_kernel(SOFTMAX, source, seed=5, device=DEVICE)
    assert verdict.correct == 0.0 and reason in verdict.reason, verdict


def test_cache_keyed_on_identity_fails_the_reuse_trial(monkeypatch) -> None:
    """With the static rules off, a data_ptr-keyed cache answers the in-place reuse trial with stale values."""
    monkeypatch.setattr(kernel_check, "kernel_findings", lambda source, task: [])
    source = ("import torch\nCACHE = {}\ndef softmax(x, out):\n    key = x.data_ptr()\n    if key not in CACHE:\n"
              "        e = torch.exp(x.float() - x.float().amax(-1, keepdim=True))\n"
              "        CACHE[key] = e / e.sum(-1, keepdim=True)\n    out.copy_(CACHE[key])\n")
    verdict = check_kernel(SOFTMAX, source, seed=6)
    assert verdict.trials[:-1] == ("ok",) * len(SOFTMAX.cases) and "is wrong" in verdict.trials[-1], verdict


def test_the_op_is_trapped_at_run_time(monkeypatch) -> None:
    """An op the static check misses still cannot do the work: the harness replaces it with one that raises."""
    for namespace in _kernel_harness._TRAPPED_NAMESPACES:  # monkeypatch restores torch after the test
        if hasattr(namespace, "softmax"):
            monkeypatch.setattr(namespace, "softmax", getattr(namespace, "softmax"))
    _kernel_harness.install_traps(["softmax"])
    for call in (lambda: torch.softmax(torch.ones(3), 0), lambda: torch.ones(3).softmax(0),
                 lambda: torch.nn.functional.softmax(torch.ones(3), 0)):
        with pytest.raises(RuntimeError, match="disabled in the checker"):
            call()


def test_extract_code_from_the_final_answer() -> None:
    answer = f"Here:\n```python\nimport math\n```\nand\n```python\n{GOOD_SOFTMAX}```\n"
    assert extract_code(answer, "softmax") == GOOD_SOFTMAX
    assert extract_code("no code here", "softmax") is None and extract_code(None, "softmax") is None
    assert extract_code(GOOD_SOFTMAX, "softmax") == GOOD_SOFTMAX


def test_rewards_score_answers_and_garbage() -> None:
    good = SimpleNamespace(final=f"```python\n{GOOD_SOFTMAX}```")
    garbage = [SimpleNamespace(final=None), SimpleNamespace(final="```python\ndef softmax(x, out:\n```")]
    completions, tasks = [good, *garbage], ["softmax"] * 3
    assert get("kernel_correct")(completions, kernel_task=tasks) == [1.0, 0.0, 0.0]
    assert get("kernel_runs")(completions, kernel_task=tasks) == [1.0, 0.0, 0.0]
    speedups = get("kernel_speedup")(completions, kernel_task=tasks)  # PyTorch kernels are timed on CPU too
    assert isinstance(speedups[0], float) and [s.value for s in speedups[1:]] == [None, None]
    assert "SyntaxError" in check_answer("softmax", garbage[1].final).reason


def test_a_batch_is_checked_once_per_distinct_answer_and_answered_in_order(monkeypatch) -> None:
    """The rewards check a batch's answers side by side (kernelgen.STARTED_AHEAD at once, the kernels themselves one
    at a time: kernel_check.ONE_AT_A_TIME), each distinct answer once, and return the verdicts in batch order."""
    from oss_grpo.rewards.kernelgen import verdicts

    kernel_check._check_answer.cache_clear()  # earlier tests checked the same answers
    checked = []
    monkeypatch.setattr(kernel_check, "check_kernel", lambda task, source, **kw: checked.append(source) or
                        check_kernel(task, source, **kw))
    good = SimpleNamespace(final=f"```python\n{GOOD_SOFTMAX}```")
    twin = SimpleNamespace(final=f"```python\n# the same kernel, another answer\n{GOOD_SOFTMAX}```")
    broken = SimpleNamespace(final="```python\ndef softmax(x, out):\n    out.copy_(x)\n```")
    result = verdicts([good, broken, good, twin, broken], ["softmax"] * 5, None)
    assert [v.correct for v in result] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert len(checked) == 3 and not kernel_check.ONE_AT_A_TIME.locked()


def test_sandbox_rejects_a_malformed_harness() -> None:
    with pytest.raises(SandboxError, match="harness"):
        sandbox.run("def f():\n    return 1\n", "f", harness="not a module")
    with pytest.raises(SandboxError, match="lock down"):
        sandbox.run("def f():\n    return 1\n", "f", harness="oss_grpo.rewards.no_such_module:run")


def test_the_trainer_never_imports_the_sandbox_harness() -> None:
    """Importing the harness warms up the GPU (every reference, on CUDA) for the sandbox child; the trainer looks
    rewards up by name, which imports every built-in reward module, and must not. The first 2-GPU run crashed there."""
    code = ("import sys; from oss_grpo.rewards import registered; names = registered(); "
            "print('kernel_correct' in names, 'oss_grpo.rewards._kernel_harness' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "False"]


def test_config_rejects_unknown_kernel_tasks() -> None:
    with pytest.raises(ConfigError, match="kernelgen_tasks"):
        load_config(REPO / "configs/kernelgen-tiny.yaml", ["kernelgen_tasks=[softmax, fft]"])


def test_kernelgen_tiny_trains_one_step(tmp_path: Path) -> None:
    """A random model writes no kernel: every sample is scored 0 by the checker and training goes on."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "oss_grpo", "train", "configs/kernelgen-tiny.yaml", "--set", "max_steps=1",
         "--set", "save_steps=1", "--set", f"output_dir={run}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1 and row["rewards/kernel_correct/mean"] == 0.0 and row["rewards/kernel_correct/errors"] == 0
