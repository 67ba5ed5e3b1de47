"""A tiny gpt-oss-architecture model built locally with random weights.

The embedded default and every test use it: no hub download, minutes on a CPU, yet the same code paths as
gpt-oss-20b (transformers `GptOssForCausalLM`: attention sinks, alternating sliding/full attention, a top-k
routed MoE with the clamped swiglu, the full 201,088-token o200k_harmony vocabulary so real Harmony ids work).
"""

import torch
from transformers import GptOssConfig, GptOssForCausalLM

# o200k_harmony special tokens that the model config must know (as in the released gpt-oss configs).
RETURN_ID = 200002  # <|return|>: end of a final answer
PAD_ID = 199999  # <|endoftext|>
BOS_ID = 199998  # <|startoftext|>: the Harmony tokenizer's bos (GRPOTrainer warns when the config's differs)
VOCAB_SIZE = 201088


def tiny_config(
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_local_experts: int = 4,
    num_experts_per_tok: int = 2,
    sliding_window: int = 32,
    vocab_size: int = VOCAB_SIZE,
    head_dim: int = 16,
) -> GptOssConfig:
    """gpt-oss-20b's architecture shrunk: 4 query / 2 KV heads, experts as wide as the hidden size.

    vLLM's CPU attention kernel supports head sizes of 32 and up only: policies it serves are built with head_dim=32
    (`TrainConfig.tiny_head_dim`).
    """
    return GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        num_local_experts=num_local_experts,
        num_experts_per_tok=num_experts_per_tok,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "full_attention"] * (num_hidden_layers // 2),
        max_position_embeddings=4096,
        eos_token_id=RETURN_ID if vocab_size > RETURN_ID else None,  # a shrunk vocabulary (tests) has no Harmony ids
        pad_token_id=PAD_ID if vocab_size > PAD_ID else None,
        bos_token_id=BOS_ID if vocab_size > BOS_ID else None,
        tie_word_embeddings=False,
    )


def build_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **config_overrides: int) -> GptOssForCausalLM:
    """Random-weight tiny gpt-oss, deterministic for a seed (weights are never zeros: sinks and biases are random too).

    The weights are drawn in float32 and then cast, so the bf16 model is the float32 one rounded: drawing straight
    into bf16 tensors gives other numbers on some torch builds (torch 2.11's CPU `normal_` does), which made a bf16
    and a float32 tiny model of the same seed two different models.
    """
    torch.manual_seed(seed)
    model = GptOssForCausalLM(tiny_config(**config_overrides))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("sinks", "bias")):
                param.normal_(0.0, 0.02)
        # Head scale, measured on 2048 moves (docs/BENCHMARKS.md): with transformers' 0.02 at width 64 the logits
        # after the final RMSNorm can never differ by more than ~1.3, so no training lifts p(best move) past ~0.6;
        # the fan-in 0.125 makes the untrained policy opinionated (logit std ~1: a seed may start at the best fixed
        # move); 0.05 starts near uniform (logit std ~0.4) and still reaches p > 0.9 in 10 supervised steps.
        model.lm_head.weight.normal_(0.0, 0.05)
    model.to(dtype)
    model.eval()
    return model
