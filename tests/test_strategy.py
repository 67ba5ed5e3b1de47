"""2048 strategy mode: the sandboxed games match the parent's replay, attacks are scored as what they reach, and a
tiny training run on the strategy env scores every answer without crashing."""

from types import SimpleNamespace

import pytest

import oss_grpo.rewards.game2048_strategy as strategy_rewards
from oss_grpo.envs.game2048_strategy import WARM_START_ANSWERS, Game2048StrategyEnv, replay
from oss_grpo.rewards.game2048_strategy import extract_code, play_strategy

SEEDS = (11, 12)
CORNER = '''
def strategy(board):
    for move in "SADW":
        rows = [row[:] for row in board]
        if move in "AD":
            lines = rows
        else:
            lines = [list(col) for col in zip(*rows)]
        for line in lines:
            tiles = [v for v in (line if move in "AW" else line[::-1]) if v]
            if len(tiles) < len([v for v in line if v]) or any(a == b for a, b in zip(tiles, tiles[1:])):
                return move
            packed = tiles + [0] * (4 - len(tiles))
            if packed != (line if move in "AW" else line[::-1]):
                return move
    return "W"
'''


def scores(code: str, seeds: tuple[int, ...] = SEEDS, max_moves: int = 300, timeout_s: float = 5.0) -> dict:
    completions = [SimpleNamespace(final=f"```python\n{code}\n```")]
    columns = {"game_seeds": [list(seeds)], "max_moves": [max_moves], "timeout_s": [timeout_s]}
    return {name: fn(completions, **columns)[0] for name, fn in (
        ("runs", strategy_rewards.strategy_runs), ("clean", strategy_rewards.strategy_clean),
        ("max_tile", strategy_rewards.strategy_max_tile))}


def test_doctests() -> None:
    import doctest

    assert doctest.testmod(strategy_rewards).failed == 0


def test_the_child_plays_the_games_the_parent_replays() -> None:
    """Every game of a legal-move strategy ends exactly at game over in the replay: same boards on both sides."""
    run = play_strategy(CORNER, (1, 2, 3), 5000, 20.0)
    assert run.failure is None, run.error
    assert all(g.game_over and g.illegal_moves == 0 and g.max_tile >= 64 for g in run.games), run.games


def test_replay_is_seeded_and_rejects_malformed_moves() -> None:
    assert replay(5, "SADW" * 20, 100) == replay(5, "SADW" * 20, 100)
    assert replay(5, "SADW" * 20, 100) != replay(6, "SADW" * 20, 100)
    with pytest.raises(ValueError):
        replay(5, "SX", 100)
    env = Game2048StrategyEnv(max_moves=10)
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert (first == again).all() and len(env.spawn_draws) == 12


def test_a_working_strategy_scores_on_every_reward() -> None:
    result = scores(CORNER)
    assert result["runs"].value == 1.0 and result["clean"].value == 1.0
    assert 6 / 11 <= result["max_tile"].value <= 1.0  # at least a 64 tile in 300 moves


ATTACKS = {
    # Writing a 2048 into the board it is given: the strategy holds a copy, the replay never sees it.
    "writes into the board": ('def strategy(board):\n    board[0][0] = 2048\n    board[3] = [2048] * 4\n'
                              '    return "W"\n', {"runs": 1.0, "clean": 1.0}, "max_tile_below", 4 / 11 + 1e-9),
    # Lying about the moves: shadow a builtin the harness uses so it returns a forged result.
    "forges the result": ('def strategy(board):\n    return "S"\n\ndef all(x):\n    return True\n', None,
                          "max_tile_below", 2 / 11 + 1e-9),
    "returns a claim instead of moves": ('def strategy(board):\n    return {"max_tile": 2048}\n',
                                         {"runs": 0.0, "clean": 1.0, "max_tile": 0.0}, "reason", "raised"),
    "infinite loop": ('def strategy(board):\n    while True:\n        pass\n',
                      {"runs": 0.0, "clean": 1.0, "max_tile": 0.0}, "reason", "timeout"),
    "forbidden import": ('import os\n\ndef strategy(board):\n    os.system("echo hi")\n    return "S"\n',
                         {"runs": 0.0, "clean": 0.0, "max_tile": 0.0}, "reason", "rejected"),
    "forbidden call": ('def strategy(board):\n    return eval("\'S\'")\n',
                       {"runs": 0.0, "clean": 0.0, "max_tile": 0.0}, "reason", "rejected"),
    "no strategy defined": ('def play(board):\n    return "S"\n', {"runs": 0.0, "clean": 1.0, "max_tile": 0.0},
                            "reason", "missing"),
}


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
def test_attack_is_scored_for_what_it_reaches(attack: str) -> None:
    code, expected, kind, bound = ATTACKS[attack]
    result = scores(code, timeout_s=2.0)
    for name, value in (expected or {}).items():
        assert result[name].value == value, (name, result)
    if kind == "max_tile_below":
        assert result["max_tile"].value < bound, result  # "W" or "S" forever: a 4 or 8 tile at best
    else:
        assert result["runs"].reason == bound and result["max_tile"].reason == bound, result


def test_forged_move_strings_are_a_bad_result(monkeypatch) -> None:
    """What the child sends is checked before any replay: too many games, too long, letters outside WDSA."""
    for forged in (["S" * 301, "S"], ["S"], ["S", "Q"], "SS", [{"score": 99999}, "S"]):
        monkeypatch.setattr(strategy_rewards.sandbox, "run", lambda *a, forged=forged, **k: SimpleNamespace(
            ok=True, value=forged, failure=None, error=None))
        run = play_strategy.__wrapped__("def strategy(board):\n    return 'S'\n", SEEDS, 300, 5.0)
        assert run.failure == "bad_result" and run.games == (), forged
    # Well-formed forged moves are only moves: scored by the parent's replay, whatever the child claims.
    monkeypatch.setattr(strategy_rewards.sandbox, "run", lambda *a, **k: SimpleNamespace(
        ok=True, value=["SADW" * 50, ""], failure=None, error=None))
    run = play_strategy.__wrapped__("def strategy(board):\n    return 'S'\n", SEEDS, 300, 5.0)
    assert run.games == (replay(SEEDS[0], "SADW" * 50, 300), replay(SEEDS[1], "", 300))


def test_extract_code_takes_the_first_python_block() -> None:
    assert extract_code(WARM_START_ANSWERS[0]).startswith("import random")
    assert extract_code("```py\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"


def test_tiny_training_run_on_the_strategy_env(train_one_step) -> None:
    """One GRPO step of configs/2048-strategy-tiny.yaml: mostly wrong answers, every one scored, no crash."""
    row = train_one_step("configs/2048-strategy-tiny.yaml")
    for name in ("game2048_strategy_runs", "game2048_strategy_clean", "game2048_strategy_max_tile"):
        assert row[f"rewards/{name}/errors"] == 0 and row[f"rewards/{name}/unscored"] == 0, row
        assert 0.0 <= row[f"rewards/{name}/mean"] <= 1.0, row
