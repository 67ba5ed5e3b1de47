"""Decoding over a static KV cache with each step one CUDA graph: what `compile_generation` runs on a GPU.

Why not transformers' compiled `generate`: its decode step is compiled, but the loop around it is Python that waits
on the GPU. Per token of a batch-32 gpt-oss-20b decode on an H100: 3.4 host synchronisations (`generate` reads whether
every row has stopped after each token), 2.6 ms of Dynamo guard checks, two graph launches and 148 eager kernels;
up to ~3.5 ms of its 19 ms was a GPU waiting for the host (docs/BENCHMARKS.md, session 15).

Here the prefill runs eagerly, and all of a decode step works on buffers that stay in place: the model's forward over
the cache, the warpers, the seeded draw, and the bookkeeping (the token and its logprob written at the step's column,
the stop flags, the step counter). On a GPU that step is compiled by Inductor (which also makes a constant of the
tensor that transformers' window cache builds from a Python list each step, a host-to-device copy that a graph
cannot record), recorded once as a CUDA graph and replayed per token: the host only launches replays, and reads the
stop flags every `CHECK_EVERY` steps. On a CPU the same step runs eagerly (the tests compare it with `generate`).

The attention masks are ours. transformers builds a decode step's masks from Python ints (the sliding-window layer's
offset into the padding mask), which a graph would freeze at the step it was recorded in; here they come from the
step counter on the device. After a prefill at least a window long, every step takes the window cache's "full" path
(roll by one, write the last slot), so its slot j holds position p - (window - 1) + j when the token at p is fed.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from transformers import LogitsProcessor, PreTrainedModel, StaticCache

from oss_grpo.rl.generator import Sampling
from oss_grpo.rl.sampling_adapters import compute_dtype
from oss_grpo.rl.seeded_sampling import seeded_draw, warpers

CHECK_EVERY = 16
"""Decode steps between two reads of whether every row has stopped (each read waits for the GPU)."""
WARM_UP_STEPS = 3
"""Eager steps before a graph is recorded: they compile (the window cache's position is a Python int that changes
each step, so Dynamo compiles twice, the second time with it symbolic) and run the Triton kernels' first launches."""


class GraphRecordingError(RuntimeError):
    """Compiling or recording the decode step failed (the generator then decodes with transformers' `generate`)."""


@dataclass
class DecodeBuffers:
    """What a decode step reads and writes, at addresses that a recorded graph keeps. B rows, T new tokens."""

    cache: StaticCache  # prompt width + T slots (the window layers: the window)
    pads: torch.Tensor  # (B,) each row's left padding
    step: torch.Tensor  # () the column the next draw fills
    uniforms: torch.Tensor  # (B, T) float64
    tokens: torch.Tensor  # (B, T) drawn tokens
    logprobs: torch.Tensor  # (B, T) their logprobs
    done: torch.Tensor  # (B,) rows that drew a stop token
    broken: torch.Tensor  # (B,) rows drawn without a distribution at some step
    stop_ids: torch.Tensor  # the stop tokens


