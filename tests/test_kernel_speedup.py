"""The speed-up reward on CPU: real timings order kernels, Triton under the interpreter is not timed, and code that
touches the clock, torch or the harness fails. Also the sandbox's GPU profile, as far as a CPU can show it, and the
kernel-generation Gymnasium environment.

Each sandbox call costs ~2 s (torch start-up in the jailed child), so one call per case; speeds are compared as
orderings, never as absolute times.
"""

from pathlib import Path
from types import ModuleType, SimpleNamespace

import gymnasium
import pytest

import oss_grpo.envs  # noqa: F401  (registers the ids)
from oss_grpo.envs.kernelgen import KERNEL_TASKS
from oss_grpo.rewards import get, kernel_check, sandbox
from oss_grpo.rewards._kernel_timer import Watch
from oss_grpo.rewards.kernel_check import INTERPRETED, check_kernel
from oss_grpo.rewards.protocol import Score
from oss_grpo.rl.errors import SandboxError

SOLUTIONS = Path(__file__).resolve().parent / "kernelgen_solutions"
SOFTMAX = KERNEL_TASKS["softmax"]
VECTORISED = (SOLUTIONS / "softmax_torch.py").read_text()
TRITON = (SOLUTIONS / "softmax_triton.py").read_text()
ROW_LOOP = """import torch


def softmax(x, out):
    for i in range(x.shape[0]):
        row = x[i].float()
        e = torch.exp(row - row.max())
        out[i] = e / e.sum()
"""
BODY = ("    h = x.float()\n    e = torch.exp(h - h.amax(-1, keepdim=True))\n"
        "    out.copy_(e / e.sum(-1, keepdim=True))\n")


def answer(code: str) -> SimpleNamespace:
    return SimpleNamespace(final=f"```python\n{code}```")


def test_speedup_reward_orders_a_row_loop_below_a_vectorised_kernel() -> None:
    """Both are correct; the Python loop over rows is slower, so its reward is lower. Triton kernels are not timed
    on a CPU (the interpreter's speed means nothing) and garbage is not timed: both None with the reason."""
    completions = [answer(VECTORISED), answer(ROW_LOOP), answer(TRITON), SimpleNamespace(final="no code")]
    tasks = ["softmax"] * len(completions)
    assert get("kernel_correct")(completions, kernel_task=tasks) == [1.0, 1.0, 1.0, 0.0]
    fast, slow, triton, garbage = get("kernel_speedup")(completions, kernel_task=tasks)
    assert isinstance(fast, float) and isinstance(slow, float) and -4.0 <= slow < fast <= 4.0
    assert triton == Score(None, INTERPRETED)
    assert isinstance(garbage, Score) and garbage.value is None and "no code" in garbage.reason


def test_a_kernel_that_skips_work_on_the_timed_shape_is_not_correct() -> None:
    """Right on every checked shape, poison on the larger timed one: the timer compares each timed call's output
    with the reference's on the same inputs, so the shortcut costs the whole sample."""
    source = f"import torch\n\n\ndef softmax(x, out):\n    if x.shape[0] == 64:\n        return None\n{BODY}"
    verdict = check_kernel(SOFTMAX, source, seed=11)
    assert verdict.trials == ("ok",) * (len(SOFTMAX.cases) + 1)  # the trials alone would pass it
    assert verdict.correct == 0.0 and verdict.speedup is None and "differs from the reference" in verdict.reason


# Each passes the trials' maths but replaces something the timing or the reference depends on. The static rules
# refuse all of them (attribute assignment, `sys`, `cuda`); they are switched off to show the run-time layer.
TAMPERING = {
    "freezes time.perf_counter": ("    torch.sys.modules['time'].perf_counter = lambda: 0.0\n", "time.perf_counter"),
    "stubs torch.cuda.synchronize": ("    torch.cuda.synchronize = lambda *a: None\n", "torch.cuda.synchronize"),
    "patches the CUDA event's clock": ("    torch.cuda.Event.elapsed_time = lambda *a: 1e-9\n",
                                       "torch.cuda.Event.elapsed_time"),
    "slows the reference's torch.exp": ("    real = torch.exp\n    torch.exp = lambda t: real(t.clone())\n",
                                        "torch.exp"),
    "replaces the timer function": (
        "    torch.sys.modules['oss_grpo.rewards._kernel_timer'].elapsed_seconds = lambda *a: 1e-9\n",
        "_kernel_timer.elapsed_seconds"),
}


