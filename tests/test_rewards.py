"""Built-in rewards, the registry, and the guard that turns plugin failures into logged, counted scores."""

import doctest
import math
import threading
from types import SimpleNamespace

import pytest

import oss_grpo.rewards.game2048
from oss_grpo.rewards import Score, get, registered, reward
from oss_grpo.rewards.fan_out import map_distinct
from oss_grpo.rewards.guard import GuardedReward
from oss_grpo.rl.errors import PluginError, UnknownPlugin


def test_doctests() -> None:
    assert doctest.testmod(oss_grpo.rewards.game2048).failed == 0


def test_move_quality_scores_illegal_and_unparsable_as_zero() -> None:
    fn = get("game2048_move")
    board = [[2, 4, 2, 4], [0] * 4, [0] * 4, [0] * 4]
    answers = ["up", "down", "left", "no idea", None]
    scores = fn([SimpleNamespace(final=a) for a in answers], board=[board] * len(answers))
    assert scores == [0.0, 1.0, 0.0, 0.0, 0.0]  # up/left move nothing; down is the only legal move


def test_duplicate_name_is_rejected() -> None:
    @reward("test_dup")
    def a(completions, **_):
        return [0.0] * len(completions)

    with pytest.raises(PluginError, match="test_dup"):
        reward("test_dup")(lambda completions, **_: [])


def test_module_path_ids_resolve_and_unknown_names_list_the_known() -> None:
    assert get("oss_grpo.rewards.game2048:move_quality") is oss_grpo.rewards.game2048.move_quality
    assert "game2048_move" in registered()
    with pytest.raises(UnknownPlugin, match="game2048_move"):
        get("no_such_reward")
    with pytest.raises(UnknownPlugin, match="cannot load"):
        get("no_such_module:fn")


def call(fn, n: int = 3) -> tuple[list, GuardedReward]:
    guarded = GuardedReward("t", fn, on_error=-1.0)
    logged = {}
    parsed = [SimpleNamespace(final=str(i)) for i in range(n)]
    scores = guarded(prompts=[None] * n, completions=[None] * n, completion_ids=[[]] * n, parsed=parsed,
                     log_metric=lambda k, v: logged.__setitem__(k, v))
    assert logged["rewards/t/errors"] == guarded.errors
    return scores, guarded


def test_guard_scores_a_crash() -> None:
    def crash(completions, **_):
        raise ZeroDivisionError("boom")

    scores, guarded = call(crash)
    assert scores == [-1.0] * 3 and guarded.errors == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", True])
def test_guard_scores_bad_values(bad) -> None:
    scores, guarded = call(lambda completions, **_: [0.5, bad, None])
    assert scores == [0.5, -1.0, None] and guarded.errors == 1


def test_guard_scores_wrong_length() -> None:
    scores, guarded = call(lambda completions, **_: [1.0])
    assert scores == [-1.0] * 3 and guarded.errors == 3


def test_guard_unpacks_scores_and_counts_their_reasons() -> None:
    scores, guarded = call(lambda completions, **_: [Score(1.0, "ok"), Score(None, "no answer"), Score(0.0, "ok")])
    assert scores == [1.0, None, 0.0] and guarded.errors == 0
    assert guarded.reasons == {"ok": 2, "no answer": 1}


def test_map_distinct_runs_each_distinct_job_once_side_by_side_in_batch_order() -> None:
    """The batch scoring of the sandboxed rewards (kernelgen, 2048 strategy): two jobs wait for each other at a
    barrier, which only jobs running at the same time can pass; the repeated job runs once; order is kept."""
    barrier, calls = threading.Barrier(2, timeout=30), []

    def job(name: str) -> str:
        calls.append(name)
        if name in ("a", "b"):
            barrier.wait()  # BrokenBarrierError after 30 s if "a" and "b" ran one after the other
        return name.upper()

    assert map_distinct(job, [("a",), ("b",), ("a",), ("c",)], workers=2) == ["A", "B", "A", "C"]
    assert sorted(calls) == ["a", "b", "c"]
