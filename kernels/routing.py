"""gpt-oss routing: top-k experts per token, softmax over the k in float32, token copies sorted by expert.

The grouped kernels take the sorted copies as one [T*k, H] matrix whose rows offsets[e]:offsets[e+1] belong to expert e,
plus a (tile -> expert, first row) table, so one launch serves every expert whatever the counts (zeros included).
Everything here is a handful of device-side torch ops: no host synchronisation, no Python loop over experts.
"""

from dataclasses import dataclass, field

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
    """Which sorted rows go to which expert, and the per-BLOCK_M tile tables the kernels read."""

    offsets: torch.Tensor
    """`[E + 1]` int32: rows offsets[e]:offsets[e+1] of the sorted matrix belong to expert e."""
    num_rows: int
    """Total rows (T * k), known on the host without a sync."""
    _tiles: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

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

    def tiles(self, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(`tile_expert`, `tile_row`) int32 for a grid of cdiv(rows, block_m) + E programs; expert -1 = idle tile.

        Expert e needs cdiv(count_e, block_m) tiles, so the total is at most cdiv(rows, block_m) + E - 1: a grid of
        that static size needs no sync. Cached per block_m because one MoE layer launches several kernels.
        """
        if block_m not in self._tiles:
            num_tiles = -(-self.num_rows // block_m) + self.num_experts
            if num_tiles > MAX_TILES:
                raise ValueError(f"{self.num_rows} routed rows need more than {MAX_TILES} tiles of {block_m}: the "
                                 "kernels' grid cannot launch them; pass fewer tokens per call")  # fmt: skip
            counts = self.offsets[1:] - self.offsets[:-1]
            tiles_per_expert = (counts + block_m - 1) // block_m
            tile_end = torch.cumsum(tiles_per_expert, 0)
            tile = torch.arange(num_tiles, device=counts.device)
            expert = torch.searchsorted(tile_end, tile, right=True)  # E for tiles past the last one
            known = expert.clamp(max=self.num_experts - 1)
            first_row = self.offsets[known] + (tile - (tile_end - tiles_per_expert)[known]) * block_m
            idle = expert == self.num_experts
            self._tiles[block_m] = (
                torch.where(idle, -1, expert).to(torch.int32),
                torch.where(idle, 0, first_row).to(torch.int32),
            )
        return self._tiles[block_m]


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
    flat = indices.flatten()
    slot = torch.argsort(flat, stable=True)
    # Not torch.bincount: on CUDA it reads the largest index back to the host, a sync per MoE layer and decode step
    # (the CPU then stops queueing kernels ahead of the GPU, and CUDA-graph capture fails).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device).index_add_(0, flat, torch.ones_like(flat))
    groups = ExpertGroups.from_counts(counts, flat.numel())
    return SortedTokens(token=slot // indices.shape[1], slot=slot, groups=groups)
