"""What every rollout backend returns, and the interface they share (rl/vllm_generator.py, rl/vllm_server.py,
rl/hf_generator.py)."""

from dataclasses import dataclass
from typing import Literal, Protocol

from torch import nn

from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.harmony import ParsedCompletion

ALLOWED_KEY = "oss_grpo_allowed"
"""Where vLLM backends put `allowed` in a request (`SamplingParams.extra_args`; over HTTP, `vllm_xargs`); read by
rl/vllm_choice.py's logits processor."""


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are OpenAI's recommendation for gpt-oss (temperature 1, no top-p/top-k)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 = off."""
    seed: int | tuple[int, ...] | None = None
    """Each prompt of a `generate` call is sampled from its own random stream (every backend): an int seeds prompt i
    with `seed + i`, a tuple gives one seed per prompt. A completion so depends on its seed, never on which prompts
    share its batch or process (rl/rollout.py seeds by position in the step's whole batch). None: unseeded."""


def prompt_seeds(sampling: Sampling, count: int) -> list[int | None]:
    """The seed of each of `count` prompts, as `Sampling.seed` describes."""
    if sampling.seed is None or isinstance(sampling.seed, int):
        return [None if sampling.seed is None else sampling.seed + i for i in range(count)]
    if len(sampling.seed) != count:
        raise GeneratorError(f"Sampling.seed holds {len(sampling.seed)} seeds for {count} prompts: give one per prompt")
    return list(sampling.seed)


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]
    completion_ids: list[int]
    """Generated ids, ending with the stop token (<|return|> or <|call|>) unless truncated."""
    logprobs: list[float]
    """Log-probability of each completion id under the distribution it was sampled from."""
    finish_reason: Literal["stop", "length"]
    parsed: ParsedCompletion
    """The Harmony messages parsed from `completion_ids` (never raises: broken output is data)."""


class Generator(Protocol):
    """A rollout backend: samples one completion per prompt (repeat a prompt G times for a GRPO group)."""

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, allowed: list[list[int]] | None = None
    ) -> list[Completion]:
        """`allowed`, when given, lists the only completions that may be sampled (constrained decoding)."""
        ...


class SyncedGenerator(Generator, Protocol):
    """A backend with its own copy of the weights (a vLLM engine in process or behind a server), synced every step."""

    def sync_from(self, model: nn.Module) -> dict[str, float]:
        """Make the engine sample from `model`'s current weights; returns sizes/costs to log (`sync/<key>`)."""
        ...

    def close(self) -> None:
        """Release the engine (or the connection to it)."""
        ...
