"""Load a gpt-oss checkpoint in Hugging Face layout with its MoE experts kept in MXFP4: no bf16 expert ever exists.

transformers' own loader either needs the kernel hub's `triton_kernels` for MXFP4 or dequantises every expert to bf16
(39 GB for gpt-oss-20b, where the MXFP4 experts take 12 GB). This one:

1. builds `GptOssForCausalLM` on the meta device (no memory), with `Fp32Router`s and `Mxfp4Experts` whose uint8
   buffers take their shapes from the safetensors headers;
2. allocates every tensor once on the target device (`to_empty`): experts as uint8, the rest in `dtype`;
3. streams the checkpoint tensor by tensor from the memory-mapped shards into place (float tensors cast to `dtype`,
   `*_blocks`/`*_scales` copied as bytes), so the extra memory is one tensor at a time;
4. recomputes the rotary frequencies, the only non-persistent buffers.

A tensor missing from the checkpoint, one the model has no place for, or expert scales beyond what the kernels decode
(mxfp4.check_scales) is a CheckpointError naming it.
`save_mxfp4_gpt_oss` writes that layout back (a quantised bf16 model saved once loads in seconds next time; the GPU
benches write random gpt-oss-20b-shaped checkpoints with it).
"""

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, GptOssConfig, GptOssForCausalLM
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

from oss_grpo.kernels.mxfp4 import check_scales
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
    """True when the checkpoint stores its experts as `*_blocks`/`*_scales` (the released gpt-oss models do), in any
    shard (the first may hold only the embedding)."""
    return any(name.endswith("_blocks") for name in _shapes(checkpoint_files(path)))


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
        if name.endswith("_scales"):
            try:
                check_scales(f"{path}: {name}", target)
            except ValueError as error:
                raise CheckpointError(str(error)) from None
        targets = {other: t for other, t in targets.items() if t is not target}
    if targets:
        raise CheckpointError(f"{path}: no tensor for {', '.join(sorted(targets)[:5])} ({len(targets)} missing)")
    return model.eval()


def save_mxfp4_gpt_oss(model: GptOssForCausalLM, path: str | Path, shard_bytes: int = 5 * 2**30) -> list[Path]:
    """Write `model` (with `Mxfp4Experts`) in the released layout: float tensors bf16, experts as their uint8
    `*_blocks`/`*_scales`, shards of at most `shard_bytes` (a larger tensor gets one alone) with
    `model.safetensors.index.json`, and config.json marked `quant_method: mxfp4` as the released folders are.
    Tensors are copied to host memory one shard at a time. Returns the shard paths."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[list[str]] = [[]]
    size = 0
    state = model.state_dict()  # tied weights appear under both names; the released checkpoints tie none
    for name, tensor in state.items():
        nbytes = tensor.numel() * (1 if tensor.dtype == torch.uint8 else 2)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    for file, names in zip(files, shards):
        tensors = {n: (state[n] if state[n].dtype == torch.uint8 else state[n].to(torch.bfloat16)).contiguous().cpu()
                   for n in names}
        save_file(tensors, str(path / file), metadata={"format": "pt"})
    weight_map = {name: file for file, names in zip(files, shards) for name in names}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return [path / file for file in files]
