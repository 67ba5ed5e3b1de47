"""The attention projections stored in NF4 through bitsandbytes (QLoRA's format), for `load_in_4bit: true`.

1. What is quantised: every `nn.Linear` of the decoder layers, which in gpt-oss are exactly the attention q/k/v/o
   projections (the router is its own module and the experts stay MXFP4, rl/moe.py). Not the LM head: TRL computes
   the log-probs of the GRPO ratio from `lm_head.weight` directly (its fused LM head), which a packed 4-bit weight is
   not, and the head's error would land straight in those log-probs. Not the embeddings (a lookup, not a matmul).
2. Format: NF4 in blocks of 64 with double quantisation (each block's absmax stored 8-bit, one fp32 per 256
   blocks): 4.127 bits a weight (rl/memory.py counts them). The matmul dequantises to the model's dtype (bf16 on
   GPUs, float32 on CPUs) and the bias stays in that dtype.
3. LoRA on these layers is PEFT's bitsandbytes layer: PEFT (and TRL) pick it because `model.is_loaded_in_4bit`
   is set, the flag transformers' own bitsandbytes loader sets.
4. Whoever needs the dense weight (weight sync to vLLM, the merged export) calls `dense_weight`: NF4 dequantised to
   the dtype it was quantised from; PEFT's own merge would re-quantise W + BA into NF4, which we never do. vLLM is
   sent every NF4 layer, LoRA or not (rl/weight_sync.py), since its copy may come from the unrounded checkpoint.
5. The LoRA factors stay float32 (`adapters_to_fp32`), where TRL would make them bf16.

bitsandbytes is imported only when a model is quantised or a weight dequantised.
"""

import importlib.util
import sys

import torch
from torch import nn
from transformers import GptOssForCausalLM

from oss_grpo.rl.errors import ConfigError


def require_bitsandbytes(setting: str) -> None:
    """Fail before any weight is loaded when `setting` (e.g. "load_in_4bit=true") needs bitsandbytes and it is missing
    (it is the `gpu` extra, not a dependency)."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{setting}: needs bitsandbytes (pip install 'oss-grpo[gpu]' or pip install bitsandbytes); "
                          "or change that setting")


def quantize_linears(model: GptOssForCausalLM) -> GptOssForCausalLM:
    """Replace every nn.Linear of `model`'s decoder layers by an NF4 `bitsandbytes.nn.Linear4bit`, quantised on the
    device its weight is on, in place; returns the model."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for name, linear in list(layer.named_modules()):
            if type(linear) is not nn.Linear:
                continue
            nf4 = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    compute_dtype=linear.weight.dtype, compress_statistics=True, quant_type="nf4",
                                    device="meta")
            nf4.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, compress_statistics=True,
                                           quant_type="nf4", module=nf4).to(linear.weight.device)
            nf4.bias = linear.bias
            # On CPUs with AVX512-BF16, bitsandbytes repacks the weight for inference at the first no-grad forward,
            # with bf16 block scales: sampling would then run another function than the training forward scores.
            nf4.support_avx512bf16_for_cpu = False
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, nf4)
    model.is_loaded_in_4bit = True
    return model


def dense_weight(linear: nn.Linear) -> torch.Tensor:
    """`linear`'s weight `[out, in]`: as it is, or for an NF4 layer dequantised to the dtype it was quantised from."""
    state = getattr(linear.weight, "quant_state", None)  # a bitsandbytes Params4bit carries its block scales there
    if state is None:
        return linear.weight.detach()
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(linear.weight.data, state)  # (detach() would drop the quant_state)


def nf4_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Each NF4 linear of `model` by its name in a checkpoint (PEFT's `.base_layer` left out, so the name is that of
    the LoRA layer around it, if any); none while bitsandbytes has not been imported, as then none can exist."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return {}
    return {name.removesuffix(".base_layer"): module for name, module in model.named_modules()
            if isinstance(module, bnb.nn.Linear4bit)}  # PEFT's LoRA layer around one is not a subclass


def adapters_to_fp32(model: nn.Module) -> None:
    """Put every trainable parameter (the LoRA factors) back in float32, as PEFT makes them for unquantised models.

    TRL casts them to bf16 for 4-bit models (the QLoRA paper's choice), where AdamW's steps are lost: a step of
    ~lr = 5e-5 on a LoRA A entry of ~0.02 is below half of bf16's spacing there (1.2e-4), so A would never move.
    The memory estimate counts fp32 adapters.
    """
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
