"""gpt-oss attention in query chunks: transformers' own eager attention (sinks, sliding windows, its overflow guard),
applied to slices of the queries so that no [batch, heads, queries, keys] score tensor outgrows a budget.

Why: transformers has no SDPA path for gpt-oss (the sinks), so its attention is eager, and eager materialises the
scores in a chain of full-size tensors (logits, + mask, sinks appended, max-shifted, softmax), two of them alive at
each step. At a GRPO prefill the keys span the whole static cache: 32 prompts x 64 heads x 128 queries x 1,152 keys
in bf16 is 604 MB a copy. Measured: the chunks took 0.76 GiB off the 20b step's generation peak (docs/BENCHMARKS.md,
run 4). Each query's row of attention is independent of the others, so slicing the queries changes no value, only
the peak. Decoding (one query) and short sequences take a single chunk, which is the eager call itself.
"""

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

NAME = "oss_grpo_chunked_eager"
SCORE_BUDGET_BYTES = 64 * 2**20
"""One copy of a chunk's scores (eager holds two at a time): 128 MB of scores at once, against 1.2 GB unchunked at
the 20b step's prefill."""


def query_chunk(query: torch.Tensor, keys: int, budget: int) -> int:
    """How many queries keep a [batch, heads, chunk, keys] score tensor of `query`'s dtype under `budget` bytes."""
    batch, heads = query.shape[:2]
    return max(1, budget // (batch * heads * keys * query.element_size()))


def chunked_eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' `eager_attention_forward` over query slices; `[B, H, Q, D]` queries -> `[B, Q, H, D]`.

    The per-chunk attention weights are not returned (nothing here asks for `output_attentions`)."""
    queries, chunk = query.shape[2], query_chunk(query, key.shape[2], SCORE_BUDGET_BYTES)
    outputs = []
    for start in range(0, queries, chunk):
        rows = slice(start, start + chunk)
        mask = attention_mask
        if mask is not None and mask.shape[2] == queries:  # a mask broadcast over the queries (size 1) stays whole
            mask = mask[:, :, rows]
        outputs.append(eager_attention_forward(module, query[:, :, rows], key, value, mask, scaling, dropout,
                                               **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def use_chunked_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch `model` (and every sub-model) to the chunked attention; it builds the same masks as eager."""
    AttentionInterface.register(NAME, chunked_eager_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    model.set_attn_implementation(NAME)
    return model
