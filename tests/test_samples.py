"""Run-folder outputs beside metrics.jsonl: the samples table (what the policy wrote, with its rewards) and the two
curve PNGs."""

import json
from pathlib import Path
from types import SimpleNamespace

from transformers import TrainerControl, TrainerState, TrainingArguments

from oss_grpo.rl.metrics import plot_curves, truncate_metrics
from oss_grpo.rl.samples import SAMPLES_FILE, SampleTable


def length_reward(prompts: list, completions: list, completion_ids: list, **columns) -> list[float | None]:
    """1 per character of the final answer, None when there is none (TRL leaves None out of the sum)."""
    return [None if p.final is None else float(len(p.final)) for p in columns["parsed"]]


def log_step(table: SampleTable, step: int, tmp_path: Path) -> None:
    state = TrainerState()
    state.global_step = step
    table.on_log(TrainingArguments(output_dir=str(tmp_path), report_to=[]), state, TrainerControl(),
                 logs={"reward": 0.5})


def score_batch(table: SampleTable, finals: list[str | None]) -> list:
    prompts = [[{"role": "user", "content": f"Board:\n...{i}\nYour move?"}] for i in range(len(finals))]
    parsed = [SimpleNamespace(final=f) for f in finals]
    return table.watch(length_reward)(prompts, ["c"] * len(finals), [[1]] * len(finals), parsed=parsed)


def test_watched_rewards_keep_their_name_and_scores(tmp_path: Path) -> None:
    table = SampleTable(tmp_path, every=2, weights={"length_reward": 1.0})
    assert table.watch(length_reward).__name__ == "length_reward"
    assert score_batch(table, ["left", None]) == [4.0, None]


def test_sample_steps_write_jsonl_and_markdown(tmp_path: Path) -> None:
    table = SampleTable(tmp_path, every=2, weights={"length_reward": 2.0})
    score_batch(table, ["left", "up|down", None])
    log_step(table, 1, tmp_path)  # not a sample step
    assert not (tmp_path / SAMPLES_FILE).exists()
    log_step(table, 2, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [(r["step"], r["final"], r["reward"]) for r in rows] == [(2, "left", 8.0), (2, "up|down", 14.0),
                                                                     (2, None, None)]
    assert rows[0]["prompt_tail"].endswith("...0\nYour move?") and rows[0]["rewards"] == {"length_reward": 4.0}
    markdown = (tmp_path / "samples.md").read_text()
    assert "## step 2" in markdown and "| up\\|down | 14.000 |" in markdown and "| *none* | None |" in markdown


def test_resume_truncation_drops_later_samples_and_their_tables(tmp_path: Path) -> None:
    table = SampleTable(tmp_path, every=1, weights={"length_reward": 1.0})
    for step in (1, 2):
        score_batch(table, ["left"])
        log_step(table, step, tmp_path)
    truncate_metrics(tmp_path, 1, SAMPLES_FILE)
    score_batch(table, ["right"])
    log_step(table, 2, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [(r["step"], r["final"]) for r in rows] == [(1, "left"), (2, "right")]
    assert (tmp_path / "samples.md").read_text().count("## step 2") == 1


def test_curves_are_two_pngs(tmp_path: Path) -> None:
    rows = [{"step": s, "reward_mean": 0.1 * s, "reward_std": 0.05, "completion_length": 5 + s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_curves(tmp_path)
    assert [p.name for p in paths] == ["reward_curve.png", "completion_length.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in paths)
