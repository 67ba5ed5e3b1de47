"""The 2048 environment: Gymnasium's checker on every registered id, and the game's rules."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import oss_grpo.envs  # noqa: F401  (registers the ids)
from oss_grpo.envs.game2048 import (Game2048Env, legal_actions, parse_board, parse_move, render_board, slide,
                                   starting_boards)

OUR_IDS = [i for i in gymnasium.registry if i.startswith("oss_grpo/")]


@pytest.mark.parametrize("env_id", OUR_IDS)
def test_check_env(env_id: str) -> None:
    env = gymnasium.make(env_id, render_mode="ansi")
    check_env(env.unwrapped, skip_render_check=False)


@pytest.mark.parametrize(
    "action, expected, gain",
    [
        (0, [[4, 2, 4, 4], [4, 4, 2, 0], [0, 0, 4, 0], [0, 0, 0, 0]], 4),  # up
        (1, [[0, 0, 4, 4], [0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 8, 8]], 24),  # right
        (3, [[4, 4, 0, 0], [0, 0, 0, 0], [4, 0, 0, 0], [8, 8, 0, 0]], 24),  # left
    ],
)
def test_slide_merges_each_tile_once(action: int, expected: list, gain: int) -> None:
    board = np.array([[2, 2, 4, 0], [0, 0, 0, 0], [2, 0, 2, 0], [4, 4, 4, 4]])
    moved, points = slide(board, action)
    assert moved.tolist() == expected and points == gain


def test_illegal_move_changes_nothing_and_spawns_nothing() -> None:
    env = Game2048Env()
    board = [[2, 4, 2, 4], [0] * 4, [0] * 4, [0] * 4]
    env.reset(seed=0, options={"board": board})
    obs, reward, terminated, truncated, info = env.step(0)  # up: everything is already up
    assert obs.tolist() == board and reward == 0 and not info["legal"] and not terminated


def test_spawn_is_two_with_probability_point_nine() -> None:
    env = Game2048Env()
    fours = total = 0
    for seed in range(400):
        obs, _ = env.reset(seed=seed)
        tiles = obs[obs > 0]
        fours, total = fours + int((tiles == 4).sum()), total + len(tiles)
        assert set(tiles.tolist()) <= {2, 4} and len(tiles) == 2
    assert 0.06 < fours / total < 0.14  # 800 tiles: 0.1 +- 4 standard deviations


def test_same_seed_same_game() -> None:
    a, b = Game2048Env(), Game2048Env()
    assert np.array_equal(a.reset(seed=7)[0], b.reset(seed=7)[0])
    for action in [0, 1, 2, 3, 0, 1]:
        assert np.array_equal(a.step(action)[0], b.step(action)[0])


def test_full_board_without_merges_terminates() -> None:
    env = Game2048Env()
    env.reset(seed=0, options={"board": [[2, 4, 2, 4], [4, 2, 4, 2], [2, 4, 2, 4], [4, 2, 4, 0]]})
    _, _, terminated, _, info = env.step(1)  # right: fills the last cell; nothing can merge any more
    assert info["legal"] and (terminated == (legal_actions(env.board) == []))


@pytest.mark.parametrize(
    "text, action", [("up", 0), (" Left. ", 3), ("DOWN", 2), ("right\n", 1), ("go up", None), ("", None),
                     ("upward", None), (None, None), ("up down", None)]
)
def test_parse_move(text: str | None, action: int | None) -> None:
    assert parse_move(text) == action


def test_starting_boards_are_playable_and_seeded() -> None:
    boards = starting_boards(20, seed=3)
    assert all(legal_actions(b) for b in boards)
    assert all(np.array_equal(x, y) for x, y in zip(boards, starting_boards(20, seed=3)))
    assert "   ." in render_board(boards[0])
    assert all(np.array_equal(parse_board(render_board(b)), b) for b in boards)  # what multi-turn play reads back
