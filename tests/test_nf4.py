"""NF4 attention (`load_in_4bit`, rl/nf4.py): the projections are bitsandbytes NF4 with double quantisation and the
experts still MXFP4; the NF4 model is the dense one within NF4's error; LoRA trains through PEFT's bitsandbytes
layers; the reference policy is the NF4 model itself; what leaves the trainer (the tensors vLLM is synced with, the
merged export) is the dequantised weight plus the LoRA delta."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, GptOssForCausalLM

from oss_grpo.rl.cli import main
from oss_grpo.rl.memory import NF4_BITS
from oss_grpo.rl.config import TrainConfig, load_config
from oss_grpo.rl.export import load_trained_policy
from oss_grpo.rl.metrics import read_metrics
from oss_grpo.rl.moe import Fp32Router, Mxfp4Experts
from oss_grpo.rl.nf4 import quantize_linears
from oss_grpo.rl.policy import load_policy
from oss_grpo.rl.tiny_model import tiny_config
from oss_grpo.rl.train import train
from oss_grpo.rl.weight_sync import adapted_tensors, checkpoint_tensors

bnb = pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes (the gpu extra; CI has it)")
from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit  # noqa: E402  (defined only where bitsandbytes is)

REPO = Path(__file__).resolve().parents[1]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
NF4 = TrainConfig(load_in_4bit=True)
IDS = torch.randint(0, 5000, (2, 12), generator=torch.Generator().manual_seed(0))

NF4_HALF_GAP = bnb.functional.get_4bit_type("nf4", device="cpu").diff().max().item() / 2
"""Half the widest gap between NF4's 16 levels (0.152, between -1 and -0.696 of the block's absmax): the most
rounding to the nearest level can move a weight, as a share of its 64-weight block's absmax."""
ABSMAX_ERROR = 0.02
"""Allowance for double quantisation: the block absmax itself is stored in 8 bits (measured: the largest error is
0.155 of the absmax, 0.003 over NF4_HALF_GAP)."""
LOGIT_ERROR = 0.2
"""Bound on RMS(NF4 logits - dense logits) / RMS(dense logits) for the tiny model, measured 0.13: every attention
weight is off by 9% RMS (of the weights' RMS), and the tiny random model's logits are small (std 0.4); the mean KL
between the two next-token distributions is 0.0013 nats."""


def lora(policy: nn.Module, targets: tuple[str, ...] = PROJECTIONS) -> nn.Module:
    """`policy` with LoRA r4 on `targets`, B not zero (so the merge and the delta matter)."""
    torch.manual_seed(1)
    return get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                             init_lora_weights=False))


def test_attention_is_nf4_with_double_quant_and_experts_stay_mxfp4() -> None:
    model = load_policy(NF4)
    for layer in model.model.layers:
        for proj in PROJECTIONS:
            linear = getattr(layer.self_attn, proj)
            assert isinstance(linear, bnb.nn.Linear4bit) and linear.weight.quant_type == "nf4"
            assert linear.weight.quant_state.nested  # double quantisation: the block absmax is 8-bit
            assert linear.compute_dtype == torch.float32 and linear.bias.dtype == torch.float32
        assert isinstance(layer.mlp.experts, Mxfp4Experts) and isinstance(layer.mlp.router, Fp32Router)
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert model.is_loaded_in_4bit  # what PEFT and TRL read to take their bitsandbytes paths


def test_nf4_storage_is_what_the_memory_estimate_counts() -> None:
    """gpt-oss-20b's k_proj (2880 -> 512, bf16) as bitsandbytes stores it: codes, 8-bit block absmax, fp32 scales of
    the absmax; NF4_BITS per weight plus the two lookup tables (16 and 256 fp32 values)."""
    torch.manual_seed(0)
    layer = nn.Linear(2880, 512, dtype=torch.bfloat16)
    model = GptOssForCausalLM(tiny_config(hidden_size=32, num_hidden_layers=2, vocab_size=64)).to(torch.bfloat16)
    model.model.layers[0].self_attn.k_proj = layer
    weight = quantize_linears(model).model.layers[0].self_attn.k_proj.weight
    state = weight.quant_state
    stored = [weight.data, state.absmax, state.code, state.offset, state.state2.absmax, state.state2.code]
    nbytes = sum(t.numel() * t.element_size() for t in stored)
    print(f"NF4 k_proj: {nbytes} bytes for {layer.weight.numel()} weights, bf16 {layer.weight.numel() * 2}")
    assert nbytes == layer.weight.numel() * NF4_BITS / 8 + (16 + 1 + 256) * 4


