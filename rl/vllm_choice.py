"""Constrained decoding inside vLLM: a logits processor doing what rl/choice_constraint.py does for transformers.

At each step only the tokens that keep the completion a prefix of an allowed one stay, so the sample comes from the
policy's own distribution renormalised over the allowed continuations. A request names its allowed completions in
`SamplingParams.extra_args[ALLOWED_KEY]` (rl/generator.py): a list of token-id lists from the colocated engine
(rl/vllm_generator.py), or the same list as a JSON string from the server client (rl/vllm_server.py), because vLLM's
HTTP `vllm_xargs` takes flat values only. `oss-grpo serve` registers this class with the server (`--logits-processors`).
This module has no side effects at import: the vLLM server imports it by name.
"""

import json
from collections.abc import Sequence
from functools import partial

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from oss_grpo.rl.generator import ALLOWED_KEY


def allow_prefixes(choices: Sequence[Sequence[int]], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
    """One request's logits with every token masked that would leave all of `choices`."""
    step = len(output_ids)
    allowed = {c[step] for c in choices if len(c) > step and list(c[:step]) == output_ids}
    mask = torch.full_like(logits, float("-inf"))
    mask[list(allowed)] = 0.0
    return logits + mask


class ChoiceLogitsProcessor(AdapterLogitsProcessor):
    """vLLM (v1) logits processor applying `allow_prefixes` to the requests that name allowed completions."""

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token is most likely: greedy requests need it too

    def new_req_logits_processor(self, params: SamplingParams) -> partial | None:
        choices = (params.extra_args or {}).get(ALLOWED_KEY)
        if isinstance(choices, str):
            choices = json.loads(choices)
        return partial(allow_prefixes, choices) if choices else None
