"""What a separate rollout engine gets from the trainer: a checkpoint once, then only the LoRA-adapted layers.

The policy is frozen weights plus LoRA adapters, so after an optimizer step only the adapted modules differ. We send
their merged weights, W + scaling * B A, under Hugging Face checkpoint names (vLLM's loader maps and fuses them);
NF4 weights (`load_in_4bit`, rl/nf4.py) are dequantised first, as vLLM holds its own dense copy;
embeddings, norms, router and the MXFP4 experts are never sent again. Two rules come from vLLM's in-place reload,
which rebuilds a layer whole from what it receives: a layer's bias goes along with its weight, and q/k/v go together
because vLLM fuses them into one `qkv_proj`. The colocated engine gets the merged weights (`adapted_tensors`); a
vLLM server gets only the LoRA factors (`lora_factors`: 1/30 of the bytes for gpt-oss-20b at r16, docs/BENCHMARKS.md)
and merges them into its own copy of the base weights (rl/lora_merge_worker.py), so the same layers are rebuilt
either way.

`attach` plugs the sync into TRL's GRPOTrainer at the place it already syncs its own vLLM (once before the first
rollout of each new step), which also turns on TRL's vLLM importance-sampling correction: it reweights tokens by
trainer/sampler probability ratios from the logprobs our rollout returns.
"""

import time
from pathlib import Path
from typing import Any

import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from torch import nn

from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.generator import SyncedGenerator
from oss_grpo.rl.moe import PROJECTIONS, Mxfp4Experts
from oss_grpo.rl.moe_lora import Mxfp4ExpertsLora
from oss_grpo.rl.nf4 import dense_weight, nf4_linears

FUSED = ("q_proj", "k_proj", "v_proj")
"""Attention projections that vLLM stores as one fused `qkv_proj`: reloading one of them reloads all three."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers still in place), named as in a checkpoint."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_linear(module: nn.Module) -> nn.Module:
    """The linear under PEFT's LoRA layer, or `module` itself when it has no adapter."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def merged_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight `module` computes with: W + the delta of each active adapter of a LoRA layer, in W's dtype
    (the merge PEFT would do, without touching the layer), or a plain linear's W; an NF4 W is dequantised, where
    PEFT would re-quantise the sum."""
    weight = dense_weight(base_linear(module))
    for name in module.active_adapters if isinstance(module, LoraLayer) else ():
        if name in module.lora_A:
            weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight


def adapted_modules(model: nn.Module) -> list[str]:
    """Checkpoint names of the linears a sync must send: every LoRA layer, plus the q/k/v siblings of a fused one.
    NF4 linears count as changed, with or without LoRA: a released checkpoint gives vLLM their unrounded weights."""
    base = _unwrap(model)
    changed = list(nf4_linears(base))
    for name, module in base.named_modules():
        if isinstance(module, Mxfp4ExpertsLora):
            raise ConfigError(f"lora_target_modules names the MXFP4 experts ({name}): the vLLM generator cannot "
                              "sync them (vLLM's fused MoE has no LoRA); use generator: transformers")
        if isinstance(module, LoraLayer):
            changed.append(name)
    modules = set()
    for name in changed:
        parent, _, leaf = name.rpartition(".")
        modules.update(f"{parent}.{p}" for p in FUSED) if leaf in FUSED else modules.add(name)
    return sorted(modules)


def adapted_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint name -> tensor for every layer `adapted_modules` names: merged weights, their biases."""
    base = _unwrap(model)
    tensors = {}
    for name in adapted_modules(model):
        module = base.get_submodule(name)
        linear = base_linear(module)
        tensors[f"{name}.weight"] = merged_weight(module)
        if linear.bias is not None:
            tensors[f"{name}.bias"] = linear.bias.detach()
    return tensors


