"""The policy: a gpt-oss model (tiny local or a checkpoint) and the LoRA adapters GRPO trains.

The reference policy for the KL term is this same model with its adapters disabled (TRL does that for PEFT
models), so no second copy of the weights is ever held. Attention is transformers' eager gpt-oss attention taken in
query chunks (rl/attention.py). A released gpt-oss checkpoint (experts stored MXFP4) loads through
rl/gpt_oss_loader.py with the experts kept MXFP4; a bf16 checkpoint loads through transformers and its experts are
quantised once (rl/moe.py). With `load_in_4bit` the attention projections are then stored in NF4 (rl/nf4.py),
whichever way the model was built; with `offload_embedding` the input embedding table moves to host RAM.
"""

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from oss_grpo.rl.attention import use_chunked_attention
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import CheckpointError, ConfigError
from oss_grpo.rl.gpt_oss_loader import is_mxfp4_checkpoint, load_mxfp4_gpt_oss
from oss_grpo.rl.host_embedding import offload_input_embedding
from oss_grpo.rl.moe import swap_experts
from oss_grpo.rl.moe_lora import with_expert_lora
from oss_grpo.rl.nf4 import quantize_linears, require_bitsandbytes
from oss_grpo.rl.tiny_model import build_tiny_model


def checkpoint_folder(model: str) -> Path:
    """A local folder as it is; a hub id is downloaded (config and safetensors only) into the hub cache."""
    if Path(model).is_dir():
        return Path(model)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def load_policy(config: TrainConfig) -> PreTrainedModel:
    """The base policy of `config`: MXFP4 experts if asked, NF4 attention if asked, no adapters yet."""
    if config.load_in_4bit:
        require_bitsandbytes("load_in_4bit=true")
    if config.optim == "adamw_8bit":
        require_bitsandbytes("optim=adamw_8bit")
    model = use_chunked_attention(_base_model(config))  # eager's values at a fraction of its prefill peak
    if config.offload_embedding:
        offload_input_embedding(model)
    return quantize_linears(model) if config.load_in_4bit else model


def _base_model(config: TrainConfig) -> PreTrainedModel:
    """The tiny model, a released (MXFP4) checkpoint or a bf16 one, everything but the experts in `config.dtype`."""
    dtype = getattr(torch, config.dtype)
    if config.model == "tiny":
        model = build_tiny_model(seed=config.seed, dtype=dtype, hidden_size=config.tiny_hidden_size,
                                 head_dim=config.tiny_head_dim)
        return swap_experts(model) if config.mxfp4_experts else model
    folder = checkpoint_folder(config.model)
    if is_mxfp4_checkpoint(folder):
        if not config.mxfp4_experts:
            raise ConfigError(f"mxfp4_experts=false: {config.model} stores MXFP4 experts, which we run as they are "
                              "(dequantising them to bf16 takes 4x the memory); set mxfp4_experts=true")
        use_gpu = config.device != "cpu" and torch.cuda.is_available()
        return load_mxfp4_gpt_oss(folder, dtype, device="cuda" if use_gpu else "cpu")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return swap_experts(model) if config.mxfp4_experts else model


def lora_config(config: TrainConfig) -> LoraConfig:
    """LoRA on `lora_target_modules`; naming "experts" there puts it on the MXFP4 experts too (rl/moe_lora.py)."""
    return with_expert_lora(LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                       target_modules=config.lora_target_modules, lora_dropout=0.0, bias="none",
                                       task_type="CAUSAL_LM"))


def load_policy_with_adapter(config: TrainConfig, folder: Path) -> PeftModel:
    """`config`'s base policy with the LoRA adapter saved in `folder` (a run's final/ or checkpoint-N/), expert LoRA
    included (PEFT needs our custom layer registered on the saved config to rebuild it)."""
    if not (Path(folder) / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder}: no adapter_config.json (expected a run's final/ or checkpoint-N/)")
    lora = with_expert_lora(LoraConfig.from_pretrained(str(folder)))
    return PeftModel.from_pretrained(load_policy(config), str(folder), config=lora).eval()