class GraphedDecoder:
    """Samples after left-padded prompts; keeps the buffers (and graphs) of the last shape it decoded."""

    def __init__(self, model: PreTrainedModel, stop_ids: list[int]) -> None:
        self.model, self.stop_ids = model, stop_ids
        self.shape: tuple[int, int, int] | None = None
        self.buffers: DecodeBuffers | None = None
        self.graphs: dict[tuple[float, int, float], torch.cuda.CUDAGraph] = {}
        self.recording_error: GraphRecordingError | None = None
        """Why recording failed, once it has: the generator then decodes with transformers' `generate`."""

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, uniforms: torch.Tensor,
               sampling: Sampling) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, W) left-padded prompts and their mask, (B, T) uniforms -> (tokens, logprobs, broken): (B, T), (B, T),
        (B,). A row's columns after its stop token hold what it drew next (cut them); decoding ends early once every
        row has stopped, leaving the later columns as they were. The three are the decoder's own buffers: read them
        before the next call."""
        window = self.model.config.sliding_window or 0
        if input_ids.shape[1] < window:
            raise ValueError(f"prompt width {input_ids.shape[1]} is under the sliding window ({window}): pad to it")
        rows, new_tokens = uniforms.shape
        b = self._buffers(rows, input_ids.shape[1], new_tokens, input_ids.device)
        warps = warpers(sampling)
        step = partial(self._decode_step, warps)
        key = (sampling.temperature, sampling.top_k, sampling.top_p)
        if input_ids.is_cuda and new_tokens > WARM_UP_STEPS and key not in self.graphs:
            self._prefill(input_ids, attention_mask, uniforms, warps)  # the warm-up steps advance it: prefilled again
            self.graphs[key] = self._record(partial(torch.compile(self._decode_step), warps))
        if key in self.graphs:
            step = self.graphs[key].replay
        self._prefill(input_ids, attention_mask, uniforms, warps)
        for t in range(1, new_tokens):
            step()
            if t % CHECK_EVERY == 0 and bool(b.done.all()):
                break
        return b.tokens, b.logprobs, b.broken

    def _buffers(self, rows: int, width: int, new_tokens: int, device: torch.device) -> DecodeBuffers:
        """The buffers for this shape: made anew, and the graphs dropped, when it changes."""
        if self.shape != (rows, width, new_tokens):
            self.shape, self.graphs, self.buffers = (rows, width, new_tokens), {}, None  # the old cache freed first
            flags = dict(dtype=torch.bool, device=device)
            self.buffers = DecodeBuffers(
                cache=StaticCache(config=self.model.config, max_cache_len=width + new_tokens),
                pads=torch.zeros(rows, dtype=torch.long, device=device),
                step=torch.zeros((), dtype=torch.long, device=device),
                uniforms=torch.zeros(rows, new_tokens, dtype=torch.float64, device=device),
                tokens=torch.zeros(rows, new_tokens, dtype=torch.long, device=device),
                logprobs=torch.zeros(rows, new_tokens, device=device),
                done=torch.zeros(rows, **flags), broken=torch.zeros(rows, **flags),
                stop_ids=torch.tensor(self.stop_ids, dtype=torch.long, device=device))
        return self.buffers

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, uniforms: torch.Tensor,
                 warps: list[LogitsProcessor]) -> None:
        """Empty the cache and the flags, run the prompts into the cache, and draw the first token."""
        b = self.buffers
        b.cache.reset()
        b.pads.copy_((attention_mask == 0).sum(-1))
        b.step.zero_()
        b.uniforms.copy_(uniforms)
        b.done.zero_()
        b.broken.zero_()
        position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)  # as `generate`
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=b.cache, use_cache=True, logits_to_keep=1)
        self._draw(out.logits[:, -1], warps)

    def _decode_step(self, warps: list[LogitsProcessor]) -> None:
        """Feed the last drawn token, draw the next: what a graph records."""
        b = self.buffers
        position = b.step + (self.shape[1] - 1)  # the fed token's: the prompt width, a constant of the shape's graph
        fed = b.tokens.index_select(1, (b.step - 1).view(1))  # (B, 1)
        out = self.model(input_ids=fed, attention_mask=self._masks(position), position_ids=(position - b.pads)[:, None],
                         past_key_values=b.cache, use_cache=True)
        self._draw(out.logits[:, -1], warps)

    def _draw(self, logits: torch.Tensor, warps: list[LogitsProcessor]) -> None:
        """Warp the logits, draw each row's token at its uniform of this step, and record it."""
        b = self.buffers
        scores = logits.float()  # as `generate`
        for warp in warps:
            scores = warp(None, scores)
        tokens, logprobs, broken = seeded_draw(scores, b.uniforms.index_select(1, b.step.view(1))[:, 0])
        b.tokens.index_copy_(1, b.step.view(1), tokens[:, None])
        b.logprobs.index_copy_(1, b.step.view(1), logprobs[:, None])
        b.done |= torch.isin(tokens, b.stop_ids)
        b.broken |= broken
        b.step += 1

    def _masks(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """The additive (B, 1, 1, keys) masks of the token at `position`, as transformers' eager masks: 0 where a row
        attends, the dtype's minimum elsewhere. Full layers: slots 0..L-1 are positions, valid from the row's first
        real token up to `position`. Window layers: slot j is position - (window - 1) + j, valid unless padding."""
        b = self.buffers
        dtype = compute_dtype(self.model)
        _, width, new_tokens = self.shape
        slots = torch.arange(width + new_tokens, device=position.device)  # the cache's length
        full = (slots[None, :] >= b.pads[:, None]) & (slots[None, :] <= position)
        window = self.model.config.sliding_window or 1
        sliding = slots[None, :window] + position - (window - 1) >= b.pads[:, None]
        return {"full_attention": _additive(full, dtype), "sliding_attention": _additive(sliding, dtype)}

    def _record(self, step: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """`step` run WARM_UP_STEPS times on a side stream (PyTorch's recipe before recording), then recorded."""
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARM_UP_STEPS):
                    step()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        except Exception as err:  # Dynamo, Inductor or the capture: a model or GPU this decoder was not checked on
            self.recording_error = GraphRecordingError(f"recording the decode step as a CUDA graph failed: "
                                                       f"{type(err).__name__}: {str(err)[:500]}")
            raise self.recording_error from err
        return graph


def _additive(attends: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) booleans -> the (B, 1, 1, K) additive mask: 0 where True, the dtype's minimum where False."""
    zeros = torch.zeros(attends.shape, dtype=dtype, device=attends.device)
    return zeros.masked_fill(~attends, torch.finfo(dtype).min)[:, None, None, :]


def decoder_for(model: PreTrainedModel, stop_ids: list[int]) -> GraphedDecoder:
    """`model`'s one decoder for these stop tokens, kept on the model: the rollouts make a generator each step and the
    evaluation one of its own, and all of them share its buffers and graphs, so a run holds one KV cache (~1 GB on
    gpt-oss-20b at 32 x 1,152 tokens), records each shape's graph once, and tries a failed recording only once."""
    decoders = model.__dict__.setdefault("_oss_grpo_decoders", {})  # not a submodule: no state_dict entry
    if tuple(stop_ids) not in decoders:
        decoders[tuple(stop_ids)] = GraphedDecoder(model, stop_ids)
    return decoders[tuple(stop_ids)]
