"""Run metrics: one JSON line per optimizer step in `metrics.jsonl`, and the reward-curve PNG at the end."""

import json
import time
from pathlib import Path

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

METRICS_FILE = "metrics.jsonl"
# TRL's log keys -> ours (what a user plots first).
_KEYS = {"reward": "reward_mean", "reward_std": "reward_std", "loss": "loss", "kl": "kl", "grad_norm": "grad_norm",
         "completions/mean_length": "completion_length", "learning_rate": "learning_rate",
         "sync/seconds": "sync_seconds", "sampling/sampling_logp_difference/max": "sampler_logp_diff_max"}


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop lines after `last_step`: a resumed run recomputes them, so the file never has gaps or duplicates."""
    kept = [m for m in read_metrics(run_dir) if m["step"] <= last_step]
    (Path(run_dir) / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in kept))


class MetricsCallback(TrainerCallback):
    """Appends TRL's per-step logs (renamed) plus wall-clock seconds and tokens/s to `metrics.jsonl`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.last_time, self.last_tokens = time.monotonic(), None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        if not logs or "reward" not in logs:  # the end-of-training summary is not a step
            return
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        record = {"step": state.global_step, **{ours: logs[theirs] for theirs, ours in _KEYS.items() if theirs in logs}}
        record.update({k: v for k, v in logs.items() if k.startswith("rewards/")})
        record["seconds"] = now - self.last_time
        if self.last_tokens is not None:
            record["tokens_per_s"] = (tokens - self.last_tokens) / record["seconds"]
        self.last_time, self.last_tokens = now, tokens
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def plot_reward_curve(run_dir: Path) -> Path:
    """reward_curve.png: mean reward per step (with its group std band) and the mean completion length."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the CLI and CI have no display
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r.get("reward_std", 0.0) for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(steps, mean, label="mean reward")
    top.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    top.set_ylabel("reward")
    top.legend()
    bottom.plot(steps, [r.get("completion_length", 0.0) for r in rows], color="tab:orange")
    bottom.set_ylabel("completion tokens")
    bottom.set_xlabel("step")
    fig.tight_layout()
    path = Path(run_dir) / "reward_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path
