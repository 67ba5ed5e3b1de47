"""Data-parallel training: 2 processes (`accelerate launch`, gloo on CPU) take the same GRPO step as 1 process.

The config fixes the step's whole batch (prompts_per_step * group_size); with 2 processes each samples and trains on
half. Run A trains 2 steps in 1 process. Run B starts from A's checkpoint-1 and takes step 2 in 2 processes through
`--resume` (a run moved to more GPUs), so both steps start from the very same adapter and optimizer state. Rollouts
are seeded by position in the whole batch (rl/rollout.py), so both sample the same completions, and DDP's averaged
gradient is the single process's up to float32 rounding (other batch shapes and padding reorder the sums). Compared:
the samples (exactly), the step's gradient (from AdamW's first moment: m2 = 0.9 m1 + 0.1 g2), the adapter update
(after - before), the logged grad norm and loss; and what the 2 processes wrote into the run folder.

On a machine with 2 GPUs, `OSS_GRPO_DDP_DEVICE=cuda pytest -s tests/test_ddp.py` runs the same comparison with one
process per GPU (NCCL) and prints the measured gaps; each run folder keeps its launch's output in `launch.log`.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oss_grpo.rl.metrics import METRICS_FILE, read_metrics
from oss_grpo.rl.samples import SAMPLES_FILE

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["num_tasks=8", "prompts_per_step=2", "group_size=4", "max_steps=2", "save_steps=1", "samples_every=1",
             "generator=transformers"]
DEVICE = os.environ.get("OSS_GRPO_DDP_DEVICE", "cpu")
TOLERANCE = 1e-4
"""Relative norm of the difference (float32). Measured on 2026-11-23: 2.9e-6 for the gradient, 1.3e-5 for the update
(docs/MULTIGPU.md)."""


def launch(run: Path, processes: int, *extra: str) -> None:
    train = ["-m", "oss_grpo", "train", "configs/2048-tiny.yaml", *(a for o in OVERRIDES for a in ("--set", o)),
             "--set", f"output_dir={run}", "--set", f"device={DEVICE}", *extra]
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
                "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", "--main_process_port=0"]
    # device cpu: each process trains on the CPU and accelerate picks gloo (cuda: a GPU each, NCCL); port 0: any free
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": "1"}
    if processes == 1 and DEVICE == "cuda":  # one process is given one GPU (train refuses one that sees several)
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    result = subprocess.run([sys.executable, *(launcher if processes > 1 else []), *train], cwd=REPO, timeout=600,
                            capture_output=True, text=True, env=env)
    (run / "launch.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a, b = tmp_path_factory.mktemp("one-process"), tmp_path_factory.mktemp("two-processes")
    launch(a, 1)
    shutil.copytree(a / "checkpoint-1", b / "checkpoint-1")
    for name in (METRICS_FILE, SAMPLES_FILE):  # the run folder as it stood at checkpoint-1
        (b / name).write_text("".join(line + "\n" for line in (a / name).read_text().splitlines()
                                      if line.startswith('{"step": 1,')))
    launch(b, 2, "--resume", str(b))
    return a, b


def relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    a, b = torch.cat([t.flatten().double() for t in a]), torch.cat([t.flatten().double() for t in b])
    return ((a - b).norm() / b.norm()).item()


def gradient(checkpoint: Path, previous: Path) -> list[torch.Tensor]:
    """The step's (clipped) gradient from AdamW's first moments: m_t = 0.9 m_(t-1) + 0.1 g_t."""
    m, m_prev = (torch.load(c / "optimizer.pt", weights_only=True)["state"] for c in (checkpoint, previous))
    return [(m[i]["exp_avg"] - 0.9 * m_prev[i]["exp_avg"]) / 0.1 for i in sorted(m)]


def test_two_processes_take_the_single_process_step(runs: tuple[Path, Path]) -> None:
    a, b = runs
    samples = {run: [r for r in read_metrics(run, SAMPLES_FILE) if r["step"] == 2] for run in runs}
    assert len(samples[a]) == 8 and samples[b] == samples[a]  # the same completions and rewards, in batch order

    gradient_gap = relative_gap(gradient(b / "checkpoint-2", a / "checkpoint-1"),
                                gradient(a / "checkpoint-2", a / "checkpoint-1"))
    before = load_file(a / "checkpoint-1" / "adapter_model.safetensors")
    after = {run: load_file(run / "final" / "adapter_model.safetensors") for run in runs}
    assert after[a].keys() == after[b].keys() == before.keys()
    updates = {run: [after[run][k] - before[k] for k in sorted(before)] for run in runs}
    update_gap = relative_gap(updates[b], updates[a])
    step2 = {run: read_metrics(run)[1] for run in runs}
    print(f"{DEVICE}, 1 vs 2 processes, step 2: gradient gap {gradient_gap:.2e}, update gap {update_gap:.2e} (update "
          f"norm {torch.cat([u.flatten() for u in updates[a]]).norm():.3g}), grad norm {step2[a]['grad_norm']} vs "
          f"{step2[b]['grad_norm']}, loss {step2[a]['loss']} vs {step2[b]['loss']}")
    assert gradient_gap < TOLERANCE and update_gap < TOLERANCE
    assert sum(u.norm() for u in updates[a]) > 0

    assert step2[b]["reward_mean"] == step2[a]["reward_mean"]
    assert step2[b]["grad_norm"] == pytest.approx(step2[a]["grad_norm"], rel=TOLERANCE)
    assert step2[b]["loss"] == pytest.approx(step2[a]["loss"], rel=TOLERANCE)


def test_only_the_main_process_writes_the_run_folder(runs: tuple[Path, Path]) -> None:
    _, b = runs
    assert [m["step"] for m in read_metrics(b)] == [1, 2]  # one line per step, not one per process
    assert [r["step"] for r in read_metrics(b, SAMPLES_FILE)] == [1] * 8 + [2] * 8  # both processes' rows, once
    assert {"COMPLETE", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (b / "checkpoint-2").iterdir()}
    assert (b / "final" / "tokenizer.json").is_file() and (b / "reward_curve.png").is_file()
