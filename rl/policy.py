"""The policy: a gpt-oss model (tiny local or a checkpoint) and the LoRA adapters GRPO trains.

The reference policy for the KL term is this same model with its adapters disabled (TRL does that for PEFT
models), so no second copy of the weights is ever held.
"""

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, PreTrainedModel

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.moe import swap_experts
from oss_grpo.rl.tiny_model import build_tiny_model


def load_policy(config: TrainConfig) -> PreTrainedModel:
    dtype = getattr(torch, config.dtype)
    if config.model == "tiny":
        model = build_tiny_model(seed=config.seed, dtype=dtype, hidden_size=config.tiny_hidden_size,
                                 head_dim=config.tiny_head_dim)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=dtype)
    return swap_experts(model) if config.mxfp4_experts else model


def lora_config(config: TrainConfig) -> LoraConfig:
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_target_modules,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