def lora_factors(model: nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    """What a remote engine needs to rebuild `adapted_tensors` from base weights it holds: the module names, and
    `{name}.lora_A` (r, in) / `{name}.lora_B` (out, r) per LoRA layer, such that W = W_base + lora_B @ lora_A.

    The scaling is folded into B, and several active adapters are stacked along r (B1 A1 + B2 A2 = [B1 B2] [A1; A2]),
    so the receiver does one matmul per layer. Plain LoRA only (PEFT's default, what lora_config builds).
    """
    base, factors = _unwrap(model), {}
    modules = adapted_modules(model)
    for name in modules:
        layer = base.get_submodule(name)
        if not isinstance(layer, LoraLayer):
            continue  # a fused sibling without LoRA: the receiver reloads its base weight
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        factors[f"{name}.lora_A"] = torch.cat([layer.lora_A[a].weight.detach() for a in active]).contiguous()
        factors[f"{name}.lora_B"] = torch.cat(
            [layer.lora_B[a].weight.detach() * layer.scaling[a] for a in active], dim=1).contiguous()
    return modules, factors


def nf4_base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{module}.weight` -> the dequantised weight of each NF4 linear (without its LoRA): the base a remote engine
    must merge into, as the policy computes with these and not with the checkpoint's unrounded weights."""
    return {f"{name}.weight": dense_weight(linear) for name, linear in nf4_linears(_unwrap(model)).items()}


def checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole policy as a dense Hugging Face checkpoint: MXFP4 experts and NF4 linears dequantised, adapters
    merged."""
    base = _unwrap(model)
    tensors = {}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        tensors[name.replace(".base_layer.", ".")] = tensor.detach()
    for name, linear in nf4_linears(base).items():  # packed codes and block scales -> the weight they encode
        for key in [k for k in tensors if k.startswith(f"{name}.weight.")]:
            del tensors[key]
        tensors[f"{name}.weight"] = dense_weight(linear)
    for name, module in base.named_modules():
        if isinstance(module, Mxfp4Experts):
            name = name.removesuffix(".base_layer")
            dtype = module.down_proj_bias.dtype
            for proj in PROJECTIONS:
                blocks = tensors.pop(f"{name}.{proj}_blocks")
                w = dequantize(blocks, tensors.pop(f"{name}.{proj}_scales"), dtype)  # (E, out, in)
                tensors[f"{name}.{proj}"] = w.transpose(1, 2)  # transformers' layout: (E, in, out)
    tensors.update(adapted_tensors(model))
    return {name: t.contiguous() for name, t in tensors.items()}


def save_checkpoint(model: nn.Module, folder: Path) -> Path:
    """Write `checkpoint_tensors(model)` and the model config to `folder` (what vLLM loads); returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _unwrap(model)
    base.config.architectures = [type(base).__name__]  # as save_pretrained does; vLLM picks its model class by it
    base.config.save_pretrained(folder)
    save_file(checkpoint_tensors(model), folder / "model.safetensors")
    return folder


class WeightSync:
    """Sits where TRL keeps its own vLLM client (`trainer.vllm_generation`): TRL calls `sync_weights` once per step."""

    def __init__(self, trainer: Any, generator: SyncedGenerator) -> None:
        self.trainer, self.generator = trainer, generator

    def sync_weights(self) -> None:
        start = time.perf_counter()
        sent = self.generator.sync_from(self.trainer.model)
        self.trainer._log_metric("sync/seconds", time.perf_counter() - start)
        for key, value in sent.items():
            self.trainer._log_metric(f"sync/{key}", value)


class NoSync:
    """For a sampler that reads the policy's own weights (the compiled transformers generator): nothing to send."""

    def sync_weights(self) -> None:
        pass


def attach(trainer: Any, generator: SyncedGenerator | None, constrained: bool, loaded: bool = True) -> None:
    """Make `trainer` (TRL GRPOTrainer) sync `generator` after every optimizer step and correct for its sampling;
    `generator` None: a sampler that reads the policy's own weights but computes other numbers (compiled), which
    needs the correction only.

    TRL has no public hook for an outside generator; these are the attributes its own vLLM path sets up. With
    `constrained` decoding the sampler's distribution is the policy renormalised over the allowed answers, which TRL's
    recomputed logprobs do not know: the correction would then down-weight every sample, so it stays off, exactly as
    with the eager transformers backend.
    """
    trainer.use_vllm = True
    trainer.vllm_importance_sampling_correction = trainer.vllm_importance_sampling_correction and not constrained
    trainer.vllm_generation = NoSync() if generator is None else WeightSync(trainer, generator)
    # `loaded`: the engine was built from the current weights (colocated; or from the released checkpoint, which equals
    # the policy while its adapters are zero), so TRL's first sync is skipped; a server may hold another run's weights,
    # and NF4 layers differ from the checkpoint's, so those are synced before the first rollout (-1 is never a step).
    synced = loaded and not nf4_linears(trainer.model)
    trainer._last_loaded_step = trainer.state.global_step if synced else -1
