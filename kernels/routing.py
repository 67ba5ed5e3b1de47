"""gpt-oss routing: top-k experts per token, softmax over the k in float32, token copies sorted by expert.

The grouped kernels take the sorted copies as one [T*k, H] matrix whose rows offsets[e]:offsets[e+1] belong to expert e;
from the offsets each program finds its expert and rows, so one launch serves every expert whatever the counts (zeros
included).
Everything here is a handful of device-side torch ops: no host synchronisation, no Python loop over experts.
"""

from dataclasses import dataclass

import torch


def route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[T, E]` logits -> (`indices [T, k]` int64, `weights [T, k]` float32), softmax over the chosen k only.

    transformers' GptOssTopKRouter runs the softmax in the logits' dtype (bf16 for a bf16 model); we do it in
    float32, which is what the released gpt-oss reference code does.
    """
    top_logits, indices = torch.topk(router_logits.float(), top_k, dim=-1)
    return indices, torch.softmax(top_logits, dim=-1)


MAX_TILES = 65535
"""Row tiles of one launch: the kernels put them on the grid's second axis, which CUDA caps at 2^16 - 1."""


@dataclass
class ExpertGroups:
    """Which sorted rows go to which expert: the offsets the grouped kernels read, and the size of their grid."""

    offsets: torch.Tensor
    """`[E + 1]` int32: rows offsets[e]:offsets[e+1] of the sorted matrix belong to expert e."""
    num_rows: int
    """Total rows (T * k), known on the host without a sync."""

    @property
    def num_experts(self) -> int:
        return self.offsets.numel() - 1

    @classmethod
    def from_counts(cls, counts: torch.Tensor, num_rows: int) -> "ExpertGroups":
        """Groups of `counts[e]` consecutive rows per expert; `num_rows` must equal counts.sum()."""
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.int32, device=counts.device)
        offsets[1:] = torch.cumsum(counts, 0)
        return cls(offsets, num_rows)

    def segments(self) -> list[slice]:
        """The row range of each expert, on the host (a sync: for the plain-torch references only)."""
        bounds = self.offsets.tolist()
        return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]

    @property
    def padded_experts(self) -> int:
        """E rounded up to a power of 2: the kernels' E_PAD, the width of their per-expert registers."""
        return 1 << (self.num_experts - 1).bit_length()

    def row_tiles(self, block_m: int) -> int:
        """Row tiles of `block_m` on a launch's grid: the most any counts can need, known on the host (no sync).

        Expert e needs cdiv(count_e, block_m) <= (count_e + block_m - 1) / block_m tiles if it has rows, so n experts
        with rows need at most (rows + n (block_m - 1)) / block_m, and n <= min(E, rows). Each program finds its
        expert and rows from the offsets (_mxfp4_matmul._tile); the spare tiles exit at once. (cdiv(rows, block_m)
        + E, the looser bound, put 33 row tiles on the grid of 16 rows where 16 can hold rows: on the H100 the 20b
        down projection's forward took 61 us there against 50 with exact tiles, docs/BENCHMARKS.md.)
        """
        num_tiles = max(1, (self.num_rows + min(self.num_experts, self.num_rows) * (block_m - 1)) // block_m)
        if num_tiles > MAX_TILES:
            raise ValueError(f"{self.num_rows} routed rows need more than {MAX_TILES} tiles of {block_m}: the "
                             "kernels' grid cannot launch them; pass fewer tokens per call")  # fmt: skip
        return num_tiles


@dataclass
class SortedTokens:
    """The T * k (token, choice) copies sorted by expert, and the way back."""

    token: torch.Tensor
    """`[T*k]` int64: the token each sorted row copies (gather x[token] to build the sorted input)."""
    slot: torch.Tensor
    """`[T*k]` int64: the flat (token, choice) position each sorted row came from (scatter back with it)."""
    groups: ExpertGroups


def sort_by_expert(indices: torch.Tensor, num_experts: int) -> SortedTokens:
    """`indices [T, k]` -> the copies sorted by expert (stable, so each expert's rows keep token order)."""
    experts, slot = torch.sort(indices.flatten(), stable=True)
    # Expert e's rows start where the sorted ids reach e: a search, 3 small ops where counting them and a cumulative
    # sum took 7 (this runs once per MoE layer and decode step). Not torch.bincount: on CUDA it reads the largest
    # index back to the host, a sync (the CPU then stops queueing kernels ahead of the GPU; CUDA-graph capture fails).
    bounds = torch.arange(num_experts + 1, device=indices.device)
    groups = ExpertGroups(torch.searchsorted(experts, bounds, out_int32=True), experts.numel())
    return SortedTokens(token=slot // indices.shape[1], slot=slot, groups=groups)
