"""What the policy actually wrote: every `samples_every` steps, a table of the step's completions in the run folder.

Curves say whether the reward moves; the samples say why (a policy that found a reward hack, answers cut off at
max_completion_tokens, Harmony that no longer parses). `samples.jsonl` has one line per completion (step, the tail
of its prompt, the parsed final answer, the weighted reward and each reward's score); `samples.md` the same as a
markdown table per step, answers shortened. The rows are taken where the scores are made: each reward TRL calls is
wrapped by `SampleTable.watch`, which keeps the batch's parsed answers and that reward's scores.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from oss_grpo.rl.metrics import read_metrics

SAMPLES_FILE = "samples.jsonl"
PROMPT_TAIL = 60
"""Characters of the prompt's last message shown: enough to tell tasks apart (the end of a 2048 board)."""
ANSWER_IN_TABLE = 120


class SampleTable(TrainerCallback):
    """Collects the latest batch's answers and scores from the rewards it watches; writes them on sample steps."""

    def __init__(self, run_dir: Path, every: int, weights: dict[str, float]) -> None:
        self.run_dir, self.every, self.weights = Path(run_dir), every, weights
        self.answers: list[tuple[str, str | None]] = []
        self.scores: dict[str, list[float | None]] = {}

    def watch(self, reward: Callable[..., list[float | None]]) -> Callable[..., list[float | None]]:
        """`reward` with the same call and `__name__`, recording the batch it scores."""
        name = reward.__name__

        def recorded(prompts: list, completions: list, completion_ids: list, **columns: Any) -> list[float | None]:
            scores = reward(prompts, completions, completion_ids, **columns)
            self.answers = [(_text(p)[-PROMPT_TAIL:], c.final) for p, c in zip(prompts, columns["parsed"])]
            self.scores[name] = list(scores)
            return scores

        recorded.__name__ = name
        return recorded

    def rows(self, step: int) -> list[dict]:
        """One dict per completion of the recorded batch; `reward` is the weighted sum over the scores that are not
        None, as TRL sums them (None when none is)."""
        rows = []
        for i, (prompt, final) in enumerate(self.answers):
            scores = {name: values[i] for name, values in self.scores.items()}
            given = [self.weights[n] * s for n, s in scores.items() if s is not None]
            total = sum(given) if given else None
            rows.append({"step": step, "prompt_tail": prompt, "final": final, "reward": total, "rewards": scores})
        return rows

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs) -> None:
        step = state.global_step
        if not self.every or step % self.every or not self.answers or not logs or "reward" not in logs:
            return
        # Each process scored its slice of the batch (accelerate launch): the main one writes them all, in order.
        rows = gather_object(self.rows(step))
        self.answers, self.scores = [], {}
        if not state.is_world_process_zero:
            return
        with (self.run_dir / SAMPLES_FILE).open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        # Rewritten whole from the JSON lines, so a resumed run (which truncates those) leaves no stale tables.
        rows = read_metrics(self.run_dir, SAMPLES_FILE)
        steps = sorted({r["step"] for r in rows})
        (self.run_dir / "samples.md").write_text("# Samples\n" + "".join(
            markdown_table([r for r in rows if r["step"] == s]) for s in steps))


def markdown_table(rows: list[dict]) -> str:
    """A step's rows as markdown: prompt tail, parsed final answer (shortened), reward."""
    def cell(text: str | None) -> str:
        return "*none*" if text is None else text.replace("|", "\\|").replace("\n", " ").strip()[:ANSWER_IN_TABLE]

    lines = [f"\n## step {rows[0]['step']}\n", "| prompt (tail) | final answer | reward |", "|---|---|---|"]
    lines += [f"| {cell(r['prompt_tail'])} | {cell(r['final'])} | "
              f"{'None' if r['reward'] is None else format(r['reward'], '.3f')} |" for r in rows]
    return "\n".join(lines) + "\n"


def _text(prompt: Any) -> str:
    """The last message's text of a conversational prompt (or the prompt itself when it is a string)."""
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)
