"""`oss-grpo eval`: the trained policy (base model + LoRA adapter of a checkpoint) on its environment's held-out tasks.

Per environment, what a user wants to know after training:

- 2048 move mode: on `eval_tasks` held-out boards, the mean move reward (`game2048_move`) and how often the answer is
  a best move (reward 1: a legal move that merges the most; ties count); then `eval_games` full seeded games played
  move by move by the policy, at most `eval_max_moves` moves each (a move that names nothing or changes nothing is
  spent): mean max tile, mean score, win rate (a 2048 tile), invalid-answer rate.
- 2048 strategy mode: `eval_tasks` answers, each strategy playing the same `eval_games` held-out games in the
  sandbox: the valid-function rate (code that played every game), mean max tile and win rate over every answer's
  games (an answer whose code failed counts its games as lost with max tile 0).
- kernelgen: one answer per prompt, `eval_tasks` prompts cycling through `kernelgen_tasks`: pass@1 (every trial
  case correct), mean fraction of correct trials, and the mean speed-up over torch of the correct kernels, None
  where the checker cannot time kernels (always on a CPU, and until the sandbox times kernels on a GPU).

Held-out means seeds disjoint from training: training boards and games use seeds derived from `seed`, evaluation
from `seed + EVAL_SEED_OFFSET`. Sampling uses the config's temperature with seeds fixed per call, so the numbers
are reproducible for a seed. The results are printed as a table and written to `<run>/eval-<checkpoint>.json`.
"""

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from oss_grpo.envs.game2048 import Game2048Env, parse_move, starting_boards
from oss_grpo.rewards.game2048 import move_quality
from oss_grpo.rewards.game2048_strategy import extract_code, play_strategy
from oss_grpo.rewards.kernel_check import check_answer
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.generator import Completion, Sampling
from oss_grpo.rl.harmony import harmony_tokenizer, render_prompt_ids, stop_token_ids
from oss_grpo.rl.hf_generator import TransformersGenerator
from oss_grpo.rl.policy import load_policy_with_adapter
from oss_grpo.rl.rollout import final_answer_ids
from oss_grpo.rl.tasks import game2048_question, task_builder

EVAL_SEED_OFFSET = 1_000_003
"""Evaluation seeds are `seed + EVAL_SEED_OFFSET`: their boards and games never coincide with training's."""
Metrics = dict[str, float | int | None]


class PolicySampler:
    """Samples one answer per prompt from the policy, Harmony-rendered as in training, one fixed seed per call."""

    def __init__(self, config: TrainConfig, model: PreTrainedModel, actions: list[str]) -> None:
        self.config, self.calls = config, 0
        # compiled (`compile_generation`): every call padded to the most rows an evaluation asks for at once
        rows = max(config.eval_tasks, config.eval_games) if config.compile_generation else 64
        self.generator = TransformersGenerator(model, stop_token_ids(), harmony_tokenizer().pad_token_id,
                                               batch_size=rows, compiled=config.compile_generation)
        self.allowed = [final_answer_ids(a) for a in actions] if config.constrain_to_actions else None

    def __call__(self, prompts: list[list[dict[str, str]]]) -> list[Completion]:
        c = self.config
        ids = [render_prompt_ids(p, reasoning_effort=c.reasoning_effort,
                                 developer_instructions=c.developer_instructions) for p in prompts]
        self.calls += 1
        sampling = Sampling(max_tokens=c.max_completion_tokens, temperature=c.temperature, top_p=c.top_p,
                            top_k=c.top_k, seed=(c.seed + EVAL_SEED_OFFSET) * 1_000_003 + self.calls)
        return self.generator.generate(ids, sampling, self.allowed)


def eval_game2048(config: TrainConfig, sample: PolicySampler) -> Metrics:
    seed = config.seed + EVAL_SEED_OFFSET
    boards = starting_boards(config.eval_tasks, seed=seed)
    answers = sample([[{"role": "user", "content": game2048_question(b)}] for b in boards])
    rewards = move_quality([a.parsed for a in answers], [b.tolist() for b in boards])
    envs = [Game2048Env() for _ in range(config.eval_games)]
    # starting_boards seeds its i-th game seed * 100_003 + i: the full games take the indices after the boards'.
    states = [env.reset(seed=seed * 100_003 + config.eval_tasks + g)[0] for g, env in enumerate(envs)]
    live, invalid, moves = list(range(len(envs))), 0, 0
    for _ in range(config.eval_max_moves):
        if not live:
            break
        answers = sample([[{"role": "user", "content": game2048_question(states[g])}] for g in live])
        for g, answer in zip(list(live), answers):
            action = parse_move(answer.parsed.final)
            moves += 1
            if action is None:  # no move named: the turn is spent, the board unchanged
                invalid += 1
                continue
            states[g], _, terminated, _, info = envs[g].step(action)
            invalid += not info["legal"]
            if terminated:
                live.remove(g)
    tiles = [int(env.board.max()) for env in envs]
    return {"boards": len(boards), "mean_move_reward": float(np.mean(rewards)),
            "best_move_agreement": float(np.mean([r == 1.0 for r in rewards])), "games": len(envs),
            "mean_max_tile": float(np.mean(tiles)), "mean_score": float(np.mean([env.score for env in envs])),
            "win_rate": float(np.mean([t >= 2048 for t in tiles])), "invalid_answer_rate": invalid / max(moves, 1)}


