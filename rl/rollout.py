"""The rollout: TRL's `rollout_func` hook, where Harmony prompts become sampled, parsed completions.

TRL hands us the prompts of one generation batch, each already repeated G times (its RepeatSampler), and expects
one completion per entry plus the sampling logprobs (used by its importance-sampling correction). Extra keys of the
returned dict reach the reward functions as columns: we pass the parsed Harmony messages as `parsed`. With
`max_turns > 1` each entry is a multi-turn episode (rl/episode.py): `env_mask` keeps the environment's tokens out of
the loss, `parsed` is the first turn's answer (the one about the prompt's board) and `episode_return` the env's total.
"""

from typing import Any

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.episode import play_episodes
from oss_grpo.rl.generator import Generator, Sampling
from oss_grpo.rl.harmony import harmony_tokenizer, render_prompt_ids, stop_token_ids
from oss_grpo.rl.hf_generator import TransformersGenerator
from oss_grpo.rl.tasks import Turns


def final_answer_ids(text: str) -> list[int]:
    """The completion ids of a bare final answer: `<|channel|>final<|message|>{text}<|return|>`."""
    return harmony_tokenizer().encode(f"<|channel|>final<|message|>{text}<|return|>", add_special_tokens=False)


class Rollout:
    """`rollout_func` for GRPOTrainer: render each prompt in Harmony, sample, parse."""

    def __init__(self, config: TrainConfig, actions: list[str], turns: Turns | None = None) -> None:
        self.config, self.turns = config, turns
        self.generator: Generator | None = None
        """A generator with its own copy of the weights (vLLM), set by rl/train.py; None: sample from the policy."""
        self.allowed = [final_answer_ids(a) for a in actions] if config.constrain_to_actions else None

    def __call__(self, prompts: list[list[dict[str, str]]], trainer: Any) -> dict[str, list]:
        c = self.config
        tokenizer = harmony_tokenizer()
        prompt_ids = [
            render_prompt_ids(messages, reasoning_effort=c.reasoning_effort,
                              developer_instructions=c.developer_instructions)
            for messages in prompts
        ]
        # A completion's seed is (run seed, step, its position in the step's whole batch): a resumed run samples what
        # the uninterrupted one did, and N processes what one does (TRL gives process p the slice [p * n, (p + 1) * n)
        # of the batch). Prompt i of a call is seeded seed + i (rl/generator.py) and turn t of an episode t batches
        # further on, so steps are spaced by what one step uses.
        n, accelerator = len(prompt_ids), trainer.accelerator
        # Without a generator of its own (vLLM, synced by TRL before each step) we sample from trainer.model itself;
        # compiled, in batches of this process's n rows, the same every step (rl/hf_generator.py).
        generator = self.generator or TransformersGenerator(trainer.model, stop_token_ids(), tokenizer.pad_token_id,
                                                            batch_size=n if c.compile_generation else 64,
                                                            compiled=c.compile_generation)
        batch = n * accelerator.num_processes
        seed = c.seed * 1_000_003 + trainer.state.global_step * batch * c.max_turns + accelerator.process_index * n
        sampling = Sampling(max_tokens=c.max_completion_tokens, temperature=c.temperature, top_p=c.top_p,
                            top_k=c.top_k, seed=seed)
        if c.max_turns > 1:
            return self._episodes(generator, prompts, prompt_ids, sampling, batch)
        completions = generator.generate(prompt_ids, sampling, self.allowed)
        return {
            "prompt_ids": [x.prompt_ids for x in completions],
            "completion_ids": [x.completion_ids for x in completions],
            "logprobs": [x.logprobs for x in completions],
            "parsed": [x.parsed for x in completions],
        }

    def _episodes(self, generator: Generator, prompts: list[list[dict[str, str]]], prompt_ids: list[list[int]],
                  sampling: Sampling, batch: int) -> dict[str, list]:
        assert self.turns is not None, "rl/train.py checks that max_turns > 1 has an environment that plays turns"
        envs = [self.turns.env_for(messages) for messages in prompts]
        episodes = play_episodes(generator, prompt_ids, envs, self.turns.act, self.turns.observe, sampling,
                                 self.config.max_turns, batch, self.allowed)
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.logprobs for e in episodes],
            "env_mask": [e.env_mask for e in episodes],
            "parsed": [e.turns[0].parsed for e in episodes],
            "episode_return": [e.episode_return for e in episodes],
        }
