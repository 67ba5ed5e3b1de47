"""bench/mxfp4_tune.py's launches, small on the CPU: every kernel variant it sweeps runs with the arguments the
kernels take now and computes the product (session 18 changed the kernels' arguments and left the sweep broken, which
only a GPU call would have found)."""

import pytest
import torch
from benches import bench

from oss_grpo.kernels.mxfp4 import quantize
from oss_grpo.kernels.mxfp4_matmul import mxfp4_matmul_torch, mxfp4_matmul_transposed_torch, pad_scales
from oss_grpo.kernels.routing import ExpertGroups

mxfp4_tune = bench("mxfp4_tune")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # compiled on a GPU, interpreted without one


@pytest.mark.parametrize("words", [False, True], ids=["byte_scales", "word_scales"])
@pytest.mark.parametrize("kind", sorted(mxfp4_tune.CONFIGS))
def test_every_kind_of_the_sweep_launches_and_computes_the_product(kind: str, words: bool, monkeypatch) -> None:
    monkeypatch.setattr(mxfp4_tune, "N", 64)
    monkeypatch.setattr(mxfp4_tune, "K", 128)
    g = torch.Generator().manual_seed(0)
    pairs = [quantize(torch.randn(64, 128, generator=g)) for _ in range(2)]
    blocks, scales = torch.stack([b for b, _ in pairs]), torch.stack([s for _, s in pairs])
    blocks, scales = blocks.to(DEVICE), scales.to(DEVICE)
    groups = ExpertGroups.from_counts(torch.tensor([3, 5], device=DEVICE), 8)
    x, dy = (torch.randn(8, size, generator=g).bfloat16().to(DEVICE) for size in (128, 64))
    cfg = min(mxfp4_tune.CONFIGS[kind])  # the smallest tile of the kind
    out = mxfp4_tune.launcher(kind, cfg, x, dy, blocks.reshape(2, 64, 64), pad_scales(scales) if words else scales,
                              groups, words)()
    ref = (mxfp4_matmul_transposed_torch(dy.float(), blocks, scales, groups) if kind == "wxt"
           else mxfp4_matmul_torch(x.float(), blocks, scales, groups))  # fmt: skip
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 1e-2
