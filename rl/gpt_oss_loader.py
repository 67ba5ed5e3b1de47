"""Load a gpt-oss checkpoint in Hugging Face layout with its MoE experts kept in MXFP4: no bf16 expert ever exists.

transformers' own loader either needs the kernel hub's `triton_kernels` for MXFP4 or dequantises every expert to bf16
(39 GB for gpt-oss-20b, where the MXFP4 experts take 12 GB). This one:

1. builds `GptOssForCausalLM` on the meta device (no memory), with `Fp32Router`s and `Mxfp4Experts` whose uint8
   buffers take their shapes from the safetensors headers;
2. allocates every tensor once on the target device (`to_empty`): experts as uint8, the rest in `dtype`;
3. streams the checkpoint tensor by tensor from the memory-mapped shards into place (float tensors cast to `dtype`,
   `*_blocks`/`*_scales` copied as bytes), so the extra memory is one tensor at a time;
4. recomputes the rotary frequencies, the only non-persistent buffers.

A tensor missing from the checkpoint, or one the model has no place for, is a CheckpointError naming it.
"""

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, GptOssConfig, GptOssForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

from oss_grpo.rl.errors import CheckpointError
from oss_grpo.rl.moe import PROJECTIONS, Fp32Router, Mxfp4Experts


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors shards of a checkpoint folder: those its index names, else every `*.safetensors` there."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files (a gpt-oss checkpoint in Hugging Face layout)")
    return files


def is_mxfp4_checkpoint(path: Path) -> bool:
    """True when the checkpoint stores its experts as `*_blocks`/`*_scales` (the released gpt-oss models do)."""
    with safe_open(checkpoint_files(path)[0], framework="pt") as shard:
        return any(name.endswith("_blocks") for name in shard.keys())


def _shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in files:
        with safe_open(file, framework="pt") as shard:
            shapes.update({name: tuple(shard.get_slice(name).get_shape()) for name in shard.keys()})
    return shapes


def _tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of every shard, read one at a time from the memory map."""
    with ExitStack() as stack:
        for file in files:
            shard = stack.enter_context(safe_open(file, framework="pt"))
            for name in shard.keys():
                yield name, shard.get_tensor(name)


def meta_model(config: GptOssConfig, shapes: dict[str, tuple[int, ...]]) -> GptOssForCausalLM:
    """The model on the meta device with fp32 routers and MXFP4 experts shaped like the checkpoint's tensors."""
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
        for i, layer in enumerate(model.model.layers):
            prefix = f"model.layers.{i}.mlp.experts."
            old = layer.mlp.experts
            tensors = {}
            for kind in ("blocks", "scales"):
                for proj in PROJECTIONS:
                    name = f"{prefix}{proj}_{kind}"
                    if name not in shapes:
                        raise CheckpointError(f"{name}: missing from the checkpoint (expected MXFP4 experts)")
                    tensors.setdefault(kind, {})[proj] = torch.empty(shapes[name], dtype=torch.uint8)
            biases = {proj: getattr(old, f"{proj}_bias") for proj in PROJECTIONS}
            layer.mlp.experts = Mxfp4Experts(tensors["blocks"], tensors["scales"], biases, old.alpha, old.limit)
            layer.mlp.router = Fp32Router(config)
    return model


def allocate(model: GptOssForCausalLM, dtype: torch.dtype, device: str | torch.device) -> GptOssForCausalLM:
    """Give a gpt-oss built on the meta device uninitialised storage on `device`, in place; returns it.

    Float tensors take `dtype`, the uint8 MXFP4 buffers stay uint8; the rotary frequencies (the only non-persistent
    buffers, which `to_empty` leaves as garbage) are recomputed. The caller fills every other tensor.
    """
    model.to(dtype)  # the float tensors' dtype, still on meta: the uint8 buffers are not floating point
    model.to_empty(device=device)
    model.model.rotary_emb = GptOssRotaryEmbedding(model.config).to(device)
    return model


def load_mxfp4_gpt_oss(path: str | Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> GptOssForCausalLM:
    """gpt-oss from a checkpoint folder with `*_blocks`/`*_scales` experts, experts as MXFP4, the rest in `dtype`."""
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, GptOssConfig):
        raise CheckpointError(f"{path}: model_type {config.model_type!r} is not gpt_oss")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # describes the on-disk experts, which we run as they are
    files = checkpoint_files(path)
    model = allocate(meta_model(config, _shapes(files)), dtype, device)
    targets = model.state_dict(keep_vars=True)  # tied weights appear under both names, one object
    for name, tensor in _tensors(files):
        if name not in targets:
            raise CheckpointError(f"{name}: in {path} but not a tensor of GptOssForCausalLM with MXFP4 experts")
        target = targets.pop(name)
        if target.shape != tensor.shape:
            raise CheckpointError(f"{name}: shape {tuple(tensor.shape)} in {path}, model expects {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(tensor)
        targets = {other: t for other, t in targets.items() if t is not target}
    if targets:
        raise CheckpointError(f"{path}: no tensor for {', '.join(sorted(targets)[:5])} ({len(targets)} missing)")
    return model.eval()
