"""Run metrics: one JSON line per optimizer step in `metrics.jsonl`, and the reward and completion-length PNGs at the
end. TensorBoard logs come from TRL (`report_to`, always including tensorboard)."""

import json
import time
from pathlib import Path

import torch
from transformers import ProgressCallback, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

METRICS_FILE = "metrics.jsonl"
# TRL's log keys -> ours (what a user plots first).
_KEYS = {"reward": "reward_mean", "reward_std": "reward_std", "loss": "loss", "kl": "kl", "grad_norm": "grad_norm",
         "completions/mean_length": "completion_length", "learning_rate": "learning_rate",
         "sync/seconds": "sync_seconds", "sync/megabytes": "sync_megabytes",
         "sync/server_seconds": "sync_server_seconds",
         "sampling/sampling_logp_difference/max": "sampler_logp_diff_max"}


def read_metrics(run_dir: Path, name: str = METRICS_FILE) -> list[dict]:
    """The rows of a run's JSON-lines file (`metrics.jsonl`, or `samples.jsonl` whose rows also carry a step)."""
    path = Path(run_dir) / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def truncate_metrics(run_dir: Path, last_step: int, name: str = METRICS_FILE) -> None:
    """Drop lines after `last_step`: a resumed run recomputes them, so the file never has gaps or duplicates."""
    kept = [m for m in read_metrics(run_dir, name) if m["step"] <= last_step]
    (Path(run_dir) / name).write_text("".join(json.dumps(m) + "\n" for m in kept))


class MetricsCallback(TrainerCallback):
    """Appends TRL's per-step logs (renamed) plus wall-clock seconds and tokens/s to `metrics.jsonl`, and on a GPU
    the step's peak of allocated memory (`gpu_peak_gib`, this process's: rollouts, log-probs and update together),
    the number that says whether a longer completion or a bigger micro-batch would still fit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.last_time, self.last_tokens = time.monotonic(), None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if not logs or "reward" not in logs or not state.is_world_process_zero:  # not a step, or not the writer
            return
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        record = {"step": state.global_step, **{ours: logs[theirs] for theirs, ours in _KEYS.items() if theirs in logs}}
        record.update({k: v for k, v in logs.items() if k.startswith("rewards/")})
        record["seconds"] = now - self.last_time
        if self.last_tokens is not None:
            record["tokens_per_s"] = (tokens - self.last_tokens) / record["seconds"]
        self.last_time, self.last_tokens = now, tokens
        if torch.cuda.is_initialized():
            record["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()  # the next line reports the next step alone
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class RewardBar(ProgressCallback):
    """transformers' progress bar with the step's mean reward and loss beside it, instead of its default of printing
    every step's whole log dict (30 keys) under the bar; metrics.jsonl and TensorBoard keep all of them."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "reward" in logs:
            self.training_bar.set_postfix(reward=f"{logs['reward']:.3f}", loss=f"{logs.get('loss', 0.0):.4g}")


def plot_curves(run_dir: Path) -> list[Path]:
    """reward_curve.png (mean reward per step with its group std band) and completion_length.png (mean completion
    tokens per step: a collapse to empty answers or a climb to max_completion_tokens shows here first)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the CLI and CI have no display
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r.get("reward_std", 0.0) for r in rows]
    paths = []
    for name, ylabel in (("reward_curve", "mean reward"), ("completion_length", "completion tokens")):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if name == "reward_curve":
            ax.plot(steps, mean)
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        else:
            ax.plot(steps, [r.get("completion_length", 0.0) for r in rows], color="tab:orange")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        paths.append(Path(run_dir) / f"{name}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths
