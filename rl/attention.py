"""gpt-oss attention in query chunks: transformers' eager attention math (sinks, sliding windows, its overflow guard),
applied to slices of the queries so that no [batch, heads, queries, keys] score tensor outgrows a budget.

Why: transformers has no SDPA path for gpt-oss (the sinks), so its attention is eager, and eager materialises the
scores in a chain of full-size tensors (logits, + mask, sinks appended, max-shifted, softmax), two of them alive at
each step. At a GRPO prefill the keys span the whole static cache: 32 prompts x 64 heads x 128 queries x 1,152 keys
in bf16 is 604 MB a copy. Measured: the chunks took 0.76 GiB off the 20b step's generation peak (docs/BENCHMARKS.md,
run 4). Each query's row of attention is independent of the others, so slicing the queries changes no value, only
the peak. Decoding (one query) and short sequences take a single chunk.

Each chunk is eager's math with one change: the 8 query heads that share a KV head are stacked as extra query rows
against that KV head (`grouped_attention`), where eager first copies K and V out to all 64 heads (`repeat_kv`). The
copies cost 0.73 ms of a 20b decode step's GPU time on an H100 (docs/BENCHMARKS.md, "Compiled decoding kernel by
kernel") and, at a GRPO prefill over the static cache, 2 x 302 MB. Every score is the same dot product as eager's.
"""

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "oss_grpo_chunked_eager"
SCORE_BUDGET_BYTES = 64 * 2**20
"""One copy of a chunk's scores (eager holds two at a time): 128 MB of scores at once, against 1.2 GB unchunked at
the 20b step's prefill."""


def query_chunk(query: torch.Tensor, keys: int, budget: int) -> int:
    """How many queries keep a [batch, heads, chunk, keys] score tensor of `query`'s dtype under `budget` bytes."""
    batch, heads = query.shape[:2]
    return max(1, budget // (batch * heads * keys * query.element_size()))


def grouped_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """transformers' gpt-oss `eager_attention_forward` without `repeat_kv`; `[B, H, Q, D]` queries against
    `[B, KV, K, D]` keys and values -> `[B, Q, H, D]`.

    Query head h reads KV head h // G (G = H / KV, repeat_kv's order), so the queries regroup as `[B, KV, G * Q, D]`
    and multiply the keys as they are. Then eager's steps: scale, add the mask, append each head's sink logit,
    subtract the row max (eager's overflow guard), softmax, drop the sink column, dropout, multiply the values.
    """
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scores = query.reshape(batch, kv_heads, group * queries, dim) @ key.transpose(2, 3) * scaling
    scores = scores.view(batch, kv_heads, group, queries, keys)
    if attention_mask is not None:  # [B, 1 or H, Q, K]
        scores = scores + attention_mask.unflatten(1, (-1, group) if attention_mask.shape[1] == heads else (1, 1))
    sinks = module.sinks.view(1, kv_heads, group, 1, 1).expand(batch, -1, -1, queries, -1)
    logits = torch.cat([scores, sinks], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    probs = F.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]
    probs = F.dropout(probs, p=dropout, training=module.training).to(value.dtype)
    out = probs.view(batch, kv_heads, group * queries, keys) @ value  # [B, KV, G * Q, D]
    return out.view(batch, heads, queries, dim).transpose(1, 2).contiguous()


def chunked_eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """`grouped_attention` over query slices; `[B, H, Q, D]` queries -> `[B, Q, H, D]`.

    The per-chunk attention weights are not returned (nothing here asks for `output_attentions`)."""
    queries, chunk = query.shape[2], query_chunk(query, key.shape[2], SCORE_BUDGET_BYTES)
    outputs = []
    for start in range(0, queries, chunk):
        rows = slice(start, start + chunk)
        mask = attention_mask
        if mask is not None and mask.shape[2] == queries:  # a mask broadcast over the queries (size 1) stays whole
            mask = mask[:, :, rows]
        outputs.append(grouped_attention(module, query[:, :, rows], key, value, mask, scaling, dropout))
    return torch.cat(outputs, dim=1), None


def use_chunked_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Switch `model` (and every sub-model) to the chunked attention; it builds the same masks as eager."""
    AttentionInterface.register(NAME, chunked_eager_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    model.set_attn_implementation(NAME)
    return model
