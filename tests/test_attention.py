"""rl/attention.py: gpt-oss attention in query chunks computes what transformers' eager attention computes, in values
and gradients, sinks and sliding windows included, while its largest score tensor stays at the budget and the keys
and values are never copied out to every query head."""

import copy
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

from oss_grpo.rl import attention
from oss_grpo.rl.attention import chunked_eager_attention, grouped_attention, use_chunked_attention
from oss_grpo.rl.tiny_model import build_tiny_model


class Allocations(TorchDispatchMode):
    """The tensors the ops allocate while active, as (shape, bytes per element); views allocate nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.made: set[tuple[tuple[int, ...], int]] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.made |= {(tuple(t.shape), t.element_size()) for t in (out if isinstance(out, (tuple, list)) else [out])
                          if isinstance(t, torch.Tensor)}
        return out

    @property
    def shapes(self) -> set[tuple[int, ...]]:
        return {shape for shape, _ in self.made}

    def largest_scores(self, keys: int) -> int:
        """Bytes of the largest [batch, heads, queries, keys (+ sink)] tensor made."""
        return max((math.prod(shape) * size for shape, size in self.made
                    if len(shape) == 4 and shape[-1] in (keys, keys + 1)), default=0)


@pytest.mark.parametrize("queries", [1, 7])
@pytest.mark.parametrize("mask_heads", [1, 4])
def test_grouped_attention_is_eager_without_copying_keys_and_values(queries: int, mask_heads: int) -> None:
    """One decode query or a few, a mask shared by the heads (as transformers builds it) or one per head."""
    layer = build_tiny_model().model.layers[1].self_attn  # 4 query heads over 2 KV heads
    layer.sinks.data.normal_(generator=torch.Generator().manual_seed(1))
    batch, keys, dim = 3, 40, 16
    q = torch.randn(batch, 4, queries, dim, requires_grad=True)
    k, v = torch.randn(batch, 2, keys, dim, requires_grad=True), torch.randn(batch, 2, keys, dim, requires_grad=True)
    mask = torch.zeros(batch, mask_heads, queries, keys).masked_fill(torch.rand(batch, mask_heads, queries, keys) < 0.3,
                                                                     float("-inf"))  # fmt: skip

    with Allocations() as eager_made:
        expected = eager_attention_forward(layer, q, k, v, mask, 0.25)[0]
    with Allocations() as grouped_made:
        got = grouped_attention(layer, q, k, v, mask, 0.25)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    copies = (batch, 4, keys, dim)  # K or V repeated out to the 4 query heads
    assert copies in eager_made.shapes and copies not in grouped_made.shapes

    upstream = torch.randn_like(got)
    grads = torch.autograd.grad(expected, (q, k, v, layer.sinks), upstream)
    for name, a, b in zip("q k v sinks".split(), torch.autograd.grad(got, (q, k, v, layer.sinks), upstream), grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def padded_batch(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random ids (as the generators pad) with their attention mask."""
    ids = torch.randint(0, 199_000, (len(lengths), width), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    return ids, mask


def test_the_largest_score_tensor_stays_at_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = build_tiny_model().model.layers[1].self_attn  # full attention: 4 query heads over 2 KV heads
    batch, queries, keys = 4, 48, 64
    q = torch.randn(batch, 4, queries, 16)
    k, v = torch.randn(batch, 2, keys, 16), torch.randn(batch, 2, keys, 16)
    mask = torch.zeros(batch, 1, queries, keys).masked_fill(torch.rand(batch, 1, queries, keys) < 0.3, float("-inf"))
    budget = batch * 4 * 5 * keys * 4  # 5 queries' scores in float32: 10 chunks, the last one short
    monkeypatch.setattr(attention, "SCORE_BUDGET_BYTES", budget)

    with Allocations() as eager_made:
        expected = eager_attention_forward(layer, q, k, v, mask, 0.25)[0]
    with Allocations() as chunked_made:
        got, _ = chunked_eager_attention(layer, q, k, v, mask, 0.25)
    assert got.shape == expected.shape == (batch, queries, 4, 16)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert eager_made.largest_scores(keys) >= batch * 4 * queries * keys * 4  # eager holds all queries' scores at once
    assert chunked_made.largest_scores(keys) <= budget * (keys + 1) / keys  # one chunk's scores, plus the sink column


def test_the_model_computes_the_same_logits_gradients_and_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Padded sequences longer than the sliding window (32), with a budget that cuts them into 3-query chunks."""
    monkeypatch.setattr(attention, "SCORE_BUDGET_BYTES", 3 * 3 * 4 * 72 * 4)
    eager = build_tiny_model(seed=3)
    chunked = use_chunked_attention(copy.deepcopy(eager))
    assert chunked.config._attn_implementation == attention.NAME != eager.config._attn_implementation
    ids, mask = padded_batch([72, 50, 9], 72)

    logits = {}
    for name, model in (("eager", eager), ("chunked", chunked)):
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        logits[name] = out.logits.detach()
    keep = mask.bool()
    torch.testing.assert_close(logits["chunked"][keep], logits["eager"][keep], rtol=1e-5, atol=1e-5)
    grads = dict(eager.named_parameters())
    for name, param in chunked.named_parameters():
        if grads[name].grad is not None:  # experts no token was routed to have none in either model
            torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    assert chunked.model.layers[0].self_attn.sinks.grad.abs().sum() > 0  # the sinks take part in the backward

    with torch.no_grad():  # a static-cache prefill (keys: the whole cache) then one-query decode steps
        tokens = [m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             cache_implementation="static", pad_token_id=199_999) for m in (eager, chunked)]
    assert torch.equal(tokens[0], tokens[1])
