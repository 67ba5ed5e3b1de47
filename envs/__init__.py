"""Gymnasium environments of oss-grpo, registered by id on import (entry points are strings: nothing heavy loads)."""

import gymnasium

gymnasium.register(
    id="oss_grpo/Game2048-v0", entry_point="oss_grpo.envs.game2048:Game2048Env", max_episode_steps=2000
)
gymnasium.register(
    id="oss_grpo/Game2048Strategy-v0", entry_point="oss_grpo.envs.game2048_strategy:Game2048StrategyEnv",
    max_episode_steps=2000,
)
gymnasium.register(id="oss_grpo/KernelGen-v0", entry_point="oss_grpo.envs.kernelgen:KernelGenEnv")  # one step
