"""`offload_embedding` (rl/host_embedding.py): the input embedding table stays in host RAM whatever the model is
moved to, the model computes exactly what it computed before, training through it is the same training, and the
table still reaches a merged export."""

import dataclasses
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from oss_grpo.rl.cli import main
from oss_grpo.rl.config import TrainConfig, load_config
from oss_grpo.rl.errors import ConfigError
from oss_grpo.rl.export import load_trained_policy
from oss_grpo.rl.host_embedding import HostEmbedding, offload_input_embedding
from oss_grpo.rl.memory import estimate_memory, model_shape
from oss_grpo.rl.metrics import read_metrics
from oss_grpo.rl.policy import load_policy
from oss_grpo.rl.tiny_model import build_tiny_model
from oss_grpo.rl.train import train

REPO = Path(__file__).resolve().parents[1]
IDS = torch.randint(0, 5000, (2, 12), generator=torch.Generator().manual_seed(0))


def lora(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


def test_policy_with_host_embedding_gives_the_same_logits_and_gradients() -> None:
    """With gradient checkpointing on, as TRL trains (PEFT then hooks the embedding's output to require grad)."""
    results = []
    for offload in (False, True):
        policy = lora(load_policy(TrainConfig(offload_embedding=offload)))
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.enable_input_require_grads()
        logits = policy(IDS).logits
        logits.pow(2).mean().backward()
        results.append((logits.detach(), [p.grad for p in policy.parameters() if p.requires_grad]))
        assert isinstance(policy.get_input_embeddings(), HostEmbedding) == offload
    (logits, grads), (offloaded_logits, offloaded_grads) = results
    assert torch.equal(offloaded_logits, logits)
    assert len(grads) == 8 and all(torch.equal(a, b) for a, b in zip(offloaded_grads, grads, strict=True))


def test_the_table_stays_on_the_host_when_the_model_moves_and_is_still_in_the_state_dict() -> None:
    model = build_tiny_model(seed=0)
    table = model.get_input_embeddings().weight.detach().clone()
    offload_input_embedding(model)
    assert not any(name.startswith("model.embed_tokens") for name, _ in model.named_parameters())
    assert not any(name.startswith("model.embed_tokens") for name, _ in model.named_buffers())
    model.to("meta")  # what accelerate's model.to(device) does, on a device that needs no GPU
    assert next(model.parameters()).device.type == "meta"
    embedding = model.get_input_embeddings()
    assert embedding.weight.device.type == "cpu" and torch.equal(embedding.weight, table)
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], table)


def test_a_tied_lm_head_is_refused() -> None:
    model = build_tiny_model(seed=0)
    model.lm_head.weight = model.get_input_embeddings().weight
    with pytest.raises(ConfigError, match="offload_embedding=true: this model ties its LM head"):
        offload_input_embedding(model)


def test_memory_estimate_drops_the_table_from_the_gpu() -> None:
    """gpt-oss-20b: 201,088 x 2,880 bf16 = 1,158,266,880 bytes (1.08 GiB) leave the GPU weights."""
    config = load_config(REPO / "configs/2048.yaml")
    shape = model_shape(config)
    on_gpu, on_host = (estimate_memory(dataclasses.replace(config, offload_embedding=offload), shape, 266)
                       for offload in (False, True))
    assert on_gpu.weights - on_host.weights == 201_088 * 2880 * 2 == 1_158_266_880
    assert on_gpu.total - on_host.total == on_gpu.weights - on_host.weights


def one_step(out: Path, offload: bool) -> Path:
    return train(load_config(REPO / "configs/2048-tiny.yaml",
                             [f"offload_embedding={str(offload).lower()}", "num_tasks=4", "prompts_per_step=2",
                              "group_size=4", "max_steps=1", "save_steps=1", "learning_rate=1e-2",
                              f"output_dir={out}"]))


def test_training_is_the_same_and_the_merged_export_has_the_table(tmp_path: Path) -> None:
    """One step of the tiny 2048 config through TRL with and without the offload: the same samples, rewards, loss
    and gradient norm; the offloaded run's merged export computes its trained policy."""
    rows = [read_metrics(one_step(tmp_path / str(offload), offload)) for offload in (False, True)]
    keys = ("reward_mean", "reward_std", "loss", "grad_norm")
    assert [{k: r[k] for k in keys} for r in rows[0]] == [{k: r[k] for k in keys} for r in rows[1]], rows
    run = tmp_path / "True"
    assert main(["export", str(run), "--merged", str(tmp_path / "merged"), "--dtype", "float32"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        expected, logits = load_trained_policy(run)(IDS).logits, merged(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()
