"""TransformersGenerator: rollouts with transformers on the policy itself (CPU tests, GPU fallback).

It samples from the very module being trained, so it needs no weight sync; that is also why it is slow next to
vLLM (no paged KV cache, no continuous batching) and is the fallback, not the default, on GPUs.

Sampling is ours, not `generate`'s: each row draws from its own seeded stream (rl/seeded_sampling.py), so a
completion depends only on its prompt, its seed and the weights. The LoRA factors sample in the model's dtype
(rl/sampling_adapters.py), not in the float32 they train in.

`compiled` (config `compile_generation`): rl/graphed_decode.py's decoder, a static KV cache whose decode step is a
CUDA graph on a GPU (compiled by Inductor first). A graph serves only the shapes it was recorded for, so the prompts
are left-padded to a multiple of `WIDTH_STEP` tokens (at least the sliding window) and the rows to `batch_size`
(copies of the first prompt, dropped afterwards): the calls of a run repeat one shape, or a few where a multi-turn
episode's prompts grow through several widths. Constrained decoding (`allowed`, whose constraint reads the tokens on
the host every step) takes transformers' compiled `generate` instead, and so does every call after the decoder
failed to record its graph (a warning says why): the way `compile_generation` decoded before the decoder.
"""

import warnings

import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel

from oss_grpo.rl.choice_constraint import ChoiceConstraint
from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.generator import Completion, Sampling, prompt_seeds
from oss_grpo.rl.graphed_decode import GraphRecordingError, decoder_for
from oss_grpo.rl.harmony import parse_completion
from oss_grpo.rl.sampling_adapters import adapters_in_model_dtype
from oss_grpo.rl.seeded_sampling import SeededRowSampling, row_uniforms, warpers


WIDTH_STEP = 128
"""With `compiled`, prompts are left-padded to a multiple of this many tokens."""


class TransformersGenerator:
    """Batched sampling from a (PEFT-wrapped) causal LM with Harmony stop tokens and per-token logprobs."""

    def __init__(self, model: PreTrainedModel, stop_ids: list[int], pad_id: int, batch_size: int = 64,
                 compiled: bool = False) -> None:
        self.model, self.stop_ids, self.pad_id, self.batch_size = model, stop_ids, pad_id, batch_size
        self.compiled = compiled
        self.decoder = decoder_for(model, stop_ids)

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
            width = -(-max(width, self.model.config.sliding_window or 0) // WIDTH_STEP) * WIDTH_STEP
            extra = self.batch_size - real
            prompts, seeds = prompts + [prompts[0]] * extra, seeds + [seeds[0]] * extra
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=device)  # left pad
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        uniforms = row_uniforms(seeds, sampling.max_tokens).to(device)
        decoded = None
        if self.compiled and not allowed and self.decoder.recording_error is None:
            try:
                decoded = self.decoder.decode(input_ids, attention_mask, uniforms, sampling)
            except GraphRecordingError as err:
                warnings.warn(f"{err}; decoding with transformers' compiled `generate` from now on", stacklevel=2)
        new_ids, logprobs, broken = decoded or self._generate(input_ids, attention_mask, uniforms, sampling, allowed)
        if broken.any():
            rows = broken[:real].nonzero().flatten().tolist()
            raise GeneratorError(
                f"the policy's logits were NaN or infinite for {len(rows)} of {real} completions (rows {rows[:8]}): "
                f"its forward pass is broken, see docs/TROUBLESHOOTING.md"
                f"{' (and try compile_generation: false)' if self.compiled else ''}")
        completions = []
        for prompt, ids, lps in zip(prompts[:real], new_ids.tolist(), logprobs.tolist()):
            end = next((t + 1 for t, tok in enumerate(ids) if tok in self.stop_ids), len(ids))
            completions.append(Completion(
                prompt_ids=prompt, completion_ids=ids[:end], logprobs=lps[:end],
                finish_reason="stop" if ids[end - 1] in self.stop_ids else "length",
                parsed=parse_completion(ids[:end]),
            ))
        return completions

    def _generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, uniforms: torch.Tensor, sampling: Sampling,
        allowed: list[list[int]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """transformers `generate` with our processors: (new tokens, their logprobs, broken rows). With `compiled`,
        over a static cache, whose decode step transformers compiles on a GPU (torch.compile, CUDA graphs)."""
        width = input_ids.shape[1]
        # Greedy decoding over our processors: transformers' own order (constraint, temperature, top-k, top-p), then
        # the seeded draw, which leaves a single token for the argmax.
        config = GenerationConfig(do_sample=False, max_new_tokens=sampling.max_tokens, eos_token_id=self.stop_ids,
                                  pad_token_id=self.pad_id, cache_implementation="static" if self.compiled else None)
        sampler = SeededRowSampling(uniforms, width)
        processors = LogitsProcessorList(
            ([ChoiceConstraint(width, allowed, self.pad_id)] if allowed else []) + warpers(sampling) + [sampler])
        sequences = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config, logits_processor=processors
        )
        return sequences[:, width:], torch.stack(sampler.logprobs, dim=1), sampler.broken
