"""Bytes one weight sync sends, per backend, for the released gpt-oss shapes and the tiny default.

    python bench/sync_payload.py [--lora-r 16]

The model is built on the meta device (shapes only, no weights, seconds on a CPU) with PEFT LoRA on the default
`lora_target_modules`; the sizes are those of what rl/weight_sync.py would send: the colocated engine gets the
merged weights of every adapted layer in the model's dtype (`adapted_tensors`), a vLLM server gets the LoRA factors
(`lora_factors`, the adapters' fp32) as base64 in a JSON body. Prints a markdown table.
"""

import argparse

import torch
from peft import get_peft_model
from transformers import GptOssConfig, GptOssForCausalLM

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.memory import RELEASED, model_shape
from oss_grpo.rl.policy import lora_config
from oss_grpo.rl.weight_sync import adapted_tensors, lora_factors


def megabytes(tensors: dict[str, torch.Tensor]) -> float:
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6


def payloads(name: str, config: TrainConfig, dtype: torch.dtype) -> tuple[float, float]:
    """(merged MB, LoRA-factor MB on the wire) for the model `name` under `config`'s LoRA."""
    s = RELEASED.get(name) or model_shape(config)
    hf = GptOssConfig(vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
                      num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
                      num_key_value_heads=s.num_key_value_heads, head_dim=s.head_dim,
                      num_local_experts=s.num_local_experts, num_experts_per_tok=s.num_experts_per_tok)
    with torch.device("meta"):
        model = get_peft_model(GptOssForCausalLM(hf).to(dtype), lora_config(config))
    _, factors = lora_factors(model)
    return megabytes(adapted_tensors(model)), megabytes(factors) * 4 / 3  # base64: 4 characters per 3 bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    config = TrainConfig(lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    print("| model | LoRA r | colocated: merged layers | server: LoRA factors (base64) | ratio |\n|---|---|---|---|---|")
    for name, dtype in (("tiny", torch.float32), ("openai/gpt-oss-20b", torch.bfloat16),
                        ("openai/gpt-oss-120b", torch.bfloat16)):
        merged, factors = payloads(name, config, dtype)
        print(f"| {name} ({str(dtype).removeprefix('torch.')}) | {args.lora_r} | {merged:,.1f} MB | "
              f"{factors:,.2f} MB | {merged / factors:.0f}x |")


if __name__ == "__main__":
    main()