def strategy_eval_seeds(config: TrainConfig) -> tuple[int, ...]:
    """Game seeds of the strategy evaluation: training's are `seed * 1_000_003 + k` (rl/tasks.py), so these, those of
    seed + EVAL_SEED_OFFSET, never meet this config's training games."""
    return tuple((config.seed + EVAL_SEED_OFFSET) * 1_000_003 + g for g in range(config.eval_games))


def eval_game2048_strategy(config: TrainConfig, sample: PolicySampler) -> Metrics:
    dataset, _ = task_builder(config.env)(dataclasses.replace(config, num_tasks=1))
    answers = sample(list(dataset["prompt"]) * config.eval_tasks)
    seeds = strategy_eval_seeds(config)
    runs = [play_strategy(extract_code(a.parsed.final), seeds, config.strategy_max_moves, config.strategy_timeout_s)
            for a in answers]
    tiles = [g.max_tile for run in runs for g in run.games] + [0] * sum(len(seeds) for run in runs if run.failure)
    return {"answers": len(runs), "games_per_answer": len(seeds),
            "valid_function_rate": float(np.mean([run.failure is None for run in runs])),
            "mean_max_tile": float(np.mean(tiles)), "win_rate": float(np.mean([t >= 2048 for t in tiles]))}


def eval_kernelgen(config: TrainConfig, sample: PolicySampler) -> Metrics:
    dataset, _ = task_builder(config.env)(dataclasses.replace(config, num_tasks=config.eval_tasks))
    answers = sample(list(dataset["prompt"]))
    verdicts = [check_answer(task, a.parsed.final, device)  # on the config's kernelgen_device, as in training
                for task, device, a in zip(dataset["kernel_task"], dataset["kernel_device"], answers, strict=True)]
    speedups = [v.speedup for v in verdicts if v.speedup is not None]
    return {"answers": len(verdicts), "pass_at_1": float(np.mean([v.correct == 1.0 for v in verdicts])),
            "mean_correct_trials": float(np.mean([v.correct for v in verdicts])),
            "runs_rate": float(np.mean([v.runs for v in verdicts])),
            "mean_speedup": float(np.mean(speedups)) if speedups else None}


EVALUATIONS = {
    "oss_grpo/Game2048-v0": eval_game2048,
    "oss_grpo/Game2048Strategy-v0": eval_game2048_strategy,
    "oss_grpo/KernelGen-v0": eval_kernelgen,
}
"""Environment id -> its evaluation."""


def evaluation_for(env_id: str) -> Callable[[TrainConfig, PolicySampler], Metrics]:
    if env_id not in EVALUATIONS:
        raise ConfigError(f"env={env_id!r}: no evaluation for it; `oss-grpo eval` knows {', '.join(EVALUATIONS)}")
    return EVALUATIONS[env_id]


def evaluate_policy(config: TrainConfig, model: PreTrainedModel) -> Metrics:
    """The environment's evaluation of `model` (already on its device, adapters attached)."""
    run = evaluation_for(config.env)
    _, actions = task_builder(config.env)(dataclasses.replace(config, num_tasks=1))
    with torch.no_grad():
        return run(config, PolicySampler(config, model, actions))


def metrics_table(metrics: Metrics) -> str:
    """A two-column text table: metric, value (None printed as `None`, e.g. speed-up on a CPU)."""
    width = max(map(len, metrics)) + 2
    rows = [f"{'metric':<{width}}value"] + [
        f"{k:<{width}}{v:.4f}" if isinstance(v, float) else f"{k:<{width}}{v}" for k, v in metrics.items()]
    return "\n".join(rows)


def evaluate(config: TrainConfig, checkpoint: Path) -> tuple[Metrics, Path]:
    """Evaluate a checkpoint; write `<run>/eval-<checkpoint>.json` beside it and return the metrics and that path."""
    checkpoint = Path(checkpoint)
    evaluation_for(config.env)  # an env without evaluation fails here, before any weight is loaded
    device = "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu"
    metrics = evaluate_policy(config, load_policy_with_adapter(config, checkpoint).to(device))
    out = checkpoint.resolve().parent / f"eval-{checkpoint.resolve().name}.json"
    out.write_text(json.dumps({"checkpoint": str(checkpoint), "env": config.env, "seed": config.seed,
                               "metrics": metrics}, indent=2) + "\n")
    return metrics, out
