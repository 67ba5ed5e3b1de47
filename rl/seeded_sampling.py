"""Per-row seeded sampling for the transformers generators (rl/hf_generator.py, rl/graphed_decode.py).

`generate` draws every row of a batch from one global random stream, so a completion would depend on which other
prompts shared its batch, and under `accelerate launch` on how the batch was split over processes. Here each row
draws from its own stream, seeded as `Sampling.seed` says (vLLM seeds each request the same way), so a completion
depends only on its prompt, its seed and the weights.
"""

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from oss_grpo.rl.generator import Sampling


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """(len(seeds), steps) uniforms in (0, 1], row i drawn from a generator seeded `seeds[i]` alone."""
    return torch.stack([1.0 - torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                        for s in seeds])


def warpers(sampling: Sampling) -> list[LogitsProcessor]:
    """transformers' warpers for `sampling`, in its order (temperature, top-k, top-p); none reads `input_ids`."""
    return (([TemperatureLogitsWarper(sampling.temperature)] if sampling.temperature != 1.0 else [])
            + ([TopKLogitsWarper(sampling.top_k)] if sampling.top_k else [])
            + ([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1.0 else []))


@torch.compiler.disable  # Inductor (torch 2.11) fails to generate the float64 scan over a 201k-wide row
def seeded_draw(scores: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's token by inverse CDF of softmax(`scores`) at its uniform in (0, 1]: (tokens, their logprobs, rows
    that have no distribution), each (B,). The logprob is that of the distribution the token was drawn from (the
    scores after the warpers), as vLLM's `processed_logprobs` reports it.

    The sum runs in float64 over the whole vocabulary (201k), so a token that the warpers masked (-inf) adds exactly
    nothing and is never the first position reaching the target. NaN or +inf scores (a broken forward: fp16 overflow,
    a bad checkpoint, a kernel bug) make the whole row NaN (inf - inf; -inf does not): such a row is drawn as token 0
    and flagged, where its draw would index past the vocabulary (on a GPU, a device-side assert that kills the run).
    """
    logprobs = scores.log_softmax(-1)  # (B, V)
    cdf = logprobs.double().exp().cumsum(-1)
    broken = cdf[:, -1].isnan()
    tokens = torch.searchsorted(cdf, uniforms[:, None] * cdf[:, -1:])  # the first position whose cdf reaches it
    tokens = tokens.masked_fill(broken[:, None], 0)
    return tokens[:, 0], logprobs.gather(-1, tokens)[:, 0], broken


class SeededRowSampling(LogitsProcessor):
    """`seeded_draw` as `generate`'s last logits processor, under greedy decoding: it returns 0 for the drawn token
    and -inf elsewhere, so `generate`'s argmax takes exactly that token. It keeps the drawn tokens' logprobs, and
    marks in `broken` the rows drawn without a distribution (the generator checks once at the end: no sync a step)."""

    def __init__(self, uniforms: torch.Tensor, prompt_length: int) -> None:
        self.uniforms, self.prompt_length = uniforms, prompt_length  # (B, max_tokens)
        self.logprobs: list[torch.Tensor] = []
        """One (B,) tensor per generated position."""
        self.broken = torch.zeros(uniforms.shape[0], dtype=torch.bool, device=uniforms.device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        tokens, logprobs, broken = seeded_draw(scores, self.uniforms[:, step])
        self.broken |= broken
        self.logprobs.append(logprobs)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens[:, None], 0.0)
