"""The vLLM server's half of the LoRA sync: a worker extension that merges LoRA factors into base weights it keeps.

`oss-grpo serve` (rl/serve.py) starts `vllm serve` with `--worker-extension-cls` naming `LoraMergeExtension`, vLLM's
documented hook for adding methods to every worker, and with `VLLM_SERVER_DEV_MODE=1`, which exposes
`POST /collective_rpc` (`{"method": name, "kwargs": {str: str}}`, string arguments only) to call them. The trainer
(rl/vllm_server.py) calls:

- `oss_grpo_describe()`: the vocabulary size and `sums` of the embedding shard the worker holds, so a trainer
  refuses a server that serves another model.
- `oss_grpo_set_base(weights)`: `{module}.weight` tensors (base64 safetensors) that replace the checkpoint's base
  weight of those modules from now on. With NF4 attention (`load_in_4bit`) the trainer's policy computes with the
  NF4-rounded weights, not the checkpoint's, so it sends them once (in parts) before its first sync.
- `oss_grpo_load_lora(modules, factors, rounded)`: `modules` is a JSON list of checkpoint module names, `factors`
  base64 of safetensors bytes with `{module}.lora_A` / `{module}.lora_B` (rl/weight_sync.py `lora_factors`),
  `rounded` the JSON list of modules whose base must have come from `oss_grpo_set_base` (a server restarted since
  has lost them: it answers an `error` and changes nothing; rounded bases it does not list, an earlier NF4 run's,
  go back to the checkpoint's). The worker reads those modules' base weights and biases from the checkpoint files once,
  keeps them in CPU memory, computes W = W_base + B A and reloads the modules in place with vLLM's
  `reload_weights`, as the colocated engine does.

The base comes from the checkpoint files, not from the engine, because vLLM repacks linears after loading (on CPU)
and every sync overwrites them. With tensor parallelism each worker merges whole matrices and vLLM's loader takes
its shard. Only torch and safetensors are imported at the top, so the trainer can use the payload helpers without
vLLM installed.
"""

import base64
import json
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save

PARTS = ("weight", "bias")
"""A linear's tensors in a checkpoint; vLLM's in-place reload needs both (gpt-oss attention has biases)."""


def encode_tensors(tensors: dict[str, torch.Tensor]) -> str:
    """Tensors (LoRA factors, rounded base weights) as the ASCII text a `/collective_rpc` string argument can carry."""
    return base64.b64encode(save({k: v.cpu().contiguous() for k, v in tensors.items()})).decode("ascii")


def sums(weight: torch.Tensor) -> tuple[float, float]:
    """(sum of w, sum of w^2) in float64, a row block at a time (a 20B model's embedding is 0.6 G values): a model
    fingerprint both sides compute. Two random inits of one shape have the same norm, but their sums differ by about
    the norm itself, while rounding to another dtype moves the sum by ~1e-3 of it (rl/vllm_server.py checks both)."""
    blocks = [block.double() for block in weight.detach().split(4096)]
    return sum(b.sum().item() for b in blocks), sum(b.square().sum().item() for b in blocks)


def read_tensors(folder: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors named `names` found in the checkpoint's safetensors files (missing names are simply absent)."""
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as file:
            for name in names & set(file.keys()):
                found[name] = file.get_tensor(name)
    return found


def merge(modules: list[str], base: dict[str, dict[str, torch.Tensor]],
          factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint name -> tensor for each module: W_base + B A where factors are given, else W_base; biases as they
    are (vLLM rebuilds a layer whole from what it receives). `base` maps a module to its `weight` (and `bias`)."""
    tensors = {}
    for module in modules:
        if "weight" not in base[module]:
            raise ValueError(f"oss-grpo LoRA sync: the served checkpoint has no {module}.weight")
        weight = base[module]["weight"]
        if f"{module}.lora_A" in factors:
            a, b = factors[f"{module}.lora_A"].float(), factors[f"{module}.lora_B"].float()  # (r, in), (out, r)
            if (b.shape[0], a.shape[1]) != tuple(weight.shape):
                raise ValueError(f"oss-grpo LoRA sync: {module} is {tuple(weight.shape)} on the server, the trainer's "
                                 f"LoRA is {(b.shape[0], a.shape[1])}: the server serves another model")
            weight = (weight.float() + b @ a).to(weight.dtype)
        tensors[f"{module}.weight"] = weight
        if "bias" in base[module]:
            tensors[f"{module}.bias"] = base[module]["bias"]
    return tensors


class LoraMergeExtension:
    """Methods vLLM adds to its worker class (`self` is the worker: `reload_weights`, `get_model`, `vllm_config`)."""

    def oss_grpo_describe(self) -> dict:
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        embedding = next(m.weight for m in self.get_model().modules()  # the input embedding, not the LM head
                         if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead))
        total, squares = sums(embedding)  # this worker's shard; vLLM zero-fills padding rows
        return {"vocab_size": self.vllm_config.model_config.get_vocab_size(), "embedding_sum": total,
                "embedding_squares": squares}

    def oss_grpo_set_base(self, weights: str) -> dict:
        rounded = {name.removesuffix(".weight"): w for name, w in load(base64.b64decode(weights)).items()}
        base = self._oss_grpo_base(list(rounded), parts=("bias",))  # the weight is the trainer's: not read
        for module, weight in rounded.items():
            base[module]["weight"] = weight
        self.__dict__.setdefault("oss_grpo_rounded", set()).update(rounded)
        return {"modules": len(rounded)}

    def oss_grpo_load_lora(self, modules: str, factors: str, rounded: str = "[]") -> dict:
        start = time.perf_counter()
        names, lora = json.loads(modules), load(base64.b64decode(factors))
        wanted, held = set(json.loads(rounded)), self.__dict__.setdefault("oss_grpo_rounded", set())
        if wanted - held:  # answered, not raised: the trainer names it (a worker's exception reaches it as a bare 500)
            return {"error": f"it lacks the trainer's NF4-rounded base of {len(wanted - held)} modules "
                             f"({min(wanted - held)}, ...): restarted since the run started? Resume the run"}
        stale = held - wanted  # an earlier NF4 run's bases: this trainer's policy has the checkpoint's
        for module in stale:
            self.oss_grpo_base.pop(module)
        held -= stale
        names += sorted(stale - set(names))  # reloaded too, so that no rounded weight stays in the engine
        tensors = merge(names, self._oss_grpo_base(names), lora)
        self.reload_weights(weights_iterator=list(tensors.items()))
        return {"modules": len(names), "seconds": time.perf_counter() - start}

    def _oss_grpo_base(self, modules: list[str], parts: tuple[str, ...] = PARTS) -> dict[str, dict[str, torch.Tensor]]:
        """Module -> {"weight", "bias"} for at least `modules`: read from the checkpoint once (only `parts` of those
        not held yet), kept in CPU memory."""
        base = self.__dict__.setdefault("oss_grpo_base", {})
        new = [m for m in modules if m not in base]
        if new:
            found = read_tensors(self._oss_grpo_checkpoint(), {f"{m}.{k}" for m in new for k in parts})
            base.update({m: {k: found[f"{m}.{k}"] for k in parts if f"{m}.{k}" in found} for m in new})
        return base

    def _oss_grpo_checkpoint(self) -> Path:
        """The served checkpoint's folder: the path given to `vllm serve`, or its hub snapshot vLLM downloaded."""
        model = self.vllm_config.model_config.model
        if Path(model).is_dir():
            return Path(model)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, allow_patterns=["*.safetensors"], local_files_only=True))
