"""VllmServerGenerator: rollouts from a separate vLLM server (other GPUs or nodes), over plain HTTP.

The server is vLLM's own OpenAI-compatible `vllm serve`, started by the user with `oss-grpo serve CONFIG`
(rl/serve.py), which adds our two plug-ins: the LoRA-merging worker extension and the choice logits processor.
The trainer needs no vLLM installed for this backend, and no HTTP library beyond Python's own `urllib`.

1. Generation is `POST /v1/completions` with prompt token ids. TRL repeats each prompt G times in a row; each run of
   equal prompts with consecutive seeds is one request with `n` = the run's length and `seed` = its first entry's,
   and vLLM seeds child k with seed + k, so every entry gets the seed `Sampling.seed` gives it, as in the other
   backends. All runs are
   sent at once (threads), so the server batches them. `return_token_ids` gives the ids, `logprobs: 0` the sampled
   token's logprob, of the processed distribution (the server runs with `--logprobs-mode processed_logprobs`).
2. Constrained decoding: rl/vllm_choice.py's logits processor on the server; the allowed completions travel as JSON
   in `vllm_xargs` (which takes flat values only).
3. Weight sync sends only the LoRA factors (rl/weight_sync.py `lora_factors`, base64 safetensors) to
   `POST /collective_rpc` (vLLM's dev endpoint, `VLLM_SERVER_DEV_MODE=1`); rl/lora_merge_worker.py merges them into
   the base weights it keeps and reloads the layers in place. Then `POST /reset_prefix_cache`: cached KV entries
   came from the old weights. The payload's size and the server's merge time are logged with the sync. With NF4
   attention the first sync also sends the NF4-rounded attention weights, in parts of at most `PART_BYTES` (20b:
   1.27 GB once), which the server merges into from then on instead of the checkpoint's.
4. `check` refuses, naming the URL, a server that serves another model or tokenizer: vocabulary size, a checksum of
   the embedding, a Harmony tokenisation probe, and a max_model_len below `vllm_max_model_len`.
5. A timeout or a dropped connection is retried once (logged), then raises GeneratorError, which rl/train.py turns
   into a checkpoint and a stop. An HTTP error status is not retried: the server answered, and would again.
"""

import http.client
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import ConfigError, GeneratorError
from oss_grpo.rl.generator import ALLOWED_KEY, Completion, Sampling, prompt_seeds
from oss_grpo.rl.harmony import harmony_tokenizer, parse_completion, stop_token_ids
from oss_grpo.rl.lora_merge_worker import encode_tensors, sums
from oss_grpo.rl.weight_sync import lora_factors, nf4_base_weights

log = logging.getLogger(__name__)
T = TypeVar("T")

PROBE = "<|start|>assistant<|channel|>final<|message|>Move left, then up.<|return|>"
"""Text whose ids must be the same on both sides: special tokens and ordinary BPE."""
UNREACHABLE = (urllib.error.URLError, OSError, http.client.HTTPException)
"""No answer: connection refused or reset, timed out, a response cut short (an error status is an answer:
`_post` turns it into GeneratorError first)."""
PART_BYTES = 128 * 2**20
"""Most tensor bytes one `/collective_rpc` request carries (a base64 JSON body is 4/3 of it)."""
EMBEDDING_TOLERANCE = 1e-2
"""Largest gap between the two embeddings' sums (and 1/10 of it between their norms), relative to the norm: dtype
rounding stays ~10x below it, another model or seed lands ~100x above it (see lora_merge_worker.sums)."""


def runs(prompts: list[list[int]], seeds: list[int | None]) -> list[tuple[int, int]]:
    """(first index, length) of each run of equal consecutive prompts whose seeds count up by one (vLLM seeds child
    k of a request with seed + k)."""
    found: list[tuple[int, int]] = []
    for i, prompt in enumerate(prompts):
        start, n = found[-1] if found else (0, 0)
        follows = seeds[start] is None or seeds[i] == seeds[start] + n
        if found and prompts[start] == prompt and follows:
            found[-1] = (found[-1][0], found[-1][1] + 1)
        else:
            found.append((i, 1))
    return found


