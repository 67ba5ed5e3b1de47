"""VllmGenerator: rollouts on vLLM's offline `LLM` engine, colocated in the trainer process.

1. In process: the engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so a weight sync hands
   vLLM the trainer's tensors by reference, with no pickling and no `__main__` guard needed by callers.
2. Weight sync goes through vLLM's in-place reload (`reload_weights` of the worker, layerwise): a layer gets its
   checkpoint-format tensors, is rebuilt on the side and processed as at load time (CPU linears are repacked after
   loading, which is why copying into vLLM's parameters, as TRL's colocate sync does, fails on gpt-oss). vLLM only
   rebuilds the layers that receive tensors, but it rebuilds them whole: send every tensor of a touched layer
   (`rl/weight_sync.py` does). The prefix cache is dropped after a sync: its KV entries came from the old weights.
3. Logprobs are vLLM's `processed_logprobs`: after temperature, top-k/p and our logits processor, i.e. of the
   distribution each token was drawn from, which TRL's importance-sampling correction compares with the trainer's.
4. Constrained decoding (`allowed`) is rl/vllm_choice.py's logits processor.
5. No retry: in process, a failure is either deterministic (prompt too long, KV cache too small), so a second try
   fails the same way, or the engine died with the process's state, so there is nothing left to retry on. The server
   client (rl/vllm_server.py) retries once, because there a dropped connection or a timeout can be transient.
6. Not yet: sleep/wake around the optimizer step (vLLM has it on GPUs only, and no GPU vLLM was available to test it).
vLLM's engine is imported here and in rl/vllm_choice.py only (the server client talks HTTP).
"""

import gc
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.generator import ALLOWED_KEY, Completion, Sampling, prompt_seeds
from oss_grpo.rl.harmony import parse_completion, stop_token_ids
from oss_grpo.rl.vllm_choice import ChoiceLogitsProcessor
from oss_grpo.rl.weight_sync import adapted_tensors, save_checkpoint

# The engine core in this process: tensors reach vLLM by reference, and no process is spawned.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from vllm import LLM, SamplingParams  # noqa: E402  (after the environment variable it reads)
from vllm.exceptions import VLLMError  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402
from vllm.outputs import CompletionOutput  # noqa: E402

class VllmGenerator:
    """The Generator protocol on a vLLM engine loaded from a Hugging Face checkpoint folder."""

    def __init__(
        self,
        model_dir: str | Path,
        stop_ids: list[int],
        dtype: str = "float32",
        memory_utilization: float = 0.3,
        max_model_len: int = 2048,
        seed: int = 0,
    ) -> None:
        self.stop_ids = stop_ids
        try:
            self.llm = LLM(
                model=str(model_dir), dtype=dtype, seed=seed, max_model_len=max_model_len,
                gpu_memory_utilization=memory_utilization,  # on CPU: the share of RAM for weights and KV cache
                enforce_eager=not torch.cuda.is_available(),  # CUDA graphs on GPUs only
                skip_tokenizer_init=True,  # ids in, ids out: Harmony is rendered and parsed by rl/harmony.py
                logprobs_mode="processed_logprobs", logits_processors=[ChoiceLogitsProcessor],
            )
        except (VLLMError, RuntimeError, ValueError) as err:  # e.g. KV cache too small for max_model_len
            raise GeneratorError(f"vLLM could not load {model_dir}: {err}") from err

    @classmethod
    def from_policy(cls, model: torch.nn.Module, config: TrainConfig) -> "VllmGenerator":
        """An engine holding `model`'s current weights (adapters merged).

        The tiny model is written to a temporary checkpoint (experts dequantised: vLLM's CPU MoE has no MXFP4); a
        real checkpoint is loaded by vLLM from `config.model` itself, experts in MXFP4 as released, and the adapters
        (still zero before training, or reloaded on resume) reach it with the first sync.
        """
        settings = dict(stop_ids=stop_token_ids(), dtype=config.dtype, memory_utilization=config.vllm_memory_utilization,
                        max_model_len=config.vllm_max_model_len, seed=config.seed)
        if config.model != "tiny":
            return cls(config.model, **settings)
        with tempfile.TemporaryDirectory(prefix="oss-grpo-vllm-") as folder:  # read once, at load
            return cls(save_checkpoint(model, Path(folder)), **settings)

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, allowed: list[list[int]] | None = None
    ) -> list[Completion]:
        """One completion per prompt, each request with its own seed (`Sampling.seed`), so a group's copies differ."""
        params = [
            SamplingParams(
                max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                top_k=sampling.top_k or -1, stop_token_ids=self.stop_ids, logprobs=0, detokenize=False,
                seed=seed, extra_args={ALLOWED_KEY: allowed} if allowed else None,
            )
            for seed in prompt_seeds(sampling, len(prompts))
        ]
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        except (VLLMError, RuntimeError, ValueError) as err:  # engine died, prompt too long, KV cache too small...
            raise GeneratorError(f"vLLM generation failed for {len(prompts)} prompts: {err}") from err
        return [self._completion(prompt, out.outputs[0]) for prompt, out in zip(prompts, outputs)]

    def _completion(self, prompt: list[int], sample: CompletionOutput) -> Completion:
        ids = list(sample.token_ids)
        if not ids or sample.logprobs is None:
            raise GeneratorError(f"vLLM returned an empty completion (finish reason {sample.finish_reason!r}): "
                                 "refusing to train on it")
        logprobs = [step[token].logprob for step, token in zip(sample.logprobs, ids)]
        return Completion(
            prompt_ids=prompt, completion_ids=ids, logprobs=logprobs,
            finish_reason="stop" if ids[-1] in self.stop_ids else "length", parsed=parse_completion(ids),
        )

    def sync_from(self, model: torch.nn.Module) -> dict[str, float]:
        """Load the merged weights of the layers LoRA changes in `model` (rl/weight_sync.py); returns what was sent."""
        tensors = adapted_tensors(model)
        self.load_weights(tensors.items())
        return {"megabytes": sum(t.numel() * t.element_size() for t in tensors.values()) / 1e6}

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load checkpoint-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...) in place; see point 2."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(named_tensors)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Shut the engine down and free its weights and KV cache. vLLM budgets memory per process (on CPU what the
        process already holds counts against `memory_utilization`), so a second engine needs the first one gone."""
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
