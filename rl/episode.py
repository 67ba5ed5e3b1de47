"""Multi-turn rollouts: the model acts, the environment answers with a Harmony user message, the model acts again.

An episode is trained as one completion whose ids are the turns laid end to end:

    sample(turn 1) + observation(1) + sample(turn 2) + observation(2) + ... + sample(last turn)

where observation(t) is `<|start|>user<|message|>{board}<|end|><|start|>assistant` rendered by openai-harmony. Each
turn is sampled with exactly the ids before it as its prompt, so the sequence the trainer scores is the one the
sampler saw (a finished turn keeps the `<|return|>` it was sampled with rather than the `<|end|>` a re-rendered
history would show). `env_mask` is 1 on sampled tokens and 0 on observation tokens: TRL 1.16's `rollout_func` may
return it under that key, and multiplies it into the loss mask and the importance-sampling mask.

An episode ends when the answer names no legal action, the environment terminates, or after `max_turns` turns.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import gymnasium as gym
from openai_harmony import Conversation, Message, Role

from oss_grpo.rl.generator import Completion, Generator, Sampling
from oss_grpo.rl.harmony import ParsedCompletion, harmony_encoding


@dataclass
class Episode:
    """One multi-turn rollout, flattened into the single completion GRPO trains on."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    """Sampling logprobs of the sampled tokens; 0.0 on observation tokens (masked out by `env_mask`)."""
    env_mask: list[int]
    """1 where the model sampled the token, 0 where the environment wrote it."""
    turns: list[Completion]
    episode_return: float
    """Sum of the environment's rewards over the episode."""


def observation_ids(text: str) -> list[int]:
    """The environment's turn as the model reads it: a user message, then the assistant's turn opens."""
    conversation = Conversation.from_messages([Message.from_role_and_content(Role.USER, text)])
    return harmony_encoding().render_conversation_for_completion(conversation, Role.ASSISTANT)


def play_episodes(
    generator: Generator,
    prompts: list[list[int]],
    envs: list[gym.Env],
    act: Callable[[ParsedCompletion], int | None],
    observe: Callable[[gym.Env], str],
    sampling: Sampling,
    max_turns: int,
    turn_stride: int,
    allowed: list[list[int]] | None = None,
) -> list[Episode]:
    """Play one episode per (prompt, env), all envs already reset; each turn samples every live episode at once.

    `act` maps a parsed answer to an action (None: no action, the episode ends); `observe` renders the env's state.
    Episode i's turn t is seeded `sampling.seed + t * turn_stride + i` whichever episodes are still live: with
    `turn_stride` the number of episodes of the whole step (over all processes), no two requests share a seed.
    """
    episodes = [Episode(p, [], [], [], [], 0.0) for p in prompts]
    live = list(range(len(prompts)))
    for turn in range(max_turns):
        seeds = None if sampling.seed is None else tuple(sampling.seed + turn * turn_stride + i for i in live)
        samples = generator.generate([episodes[i].prompt_ids + episodes[i].completion_ids for i in live],
                                     replace(sampling, seed=seeds), allowed)
        still_live = []
        for i, sample in zip(live, samples):
            episode = episodes[i]
            episode.turns.append(sample)
            episode.completion_ids += sample.completion_ids
            episode.logprobs += sample.logprobs
            episode.env_mask += [1] * len(sample.completion_ids)
            action = act(sample.parsed) if sample.finish_reason == "stop" else None
            if action is None:
                continue
            _, reward, terminated, truncated, _ = envs[i].step(action)
            episode.episode_return += reward
            if terminated or truncated or turn == max_turns - 1:
                continue
            observation = observation_ids(observe(envs[i]))
            episode.completion_ids += observation
            episode.logprobs += [0.0] * len(observation)
            episode.env_mask += [0] * len(observation)
            still_live.append(i)
        live = still_live
        if not live:
            break
    return episodes
