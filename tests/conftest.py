"""Session-wide test set-up: the offline Harmony vocabulary, and small shared fixtures."""

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_VOCAB = REPO.parent / "shared" / "vocab"

# openai-harmony downloads o200k_base.tiktoken unless this names a folder holding it; CI has no hub access.
if "TIKTOKEN_ENCODINGS_BASE" not in os.environ and (SHARED_VOCAB / "o200k_base.tiktoken").exists():
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(SHARED_VOCAB)


# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. at import: without a GPU the kernel tests must run
# the Triton code in its CPU interpreter, so it is set here, before any test module imports oss_grpo.kernels.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def train_one_step(tmp_path: Path) -> Callable[[str], dict]:
    """`oss-grpo train CONFIG` for one step in a subprocess (the real CLI); returns the step's metrics.jsonl row."""

    def run(config: str) -> dict:
        out = tmp_path / "run"
        result = subprocess.run(
            [sys.executable, "-m", "oss_grpo", "train", config, "--set", "max_steps=1", "--set", "save_steps=1",
             "--set", f"output_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=600,
            env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])

    return run
