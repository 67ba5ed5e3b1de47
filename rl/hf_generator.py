"""TransformersGenerator: rollouts with transformers `generate` on the policy itself (CPU tests, GPU fallback).

It samples from the very module being trained, so it needs no weight sync; that is also why it is slow next to
vLLM (no paged KV cache, no continuous batching) and is the fallback, not the default, on GPUs.

Sampling is ours, not `generate`'s: `generate` draws every row of a batch from one global random stream, so a
completion would depend on which other prompts shared its batch, and under `accelerate launch` on how the batch was
split over processes. `SeededRowSampling` gives each row its own stream, seeded as `Sampling.seed` says (vLLM seeds
each request the same way), so a completion depends only on its prompt, its seed and the weights. The LoRA factors
sample in the model's dtype (rl/sampling_adapters.py), not in the float32 they train in.

`compiled` (config `compile_generation`): a static KV cache, which transformers compiles on a GPU. A compiled graph
serves only the shapes it was made for, so the prompts are left-padded to a multiple of `WIDTH_STEP` and the rows to
`batch_size` (copies of the first prompt, dropped afterwards): the calls of a run repeat one shape, or a few where a
multi-turn episode's prompts grow through several widths (one compile each).
"""

import torch
from transformers import (GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedModel,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from oss_grpo.rl.choice_constraint import ChoiceConstraint
from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.generator import Completion, Sampling, prompt_seeds
from oss_grpo.rl.harmony import parse_completion
from oss_grpo.rl.sampling_adapters import adapters_in_model_dtype


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """(len(seeds), steps) uniforms in (0, 1], row i drawn from a generator seeded `seeds[i]` alone."""
    return torch.stack([1.0 - torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
                        for s in seeds])


class SeededRowSampling(LogitsProcessor):
    """Draws each row's next token by inverse CDF from its own uniforms, and keeps the drawn tokens' logprobs.

    It must run last, under greedy decoding: it returns 0 for the drawn token and -inf elsewhere, so `generate`'s
    argmax takes exactly that token. The logprob kept is that of the distribution the token was drawn from (the
    scores after the constraint, temperature, top-k and top-p), as vLLM's `processed_logprobs` reports it.

    A row whose scores hold NaN or +inf (a broken forward: fp16 overflow, a bad checkpoint, a kernel bug) has no
    distribution: it is drawn as token 0 and marked in `broken`, which the generator checks once at the end (no sync
    per step); unchecked, its draw would index past the vocabulary, a CUDA device-side assert that kills the run.
    """

    def __init__(self, uniforms: torch.Tensor, prompt_length: int) -> None:
        self.uniforms, self.prompt_length = uniforms, prompt_length  # (B, max_tokens)
        self.logprobs: list[torch.Tensor] = []
        """One (B,) tensor per generated position."""
        self.broken = torch.zeros(uniforms.shape[0], dtype=torch.bool, device=uniforms.device)
        """Rows that met non-finite scores at some step."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        logprobs = scores.log_softmax(-1)  # (B, V); tokens masked by the processors before this one have -inf
        # float64: the sum runs over the whole vocabulary (201k), and a zero-probability token must add exactly
        # nothing, so the first position reaching the target is never one the processors masked out.
        cdf = logprobs.double().exp().cumsum(-1)  # (B, V)
        broken = cdf[:, -1].isnan()  # (B,): a NaN or +inf score makes the whole row NaN (inf - inf); -inf does not
        self.broken |= broken
        target = self.uniforms[:, step : step + 1] * cdf[:, -1:]  # (B, 1), in (0, total]
        tokens = torch.searchsorted(cdf, target)  # (B, 1): the first position whose cdf reaches the target
        tokens = tokens.masked_fill(broken[:, None], 0)
        self.logprobs.append(logprobs.gather(-1, tokens)[:, 0])
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


WIDTH_STEP = 128
"""With `compiled`, prompts are left-padded to a multiple of this many tokens."""


class TransformersGenerator:
    """Batched sampling from a (PEFT-wrapped) causal LM with Harmony stop tokens and per-token logprobs."""

    def __init__(self, model: PreTrainedModel, stop_ids: list[int], pad_id: int, batch_size: int = 64,
                 compiled: bool = False) -> None:
        self.model, self.stop_ids, self.pad_id, self.batch_size = model, stop_ids, pad_id, batch_size
        self.compiled = compiled

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, allowed: list[list[int]] | None = None
    ) -> list[Completion]:
        """One completion per prompt, each drawn from its own random stream (`Sampling.seed`; unseeded prompts take
        a seed from torch's global generator)."""
        seeds = [torch.randint(2**62, ()).item() if s is None else s for s in prompt_seeds(sampling, len(prompts))]
        was_training = self.model.training
        self.model.eval()
        try:
            with adapters_in_model_dtype(self.model):
                return [c for i in range(0, len(prompts), self.batch_size)
                        for c in self._generate_batch(prompts[i : i + self.batch_size],
                                                      seeds[i : i + self.batch_size], sampling, allowed)]
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], seeds: list[int], sampling: Sampling, allowed: list[list[int]] | None
    ) -> list[Completion]:
        device = next(self.model.parameters()).device
        width, real = max(map(len, prompts)), len(prompts)
        if self.compiled:  # the shapes of every call (module docstring)
            width = -(-width // WIDTH_STEP) * WIDTH_STEP
            extra = self.batch_size - real
            prompts, seeds = prompts + [prompts[0]] * extra, seeds + [seeds[0]] * extra
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # left pad
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        # Greedy decoding over our processors: transformers' own order (constraint, temperature, top-k, top-p), then
        # the seeded draw, which leaves a single token for the argmax.
        config = GenerationConfig(do_sample=False, max_new_tokens=sampling.max_tokens, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id, cache_implementation="static" if self.compiled else None)
        sampler = SeededRowSampling(row_uniforms(seeds, sampling.max_tokens).to(device), width)
        processors = LogitsProcessorList(
            ([ChoiceConstraint(width, allowed, self.pad_id)] if allowed else [])
            + ([TemperatureLogitsWarper(sampling.temperature)] if sampling.temperature != 1.0 else [])
            + ([TopKLogitsWarper(sampling.top_k)] if sampling.top_k else [])
            + ([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1.0 else [])
            + [sampler]
        )
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config, logits_processor=processors
        )
        if sampler.broken.any():
            rows = sampler.broken[:real].nonzero().flatten().tolist()
            raise GeneratorError(
                f"the policy's logits were NaN or infinite for {len(rows)} of {real} completions (rows {rows[:8]}): "
                f"its forward pass is broken, see docs/TROUBLESHOOTING.md"
                f"{' (and try compile_generation: false)' if self.compiled else ''}")
        new_ids = sequences[:, width:]  # (B, T)
        logprobs = torch.stack(sampler.logprobs, dim=1)  # (B, T)
        completions = []
        for prompt, ids, lps in zip(prompts[:real], new_ids.tolist(), logprobs.tolist()):
            end = next((t + 1 for t, tok in enumerate(ids) if tok in self.stop_ids), len(ids))
            completions.append(Completion(
                prompt_ids=prompt, completion_ids=ids[:end], logprobs=lps[:end],
                finish_reason="stop" if ids[end - 1] in self.stop_ids else "length",
                parsed=parse_completion(ids[:end]),
            ))
        return completions
