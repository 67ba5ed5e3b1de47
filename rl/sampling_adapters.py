"""Rollouts run the LoRA factors in the model's dtype; training keeps them float32.

The factors are float32 so that AdamW's small steps are not lost (rl/nf4.py, `adapters_to_fp32`). PEFT then casts
each attention projection's input to float32 and runs x A^T and (x A^T) B^T as float32 GEMMs. Sampling does not
need that: at a batch-32 decode step of gpt-oss-20b on an H100 those are 8 float32 GEMMs a layer (192 a token, with
their split-K reductions), and sampling with bf16 copies decodes 1.09x faster (20.7 -> 19.1 ms a token, compiled,
docs/BENCHMARKS.md). vLLM samples with bf16 LoRA too, and the trainer scores every sampled token with its own
forward, so the rounding of the factors (bf16: 2^-9 relative) only moves the sampling distribution as much as vLLM's
does.

`adapters_in_model_dtype(model)` is a context in which every trainable float parameter of an `nn.Linear` (PEFT's
LoRA factors on attention) holds a copy of its float32 values in the model's dtype, refreshed from the float32
masters on entry; on exit the masters are back, untouched. Each copy is one buffer kept for the model's lifetime, so a
compiled decode finds its parameters at the same addresses on every call (its CUDA graphs hold those addresses). The
experts' LoRA factors (rl/moe_lora.py) are left in float32: our grouped kernels round them to bf16 as they load them,
so they run no float32 GEMM, and bf16 copies of them would hold 354 MB more on gpt-oss-20b at rank 16. A float32
model (CPU) is left as it is.
"""

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_COPIES: "weakref.WeakKeyDictionary[nn.Module, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()


def compute_dtype(model: nn.Module) -> torch.dtype:
    """`model`'s compute dtype: that of its output embedding."""
    return model.get_output_embeddings().weight.dtype


def _other_dtype(model: nn.Module, dtype: torch.dtype) -> dict[str, nn.Parameter]:
    """The trainable float parameters of `model`'s `nn.Linear`s whose dtype is not `dtype`."""
    return {f"{module_name}.{name}": p for module_name, module in model.named_modules() if isinstance(module, nn.Linear)
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad and p.is_floating_point() and p.dtype != dtype}


def samples_other_numbers(model: nn.Module) -> bool:
    """Whether `adapters_in_model_dtype` changes `model`'s LoRA factors: its rollouts then sample from slightly other
    numbers than the training forward computes, which TRL's importance-sampling correction accounts for."""
    return bool(_other_dtype(model, compute_dtype(model)))


@contextmanager
def adapters_in_model_dtype(model: nn.Module) -> Iterator[None]:
    """Within: the trainable float parameters of `model`'s `nn.Linear`s hold copies in the dtype of its output
    embedding (its compute dtype). No gradient may be taken within (the copies are not what the optimizer steps)."""
    dtype = compute_dtype(model)
    copies = _COPIES.setdefault(model, {})
    masters: dict[str, torch.Tensor] = {}
    params = _other_dtype(model, dtype)
    try:
        with torch.no_grad():
            for name, param in params.items():
                copy = copies.get(name)
                if copy is None or copy.shape != param.shape or copy.device != param.device:
                    copy = copies[name] = torch.empty_like(param, dtype=dtype)
                copy.copy_(param)
                masters[name] = param.data
                param.data = copy
        yield
    finally:
        for name, master in masters.items():
            params[name].data = master
