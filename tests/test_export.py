"""`oss-grpo export`: the merged checkpoint reproduces the trained policy's logits with LoRA on attention and on the
MXFP4 experts (the expert LoRA must not vanish), and the adapter export reloads to the same policy."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from oss_grpo.kernels.mxfp4 import dequantize
from oss_grpo.rl.cli import main
from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.export import load_trained_policy
from oss_grpo.rl.moe_lora import with_expert_lora
from oss_grpo.rl.policy import load_policy

IDS = torch.randint(0, 5000, (2, 12), generator=torch.Generator().manual_seed(0))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "experts"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A run folder as `oss-grpo train` leaves it, with an adapter away from zero; and that policy's logits."""
    run_dir = tmp_path_factory.mktemp("run")
    config = TrainConfig(lora_target_modules=TARGETS, lora_r=4, lora_alpha=8, output_dir=str(run_dir))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    torch.manual_seed(1)
    lora = with_expert_lora(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    policy = get_peft_model(load_policy(config), lora).eval()
    policy.save_pretrained(str(run_dir / "final"))
    with torch.no_grad():
        return run_dir, policy(IDS).logits


def test_merged_export_reproduces_the_trained_logits(run, tmp_path) -> None:
    run_dir, logits = run
    assert main(["export", str(run_dir), "--merged", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        expected = merged(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * logits.abs().max()

    base = load_policy(TrainConfig()).model.layers[0].mlp.experts  # the expert LoRA is in the merged weights
    w = dequantize(base.gate_up_proj_blocks, base.gate_up_proj_scales, torch.float32).transpose(1, 2)
    assert (merged.model.layers[0].mlp.experts.gate_up_proj - w).abs().max() > 1e-2


def test_merged_export_is_bf16_by_default(run, tmp_path) -> None:
    run_dir, logits = run
    assert main(["export", str(run_dir), "--merged", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.dtype == torch.bfloat16 and merged.model.layers[1].mlp.experts.down_proj.dtype == torch.bfloat16


def test_adapter_export_reloads_the_same_policy(run, tmp_path) -> None:
    run_dir, logits = run
    assert main(["export", str(run_dir), "--adapter", str(tmp_path / "adapter")]) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "adapter" / name).read_bytes() == (run_dir / "final" / name).read_bytes()
    with torch.no_grad():
        torch.testing.assert_close(load_trained_policy(run_dir)(IDS).logits, logits)


def test_export_of_a_folder_without_an_adapter_is_one_line(tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path), "--adapter", str(tmp_path / "out")]) == 2
    assert "final: no adapter_config.json" in capsys.readouterr().err
