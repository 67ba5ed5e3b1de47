"""`check_reward` / `oss-grpo check-plugin`: a good plugin passes, each kind of bad plugin gets its own finding."""

import itertools
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oss_grpo.rewards import Score, get, registered, reward
from oss_grpo.rewards.check import check_reward

REPO = Path(__file__).resolve().parents[1]
BOARD = [[2, 2, 0, 0], [0] * 4, [0] * 4, [0] * 4]
ANSWERS = ["left", "up", "down", "right"]
COLUMNS = {"board": [BOARD, [[0] * 4, [0] * 4, [0] * 4, [4, 0, 0, 2]]]}


def good(completions, board, **columns):
    return [Score(None, "no answer") if c.final is None else float(c.final == "left") for c in completions]


def findings(fn, max_seconds: float = 1.0) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in check_reward(fn, ANSWERS, COLUMNS, {"trainer_state": None, "log_metric": None}, max_seconds):
        found.setdefault(f.check, []).append(f.message)
    return found


def test_a_good_plugin_has_no_findings() -> None:
    assert findings(good) == {}


calls = itertools.count()


def _mutates(completions, board, **columns):
    board[0][0][0] = 2048
    return [0.0] * len(completions)


def _first_or_fail(completions, **columns):
    return [0.0 if completions[0] else 1.0] * len(completions)


def _slow(completions, **columns):
    time.sleep(0.1 * len(completions))
    return [0.0] * len(completions)


BAD = {
    "no **columns": (lambda completions, board: [0.0] * len(completions), "signature", "**columns"),
    "unknown column": (lambda completions, kernel_source, **c: [0.0] * len(completions), "signature",
                       "'kernel_source'"),
    "no completions parameter": (lambda **columns: [], "signature", "positional"),
    "wrong length": (lambda completions, **c: [0.0], "return", "returned 1 scores for 4 completions"),
    "NaN": (lambda completions, **c: [math.nan] * len(completions), "return", "NaN and inf"),
    "str score": (lambda completions, **c: ["1.0"] * len(completions), "return", "use a float"),
    "not a list": (lambda completions, **c: 1.0, "return", "returned float"),
    "nondeterministic": (lambda completions, **c: [float(next(calls))] * len(completions), "deterministic",
                         "different scores"),
    "mutates a column": (_mutates, "inputs_unchanged", "changed its inputs"),
    "raises on a None final": (lambda completions, **c: [float(x.final.lower() == "left") for x in completions],
                               "broken_input", "AttributeError"),
    "raises on an empty batch": (_first_or_fail, "broken_input", "IndexError: list index out of range on an empty"),
    "slow": (_slow, "time", "per completion (limit 0.05 s)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_each_bad_plugin_gets_its_finding(case: str) -> None:
    fn, check, message = BAD[case]
    found = findings(fn, max_seconds=0.05)
    assert check in found, found
    assert any(message in m for m in found[check]), found[check]


def test_scores_outside_the_declared_range_are_a_finding() -> None:
    @reward("test_out_of_range", range=(0.0, 1.0))
    def out_of_range(completions, **columns):
        return [2.0] * len(completions)

    assert "outside the declared range (0.0, 1.0)" in findings(out_of_range)["return"][0]


CHECKED_ON = {  # the config whose env gives each built-in reward its columns; a new built-in needs a line here
    "game2048_move": None, "harmony_final_answer": None, "harmony_tool_call": None, "harmony_clean_stop": None,
    "game2048_strategy_runs": "configs/2048-strategy-tiny.yaml",
    "game2048_strategy_clean": "configs/2048-strategy-tiny.yaml",
    "game2048_strategy_max_tile": "configs/2048-strategy-tiny.yaml",
    "kernel_runs": "configs/kernelgen-tiny.yaml", "kernel_correct": "configs/kernelgen-tiny.yaml",
    "kernel_speedup": "configs/kernelgen-tiny.yaml",
}


@pytest.mark.parametrize("name", registered())
def test_every_registered_reward_passes(name: str) -> None:
    from oss_grpo.rl.cli import check_plugin

    assert name in CHECKED_ON, f"add {name} to CHECKED_ON with the config of its env"
    assert check_plugin(name, CHECKED_ON[name], [], max_seconds=5.0) == 0


def oss_grpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oss_grpo", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def nan_reward(completions, **columns):\n    return [float('nan')] * len(completions)\n")
    result = oss_grpo("check-plugin", f"{bad}:nan_reward")
    assert result.returncode == 1 and "FAIL  return" in result.stdout and "NaN" in result.stdout, result.stdout
    result = oss_grpo("check-plugin", "no_such_reward")
    assert result.returncode == 2 and "reward 'no_such_reward' is not registered" in result.stderr
    assert get("game2048_move").reward_range == (0.0, 1.0)


def test_a_reward_checked_on_the_wrong_env_names_the_missing_columns(capsys: pytest.CaptureFixture) -> None:
    from oss_grpo.rl.cli import check_plugin

    assert check_plugin("game2048_strategy_runs", None, [], max_seconds=5.0) == 1  # default env: 2048 moves
    out = capsys.readouterr().out
    assert "FAIL  signature" in out and "'game_seeds'" in out and "--config" in out and "skip  time" in out