@pytest.mark.parametrize("patch, name", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_with_the_clock_torch_or_the_harness_fails(monkeypatch, patch: str, name: str) -> None:
    monkeypatch.setattr(kernel_check, "kernel_findings", lambda source, task: [])
    verdict = check_kernel(SOFTMAX, f"import torch\n\n\ndef softmax(x, out):\n{BODY}{patch}", seed=12)
    assert not verdict.runs and verdict.correct == 0.0 and verdict.speedup is None, verdict
    assert verdict.reason.startswith("tampered") and name in verdict.reason, verdict


def test_tampering_at_import_time_is_caught_before_the_first_trial(monkeypatch) -> None:
    monkeypatch.setattr(kernel_check, "kernel_findings", lambda source, task: [])
    source = f"import torch\n\ntorch.cuda.Event = None\n\n\ndef softmax(x, out):\n{BODY}"
    verdict = check_kernel(SOFTMAX, source, seed=13)
    assert verdict.correct == 0.0 and "torch.cuda.Event" in verdict.reason, verdict


def test_watch_names_replaced_removed_and_added_attributes_but_not_submodules() -> None:
    namespace = ModuleType("space")
    namespace.clock, namespace.kept, namespace.gone = (lambda: 1.0), 2, 3
    watch = Watch({"space": namespace})
    namespace.clock = lambda: 0.0
    del namespace.gone
    namespace.added, namespace.submodule = 4, ModuleType("space.submodule")
    assert watch.changes() == ["space.added", "space.clock", "space.gone"]
    watch.expected.update({(id(namespace), "clock"): namespace.clock, (id(namespace), "added"): 4,
                           (id(namespace), "gone"): namespace.submodule})  # what the harness put there itself
    namespace.gone = namespace.submodule
    assert watch.changes() == []


def test_gpu_profile_binds_device_nodes_into_the_jail() -> None:
    """The GPU profile's mechanism, shown with /dev/null standing in for /dev/nvidia0 (no GPU here)."""
    if not sandbox.isolation().namespaces:
        pytest.skip("device nodes are bound only where the sandbox has a mount namespace")
    source = "import os\n\n\ndef f():\n    return os.path.exists('/dev/null')\n"
    bound = sandbox.Profile(devices=("/dev/null",))
    assert sandbox.run(source, "f", allowed_imports={"os"}, profile=bound).value is True
    assert sandbox.run(source, "f", allowed_imports={"os"}).value is False  # the default jail has no /dev


def test_gpu_profile_copies_its_files_into_the_jail(tmp_path: Path) -> None:
    """The mechanism that gives Triton's compiler libdevice after lock-down, shown with a file of our own."""
    if not sandbox.isolation().namespaces:
        pytest.skip("files are copied only where the sandbox has a mount namespace")
    host_file = tmp_path / "lib" / "bitcode.bc"
    host_file.parent.mkdir()
    host_file.write_bytes(b"\x00bitcode\xff" * 1000)
    source = (f"import os\n\n\ndef f():\n    fd = os.open({str(host_file)!r}, os.O_RDONLY)\n"
              "    return os.read(fd, 1 << 20).hex()\n")
    copied = sandbox.run(source, "f", allowed_imports={"os"}, profile=sandbox.Profile(files=(str(host_file),)))
    assert copied.ok and bytes.fromhex(copied.value) == host_file.read_bytes(), copied
    assert sandbox.run(source, "f", allowed_imports={"os"}).failure == "raised"  # not there in the default jail
    assert all(Path(f).is_file() for f in sandbox.GPU.files)
    with pytest.raises(SandboxError, match="regular file"):
        sandbox.run(source, "f", profile=sandbox.Profile(files=(str(tmp_path),)))


def test_gpu_profile_raises_the_address_space_and_nothing_else() -> None:
    """CUDA reserves address space it never writes; the GPU profile grants that, while memory the code can write
    stays capped at `memory_mb` (RLIMIT_DATA), so a kernel cannot take the host's RAM."""
    allocate = "def f():\n    return len(bytearray(256 << 20))\n"
    reserve = "import mmap\n\n\ndef f():\n    return len(mmap.mmap(-1, 256 << 20, flags=mmap.MAP_PRIVATE, prot=0))\n"
    roomy = sandbox.Profile(extra_address_space_mb=1024)
    for profile in (sandbox.CPU, roomy):  # MemoryError under both caps
        assert sandbox.run(allocate, "f", memory_mb=64, profile=profile).failure == "raised"
    assert sandbox.run(reserve, "f", memory_mb=64, allowed_imports={"mmap"}).failure == "raised"
    assert sandbox.run(reserve, "f", memory_mb=64, allowed_imports={"mmap"}, profile=roomy).value == 256 << 20
    assert sandbox.run(allocate.replace("256", "32"), "f", memory_mb=64, profile=roomy).value == 32 << 20
    assert all(Path(d).is_char_device() for d in sandbox.GPU.devices) and sandbox.GPU.extra_address_space_mb > 0
    with pytest.raises(SandboxError, match="character device"):
        sandbox.run(allocate, "f", profile=sandbox.Profile(devices=("/etc/passwd",)))


def test_kernelgen_env_scores_a_correct_kernel_through_the_checker() -> None:
    env = gymnasium.make("oss_grpo/KernelGen-v0", render_mode="ansi")
    prompt_text, info = env.reset(seed=0, options={"task": "softmax"})
    assert info == {"task": "softmax"} and "def softmax(x: torch.Tensor, out: torch.Tensor)" in prompt_text
    assert env.observation_space.contains(prompt_text)
    observation, reward, terminated, truncated, info = env.step(answer(VECTORISED).final)  # cached by the test above
    assert terminated and not truncated and info["correct"] == 1.0 and info["speedup"] is not None
    assert reward >= 1.0 and env.observation_space.contains(observation) and env.render() == observation
    env.reset(seed=0, options={"task": "softmax"})
    _, reward, _, _, info = env.step("def softmax(x, out):\n    return None\n")
    assert reward == 0.0 and "not written" in info["reason"]


def test_kernelgen_env_draws_tasks_by_seed_and_takes_any_checker() -> None:
    seen = {gymnasium.make("oss_grpo/KernelGen-v0").reset(seed=s)[1]["task"] for s in range(30)}
    assert seen == set(KERNEL_TASKS)
    fixed = SimpleNamespace(runs=True, correct=1.0, reason="", trials=("ok",), seconds=0.0, speedup=4.0,
                            speedup_score=2.0, speedup_note="")
    env = gymnasium.make("oss_grpo/KernelGen-v0", tasks=["rmsnorm"], speedup_weight=0.5,
                         check=lambda task, answer: fixed)
    assert env.reset(seed=1)[1]["task"] == "rmsnorm"
    assert env.step("anything")[1] == 2.0  # 1 for correct + 0.5 * log2(4)
    with pytest.raises(ValueError, match="fft"):
        gymnasium.make("oss_grpo/KernelGen-v0", tasks=["fft"])
