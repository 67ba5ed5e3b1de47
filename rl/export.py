"""`oss-grpo export RUN_DIR --merged OUT` / `--adapter OUT`: the trained policy as files other tools load.

--merged writes a plain Hugging Face gpt-oss checkpoint (bf16 by default) that transformers loads without oss_grpo
(and vLLM with its usual loader): attention LoRA merged by PEFT, and the expert LoRA folded into the experts, which
are dequantised expert by expert, W_e + scaling B_e A_e, and stored [E, in, out] as transformers' `GptOssExperts`
keeps them. The expert LoRA cannot be merged in place: the experts are MXFP4 and a merge would re-quantise them
(Mxfp4ExpertsLora.merge refuses), which is why a silent PEFT `merge_and_unload` would drop it; here it never is.
One shard per decoder layer, so the extra memory is one layer's dequantised experts. NF4 attention projections
(`load_in_4bit`) are dequantised and their LoRA added in their dtype, never re-quantised as PEFT's merge would.

--adapter writes the PEFT adapter alone (attention and expert factors). Loading expert factors needs oss_grpo's
expert LoRA layer (`load_trained_policy` registers it).
"""

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.rl.config import load_config
from oss_grpo.rl.errors import CheckpointError
from oss_grpo.rl.moe import PROJECTIONS, Mxfp4Experts
from oss_grpo.rl.moe_lora import Mxfp4ExpertsLora
from oss_grpo.rl.nf4 import nf4_linears
from oss_grpo.rl.policy import load_policy_with_adapter
from oss_grpo.rl.weight_sync import base_linear, merged_weight

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_folder(run_dir: Path) -> Path:
    """The adapter a run finished with (`final/`)."""
    folder = Path(run_dir) / "final"
    if not (folder / ADAPTER_FILES[0]).exists():
        raise CheckpointError(f"{folder}: no {ADAPTER_FILES[0]}; is {run_dir} a finished `oss-grpo train` run folder?")
    return folder


def load_trained_policy(run_dir: Path) -> PeftModel:
    """The run's base policy (its config.yaml) with the trained adapter on, expert LoRA included."""
    config = load_config(str(Path(run_dir) / "config.yaml"), [])
    return load_policy_with_adapter(config, adapter_folder(run_dir))


def expert_weights(experts: Mxfp4Experts, lora: Mxfp4ExpertsLora | None, proj: str, dtype: torch.dtype) -> torch.Tensor:
    """`[E, in, out]` in `dtype`: each W_e dequantised (plus its LoRA delta) one expert at a time."""
    blocks, scales = getattr(experts, f"{proj}_blocks"), getattr(experts, f"{proj}_scales")
    num_experts, n, k_blocks = scales.shape
    out = torch.empty(num_experts, k_blocks * 32, n, dtype=dtype, device=blocks.device)
    for e in range(num_experts):
        w = dequantize(blocks[e], scales[e], torch.float32)  # (N, K)
        if lora is not None:
            w += lora.delta_weight(lora.active_adapters[0], proj, e).float()
        out[e] = w.T.to(dtype)
    return out


def _unwrap_expert_lora(model: PeftModel) -> dict[int, Mxfp4ExpertsLora]:
    """Put each Mxfp4ExpertsLora's base layer back in its place; returns {id(base layer): lora layer}."""
    found = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, Mxfp4ExpertsLora):
            parent, child = name.rsplit(".", 1)
            base = module.get_base_layer()
            setattr(model.get_submodule(parent), child, base)
            found[id(base)] = module
    return found


def _merge_nf4_linears(model: PeftModel) -> None:
    """Put in place of each NF4 linear (with its LoRA layer, if any) a dense nn.Linear of W + the adapters' delta."""
    for name in nf4_linears(model):
        module = model.get_submodule(name)
        linear = base_linear(module)
        dense = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        dense.weight = nn.Parameter(merged_weight(module), requires_grad=False)
        dense.bias = linear.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, dense)


def export_merged(model: PeftModel, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Write `model` (consumed: its weights are merged in place) as a bf16/float32 Hugging Face checkpoint."""
    expert_lora = _unwrap_expert_lora(model)
    _merge_nf4_linears(model)
    base = model.merge_and_unload()  # attention (and any other nn.Linear) LoRA merged by PEFT
    out.mkdir(parents=True, exist_ok=True)
    state = {name: t for name, t in base.state_dict().items() if not name.endswith(("_blocks", "_scales"))}
    experts = {name: m for name, m in base.named_modules() if isinstance(m, Mxfp4Experts)}
    layers = [f"model.layers.{i}." for i in range(len(base.model.layers))]
    shards = [(p, sorted(n for n in state if n.startswith(p))) for p in layers]
    shards.append(("", sorted(n for n in state if not n.startswith("model.layers."))))
    weight_map = {}
    for i, (prefix, names) in enumerate(shards):
        tensors = {name: state[name].to(dtype) if state[name].is_floating_point() else state[name] for name in names}
        for name, module in experts.items():
            if name.startswith(prefix) and prefix:
                for proj in PROJECTIONS:
                    tensors[f"{name}.{proj}"] = expert_weights(module, expert_lora.get(id(module)), proj, dtype)
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: t.contiguous().cpu() for n, t in tensors.items()}, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    base.config.dtype = dtype
    base.config.save_pretrained(out)


def copy_tokenizer(run_dir: Path, out: Path) -> None:
    """The Harmony tokenizer files `oss-grpo train` saved beside the adapter, so OUT is self-contained."""
    for file in adapter_folder(run_dir).iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(file, out / file.name)


def export(run_dir: Path, merged: Path | None, adapter: Path | None, dtype: torch.dtype) -> None:
    """What `oss-grpo export` runs: either or both outputs, each with the tokenizer."""
    if adapter is not None:
        export_adapter(run_dir, adapter)
        copy_tokenizer(run_dir, adapter)
    if merged is not None:
        export_merged(load_trained_policy(run_dir), merged, dtype)
        copy_tokenizer(run_dir, merged)


def export_adapter(run_dir: Path, out: Path) -> None:
    """Copy the run's final adapter (attention and expert LoRA factors, PEFT format)."""
    folder = adapter_folder(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        shutil.copy2(folder / name, out / name)
