"""How one GRPO step splits over data-parallel processes (`accelerate launch`, `torchrun`: docs/MULTIGPU.md).

`prompts_per_step * group_size` is the step's whole batch whatever the number of processes: each of N processes
samples and trains on 1/N of it (TRL gives process p the slice [p * n, (p + 1) * n) and gathers every reward before
the group-relative advantages), and DDP averages the gradients, so a config makes the same update on 1 or N GPUs.
"""

import os

import torch

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.errors import ConfigError


def process_layout() -> tuple[int, int]:
    """(rank, number of processes): `accelerate launch` and `torchrun` set RANK and WORLD_SIZE, a plain `oss-grpo
    train` is rank 0 of 1. Read from the environment because it is needed before the trainer joins the group."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def check_gpus(use_cpu: bool, processes: int) -> None:
    """Fail before the model loads when one process sees several GPUs: transformers' Trainer would wrap the model in
    `nn.DataParallel`, which TRL's GRPOTrainer refuses only once the policy is built (minutes for gpt-oss-120b)."""
    gpus = 0 if use_cpu else torch.cuda.device_count()
    if processes == 1 and gpus > 1:
        raise ConfigError(f"{gpus} GPUs are visible to one process: train on all of them with `accelerate launch "
                          f"--num_processes {gpus} -m oss_grpo train ...` or `torchrun` (docs/MULTIGPU.md), or on "
                          "one with CUDA_VISIBLE_DEVICES=0")


def batch_split(config: TrainConfig, processes: int) -> tuple[int, int]:
    """(completions per forward/backward pass, passes accumulated per step) of each of `processes`."""
    batch = config.prompts_per_step * config.group_size
    if batch % processes:
        raise ConfigError(f"prompts_per_step * group_size = {batch} completions: cannot be split evenly over "
                          f"{processes} processes")
    share = batch // processes
    micro = config.micro_batch_size or share  # TRL samples the share once, then accumulates its micro-batches
    if share % micro:
        raise ConfigError(f"micro_batch_size={micro}: must divide each process's share of the batch, "
                          f"{batch} / {processes} = {share} completions")
    return micro, share // micro