def test_nf4_model_is_the_dense_one_on_its_dequantised_weights_and_within_nf4_error() -> None:
    """Each weight within NF4's rounding of the dense one; the NF4 model computes exactly the dense model with those
    dequantised weights (nothing else changes); the logits' error is what that rounding gives."""
    dense, nf4, dequantised = load_policy(TrainConfig()), load_policy(NF4), load_policy(TrainConfig())
    for name, linear in nf4.named_modules():
        if isinstance(linear, bnb.nn.Linear4bit):
            w = dense.get_submodule(name).weight.detach()
            w_nf4 = bnb.functional.dequantize_4bit(linear.weight.data, linear.weight.quant_state)
            absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)  # the blocks run along the flattened weight
            assert ((w_nf4 - w).abs().reshape(-1, 64) <= (NF4_HALF_GAP + ABSMAX_ERROR) * absmax).all(), name
            dequantised.get_submodule(name).weight.data.copy_(w_nf4)
    with torch.no_grad():
        expected, logits = dense(IDS).logits, nf4(IDS).logits
        torch.testing.assert_close(logits, dequantised(IDS).logits, rtol=1e-6, atol=1e-6)
    relative = (logits - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt()
    print(f"NF4 logits: relative RMS error {relative:.4f}")
    assert 0 < relative < LOGIT_ERROR


def test_lora_is_pefts_bitsandbytes_layer_and_its_gradients_flow() -> None:
    policy = lora(load_policy(NF4))
    layers = [m for m in policy.modules() if isinstance(m, LoraLinear4bit)]
    assert len(layers) == len(PROJECTIONS) * len(policy.base_model.model.model.layers)
    policy(IDS).logits.float().square().mean().backward()
    for name, param in policy.named_parameters():
        assert param.requires_grad == ("lora_" in name), name
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_the_reference_policy_is_the_nf4_model_with_adapters_off() -> None:
    policy = lora(load_policy(NF4))
    with torch.no_grad(), policy.disable_adapter():
        reference = policy(IDS).logits
    with torch.no_grad():
        assert torch.equal(reference, load_policy(NF4)(IDS).logits)
        assert (policy(IDS).logits - reference).abs().max() > 1e-3  # the adapters do change the policy


def test_weight_sync_tensors_are_a_dense_checkpoint_of_the_policy() -> None:
    """What vLLM loads and is synced with: exactly the tensors of transformers' dense gpt-oss, which then computes
    the NF4 + LoRA policy (dequantised weight + delta, no packed codes or block scales left). Each sync sends every
    NF4 projection, LoRA or not: an engine loaded from a released checkpoint holds them unrounded."""
    policy = lora(load_policy(NF4), targets=("q_proj",)).eval()
    tensors = checkpoint_tensors(policy)
    dense = GptOssForCausalLM(tiny_config(head_dim=32)).eval()
    dense.load_state_dict(tensors, strict=True)
    with torch.no_grad():
        expected, logits = policy(IDS).logits, dense(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()
    synced = adapted_tensors(policy)
    assert synced.keys() == {f"model.layers.{i}.self_attn.{p}.{kind}" for i in range(2) for p in PROJECTIONS
                             for kind in ("weight", "bias")}
    for name, tensor in synced.items():
        assert torch.equal(tensor, tensors[name]), name


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory) -> Path:
    """`train` for 2 steps of the tiny 2048 config with load_in_4bit (a few seconds a step on a CPU)."""
    out = tmp_path_factory.mktemp("nf4-run")
    return train(load_config(REPO / "configs/2048-tiny.yaml",
                             ["load_in_4bit=true", "num_tasks=8", "prompts_per_step=2", "group_size=4",
                              "max_steps=2", "save_steps=2", "learning_rate=1e-2", f"output_dir={out}"]))


def test_training_with_nf4_attention_changes_the_fp32_adapter(nf4_run: Path) -> None:
    rows = read_metrics(nf4_run)
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm"] > 0 for r in rows), rows
    adapter = load_file(nf4_run / "final" / "adapter_model.safetensors")
    factors_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert len(factors_b) == 8 and all(t.dtype == torch.float32 for t in adapter.values())  # not TRL's bf16 cast
    assert all(t.abs().max() > 0 for t in factors_b)  # B starts at zero: the optimizer moved every one


def test_merged_export_of_an_nf4_run_loads_in_transformers(nf4_run: Path, tmp_path: Path) -> None:
    assert main(["export", str(nf4_run), "--merged", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert all(type(m) is nn.Linear for name, m in merged.named_modules() if name.endswith(PROJECTIONS))
    with torch.no_grad():
        expected, logits = load_trained_policy(nf4_run)(IDS).logits, merged(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()