def tensor_parts(tensors: dict[str, torch.Tensor], limit: int) -> list[dict[str, torch.Tensor]]:
    """`tensors` in order, cut into parts of at most `limit` bytes (a larger tensor is a part of its own)."""
    parts: list[dict[str, torch.Tensor]] = []
    size = limit
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if size + nbytes > limit:
            parts.append({})
            size = 0
        parts[-1][name] = tensor
        size += nbytes
    return parts


class VllmServerGenerator:
    """The Generator protocol on a `vllm serve` process at `url`."""

    def __init__(self, url: str, timeout_s: float, stop_ids: list[int]) -> None:
        self.url, self.timeout_s, self.stop_ids = url.rstrip("/"), timeout_s, stop_ids
        self.rounded: list[str] | None = None
        """Modules whose NF4-rounded base this server was sent (None: not yet sent)."""

    @classmethod
    def from_policy(cls, model: nn.Module, config: TrainConfig) -> "VllmServerGenerator":
        """A client of `config.vllm_server_url`, checked to serve `model`'s base model and tokenizer."""
        server = cls(config.vllm_server_url, config.vllm_server_timeout_s, stop_token_ids())
        server.check(model, config.vllm_max_model_len)
        return server

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            hint = " (start it with `oss-grpo serve CONFIG`: it enables this endpoint)" * (err.code == 404)
            raise GeneratorError(f"vLLM server {self.url}{path} answered {err.code}{hint}: "
                                 f"{err.read()[:500].decode(errors='replace')}") from err
        return json.loads(raw) if raw else None

    def _call(self, what: str, request: Callable[[], T]) -> T:
        """`request()`, tried a second time after a timeout or a connection error."""
        try:
            return request()
        except UNREACHABLE as err:
            log.warning("vLLM server %s: %s failed (%s: %s); retrying once", self.url, what, type(err).__name__, err)
        try:
            return request()
        except UNREACHABLE as err:
            raise GeneratorError(f"vLLM server {self.url}: {what} failed twice ({type(err).__name__}: {err}); "
                                 "is it running? (`oss-grpo serve CONFIG` starts one)") from err

    def _rpc(self, what: str, method: str, **kwargs: str) -> list[dict]:
        """Call a LoraMergeExtension method on every worker; one result per worker."""
        return self._call(what, lambda: self._post("/collective_rpc", {"method": method, "kwargs": kwargs}))["results"]

    def check(self, model: nn.Module, max_model_len: int) -> None:
        """Raise ConfigError naming the URL unless the server serves `model`'s base model and our tokenizer."""
        answer = self._call("the tokenizer probe", lambda: self._post("/tokenize", {"prompt": PROBE,
                                                                                     "add_special_tokens": False}))
        if answer["tokens"] != harmony_tokenizer().encode(PROBE, add_special_tokens=False):
            raise ConfigError(f"vllm_server_url={self.url}: the server's tokenizer is not o200k_harmony "
                              f"({PROBE!r} -> {answer['tokens']})")
        if answer["max_model_len"] < max_model_len:
            raise ConfigError(f"vllm_max_model_len={max_model_len}: the server at {self.url} takes at most "
                              f"{answer['max_model_len']} tokens; restart it with `oss-grpo serve` and this config")
        workers = self._rpc("describing the model", "oss_grpo_describe")
        served, ours = workers[0]["vocab_size"], model.get_input_embeddings().weight
        if served != ours.shape[0]:
            raise ConfigError(f"vllm_server_url={self.url}: the server's model has {served} tokens, the policy "
                              f"{ours.shape[0]}: it serves another model")
        our_sum, our_squares = sums(ours)
        served_sum, served_squares = (sum(w[key] for w in workers) for key in ("embedding_sum", "embedding_squares"))
        norm = our_squares**0.5
        if abs(served_sum - our_sum) > EMBEDDING_TOLERANCE * norm or \
                abs(served_squares**0.5 - norm) > EMBEDDING_TOLERANCE / 10 * norm:
            raise ConfigError(f"vllm_server_url={self.url}: the server's embedding differs from the policy's "
                              f"(sum {served_sum:.6g} vs {our_sum:.6g}, norm {served_squares**0.5:.6g} vs {norm:.6g}): "
                              "it serves another model or seed; start it with `oss-grpo serve` and this run's config")

    def generate(
        self, prompts: list[list[int]], sampling: Sampling, allowed: list[list[int]] | None = None
    ) -> list[Completion]:
        """One completion per prompt, entry i seeded as `Sampling.seed` says (see point 1)."""
        seeds = prompt_seeds(sampling, len(prompts))
        groups = runs(prompts, seeds)
        bodies = [self._body(prompts[start], n, sampling, seeds[start], allowed) for start, n in groups]

        def send() -> list[dict]:
            with ThreadPoolExecutor(max_workers=min(len(bodies), 32)) as pool:
                return list(pool.map(lambda body: self._post("/v1/completions", body), bodies))

        answers = self._call(f"generating {len(prompts)} completions", send)
        completions = []
        for (start, n), answer in zip(groups, answers):
            choices = sorted(answer["choices"], key=lambda c: c["index"])
            if len(choices) != n:
                raise GeneratorError(f"vLLM server {self.url} returned {len(choices)} completions for n={n}")
            completions += [self._completion(prompts[start], choice) for choice in choices]
        return completions

    def _body(self, prompt: list[int], n: int, sampling: Sampling, seed: int | None,
              allowed: list[list[int]] | None) -> dict[str, Any]:
        body = {"prompt": prompt, "n": n, "max_tokens": sampling.max_tokens, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "top_k": sampling.top_k or -1, "stop_token_ids": self.stop_ids,
                "seed": seed, "logprobs": 0,
                "return_token_ids": True}
        if allowed:
            body["vllm_xargs"] = {ALLOWED_KEY: json.dumps(allowed)}
        return body

    def _completion(self, prompt: list[int], choice: dict[str, Any]) -> Completion:
        ids = choice.get("token_ids") or []
        logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if not ids or len(logprobs) != len(ids):
            raise GeneratorError(f"vLLM server {self.url} returned an empty completion (finish reason "
                                 f"{choice.get('finish_reason')!r}): refusing to train on it")
        return Completion(
            prompt_ids=prompt, completion_ids=ids, logprobs=logprobs,
            finish_reason="stop" if ids[-1] in self.stop_ids else "length", parsed=parse_completion(ids),
        )

    def sync_from(self, model: nn.Module) -> dict[str, float]:
        """Send `model`'s LoRA factors, the first time after its NF4-rounded bases; the server merges and reloads
        them (point 3). Returns what to log."""
        sent = 0
        if self.rounded is None:
            weights = nf4_base_weights(model)
            for part in tensor_parts(weights, PART_BYTES):
                text = encode_tensors(part)
                self._rpc("sending the NF4-rounded base weights", "oss_grpo_set_base", weights=text)
                sent += len(text)
            self.rounded = sorted(name.removesuffix(".weight") for name in weights)
        modules, factors = lora_factors(model)
        payload = encode_tensors(factors)
        workers = self._rpc("the LoRA sync", "oss_grpo_load_lora", modules=json.dumps(modules), factors=payload,
                            rounded=json.dumps(self.rounded))
        if errors := [w["error"] for w in workers if "error" in w]:
            raise GeneratorError(f"vLLM server {self.url} refused the LoRA sync: {errors[0]}")
        if not self._call("resetting the prefix cache", lambda: self._post("/reset_prefix_cache", {}))["success"]:
            raise GeneratorError(f"vLLM server {self.url} kept its prefix cache after a sync (requests running?): "
                                 "its cached KV would come from the old weights")
        return {"megabytes": (sent + len(payload)) / 1e6, "server_seconds": max(w["seconds"] for w in workers)}

    def close(self) -> None:
        """Nothing to release: every request opens its own connection (the server outlives the run)."""
