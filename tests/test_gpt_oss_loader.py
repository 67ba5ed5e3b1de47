"""Loading a gpt-oss checkpoint in the released on-disk layout keeps the experts MXFP4 end to end.

The checkpoint is written here exactly as the released gpt-oss folders are: bf16 tensors plus uint8 `*_blocks`
[E, N, K/32, 16] and `*_scales` [E, N, K/32] for the experts, sharded, with `model.safetensors.index.json` and a
config.json carrying `quantization_config: {quant_method: mxfp4}`.
"""

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GptOssForCausalLM

from oss_grpo.kernels.mxfp4 import MAX_SCALE, dequantize
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import CheckpointError
from oss_grpo.rl.gpt_oss_loader import is_mxfp4_checkpoint, load_mxfp4_gpt_oss, save_mxfp4_gpt_oss
from oss_grpo.rl.moe import PROJECTIONS, Mxfp4Experts, swap_experts
from oss_grpo.rl.policy import load_policy
from oss_grpo.rl.tiny_model import build_tiny_model

# Experts larger than any other tensor (8 experts of 64 x 64 and more against a 256 x 64 embedding), so that a
# dequantised expert stack would be the largest float tensor the load ever makes.
SHAPE = dict(vocab_size=256, num_local_experts=8)
IDS = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, GptOssForCausalLM]:
    source = swap_experts(build_tiny_model(seed=0, dtype=torch.bfloat16, **SHAPE))
    folder = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    shards = save_mxfp4_gpt_oss(source, folder, shard_bytes=2**16)  # several shards, the first without experts
    assert len(shards) > 2 and json.loads((folder / "config.json").read_text())["quantization_config"]
    return folder, source


def test_every_tensor_lands_as_stored(checkpoint) -> None:
    folder, source = checkpoint
    assert is_mxfp4_checkpoint(folder)
    model = load_mxfp4_gpt_oss(folder, torch.bfloat16)
    experts = model.model.layers[1].mlp.experts
    assert isinstance(experts, Mxfp4Experts) and experts.gate_up_proj_blocks.dtype == torch.uint8
    assert not hasattr(model.config, "quantization_config")
    loaded, expected = model.state_dict(), source.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    freq = model.model.rotary_emb.inv_freq
    assert freq.dtype == torch.float32 and not freq.is_meta


def test_logits_equal_transformers_on_the_dequantised_experts(checkpoint) -> None:
    folder, _ = checkpoint
    model = load_mxfp4_gpt_oss(folder, torch.float32)
    reference = build_tiny_model(seed=0, **SHAPE)
    dense = {name: t for name, t in model.state_dict().items() if not name.endswith(("_blocks", "_scales"))}
    reference.load_state_dict(dense, strict=False)
    for ours, theirs in zip(model.model.layers, reference.model.layers):
        for proj in PROJECTIONS:
            w = dequantize(getattr(ours.mlp.experts, f"{proj}_blocks"), getattr(ours.mlp.experts, f"{proj}_scales"))
            getattr(theirs.mlp.experts, proj).data = w.float().transpose(1, 2).contiguous()  # HF keeps [E, in, out]
    with torch.no_grad():
        logits, expected = model(IDS).logits, reference(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()


class LargestFloatTensor(TorchDispatchMode):
    """Records the element count of the largest floating-point tensor any torch op produces (meta tensors, which
    hold no memory, aside)."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta:
                self.largest = max(self.largest, t.numel())
        return out


def test_loading_never_makes_a_float_expert_stack(checkpoint) -> None:
    folder, source = checkpoint
    experts = source.model.layers[0].mlp.experts
    smallest_stack = min(getattr(experts, f"{proj}_scales").numel() * 32 for proj in PROJECTIONS)  # E * N * K
    with LargestFloatTensor() as watch:
        load_mxfp4_gpt_oss(folder, torch.float32)
    assert 0 < watch.largest < smallest_stack


def test_policy_loads_a_checkpoint_folder(checkpoint) -> None:
    folder, source = checkpoint
    model = load_policy(TrainConfig(model=str(folder), dtype="bfloat16", device="cpu"))
    ours, theirs = model.model.layers[0].mlp.experts, source.model.layers[0].mlp.experts
    assert torch.equal(ours.down_proj_blocks, theirs.down_proj_blocks)


def test_nf4_policy_from_a_checkpoint_quantises_attention_only(checkpoint) -> None:
    """load_in_4bit on the released-layout path: attention in NF4, experts as stored, within NF4's error."""
    bnb = pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes (the gpu extra; CI has it)")
    folder, source = checkpoint
    model = load_policy(TrainConfig(model=str(folder), load_in_4bit=True, device="cpu"))
    layer = model.model.layers[1]
    assert all(isinstance(getattr(layer.self_attn, p), bnb.nn.Linear4bit) for p in ("q_proj", "k_proj", "v_proj",
                                                                                       "o_proj"))
    assert torch.equal(layer.mlp.experts.down_proj_blocks, source.model.layers[1].mlp.experts.down_proj_blocks)
    with torch.no_grad():
        logits, expected = model(IDS).logits, load_mxfp4_gpt_oss(folder, torch.float32)(IDS).logits
    assert 0 < (logits - expected).pow(2).mean() < 0.2**2 * expected.pow(2).mean()  # as tests/test_nf4.py bounds it


def test_missing_and_unexpected_tensors_are_named(checkpoint, tmp_path) -> None:
    folder, source = checkpoint
    broken = swap_experts(build_tiny_model(seed=0, dtype=torch.bfloat16, **SHAPE))
    del broken.model.layers[1].self_attn.sinks
    save_mxfp4_gpt_oss(broken, tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.sinks"):
        load_mxfp4_gpt_oss(tmp_path / "missing", torch.float32)
    broken.model.layers[1].self_attn.register_buffer("extra", torch.zeros(2))
    broken.model.layers[1].self_attn.sinks = torch.nn.Parameter(torch.zeros(4))
    save_mxfp4_gpt_oss(broken, tmp_path / "unexpected")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.extra"):
        load_mxfp4_gpt_oss(tmp_path / "unexpected", torch.float32)


def test_scales_beyond_what_the_kernels_decode_are_named(tmp_path) -> None:
    """A scale above MAX_SCALE would decode as infinity: the loader refuses the checkpoint naming the tensor, and
    Mxfp4Experts built from such tensors refuses them too."""
    broken = swap_experts(build_tiny_model(seed=0, dtype=torch.bfloat16, **SHAPE))
    experts = broken.model.layers[1].mlp.experts
    experts.down_proj_scales[0, 0, 0] = MAX_SCALE + 1
    save_mxfp4_gpt_oss(broken, tmp_path / "huge")
    name = r"layers\.1\.mlp\.experts\.down_proj_scales"
    with pytest.raises(CheckpointError, match=rf"{name}: MXFP4 scale {MAX_SCALE + 1}"):
        load_mxfp4_gpt_oss(tmp_path / "huge", torch.float32)
    scales = {proj: getattr(experts, f"{proj}_scales") for proj in PROJECTIONS}
    blocks = {proj: getattr(experts, f"{proj}_blocks") for proj in PROJECTIONS}
    biases = {proj: getattr(experts, f"{proj}_bias") for proj in PROJECTIONS}
    with pytest.raises(ValueError, match="down_proj_scales"):
        Mxfp4Experts(blocks, scales, biases, experts.alpha, experts.limit)
