"""Built-in rewards of 2048 strategy mode: the code parses and runs, uses nothing forbidden, reaches big tiles.

The model's final answer holds a Python function `strategy(board)`. `play_strategy` appends a small harness to it
(a plain-Python copy of the game's rules, taken from `oss_grpo.envs` by `inspect.getsource`) and plays all of a
task's seeded games in one `sandbox.run` call. The child returns only one string of moves per game; the parent
checks their form and replays them on `Game2048StrategyEnv` to compute every verdict. Hence:

- Writing into the board changes nothing: the strategy gets a fresh list copy every move, and the replay never sees
  the child's boards at all.
- Lying about the moves (a tampered harness, a forged result) can at worst send a different move string, which is
  then scored for what it reaches on the parent's board. Malformed results score as failures.
- The model's code comes first and the harness after it, so the code cannot replace the harness's functions, and
  the spawn table reaches the harness only as an argument, never as a global the strategy could read.
- A hung strategy is killed at the task's `timeout_s` (failure "timeout"); a slow one that is still returning moves
  is cut by the harness at 3/4 of it and scored on the games as far as they got.

The three rewards share one sandbox run per (code, task) through a small cache, so weighting all three costs one run;
the answers of a batch run side by side, one per core (`fan_out`).
"""

import functools
import inspect
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from oss_grpo.envs import game2048, game2048_strategy
from oss_grpo.envs.game2048_strategy import MOVE_KEYS, GameResult, replay, spawn_table
from oss_grpo.rewards import sandbox
from oss_grpo.rewards.fan_out import map_distinct
from oss_grpo.rewards.protocol import Score
from oss_grpo.rewards.registry import reward
from oss_grpo.rewards.source_check import check_source

ALLOWED_IMPORTS = frozenset(sandbox.DEFAULT_ALLOWED_IMPORTS | {"time"})
"""What a strategy may import: the sandbox's pure stdlib default, plus `time` (the harness needs it too)."""
ENTRY = "_oss_grpo_play_games"
_HARNESS = '''
import functools
import time

Rows = tuple[tuple[int, ...], ...]

{rules}

def _oss_grpo_action(answer):
    keys = {{"W": 0, "UP": 0, "D": 1, "RIGHT": 1, "S": 2, "DOWN": 2, "A": 3, "LEFT": 3}}
    if isinstance(answer, str) and answer.strip().upper() in keys:
        return keys[answer.strip().upper()]
    raise ValueError("strategy returned %r; expected one of W, A, S, D (or up, left, down, right)" % (answer,))


def {entry}(tables, max_moves, seconds):
    deadline = time.monotonic() + seconds
    played = []
    for draws in tables:
        rows = spawn_tile(spawn_tile(((0,) * 4,) * 4, draws[0]), draws[1])
        moves, spawned = [], 2
        while len(moves) < max_moves and time.monotonic() < deadline:
            if all(_slide_rows(rows, a)[0] == rows for a in range(4)):
                break
            action = _oss_grpo_action(strategy([list(row) for row in rows]))
            moves.append("{keys}"[action])
            after = _slide_rows(rows, action)[0]
            if after != rows:
                rows = spawn_tile(after, draws[spawned])
                spawned += 1
        played.append("".join(moves))
    return played
'''


@functools.cache
def harness_source() -> str:
    """The code appended after the model's: the rules (copied from their source of truth) and the game loop."""
    rules = "\n\n".join(inspect.getsource(fn) for fn in (game2048._merge_line, game2048._slide_rows,
                                                           game2048_strategy.spawn_tile))
    return _HARNESS.format(rules=rules, entry=ENTRY, keys=MOVE_KEYS)


def extract_code(text: str | None) -> str | None:
    """The Python code of a final answer: its first ```python (or bare ```) block, else the whole answer.

    >>> extract_code("Here:\\n```python\\ndef strategy(board):\\n    return 'W'\\n```\\nDone.")
    "def strategy(board):\\n    return 'W'\\n"
    >>> extract_code("def strategy(board): return 'A'"), extract_code("  "), extract_code(None)
    ("def strategy(board): return 'A'", None, None)
    """
    if text is None or not text.strip():
        return None
    fenced = re.search(r"```(?:python|py)?[ \t]*\n(.*?)```", text, re.DOTALL)
    return fenced.group(1) if fenced else text


@dataclass(frozen=True)
class StrategyRun:
    """What one answer's code did on one task's games."""

    failure: str | None
    """None when every game was played; else a short category: no code, syntax, rejected, missing, timeout,
    raised, killed, exited, output_limit, bad_result."""
    error: str = ""
    """Details for logs: the sandbox's error line or the check's finding."""
    games: tuple[GameResult, ...] = ()
    """The parent's replay of each game, in seed order (empty on failure)."""


@functools.lru_cache(maxsize=1024)
def play_strategy(code: str | None, seeds: tuple[int, ...], max_moves: int, timeout_s: float) -> StrategyRun:
    """Play `code`'s `strategy` on the games seeded by `seeds` in one sandbox call and replay its moves here."""
    if code is None:
        return StrategyRun("no code", "the answer holds no code")
    report = check_source(code, ALLOWED_IMPORTS)
    if report.syntax_error:
        return StrategyRun("syntax", report.syntax_error)
    if report.findings:
        return StrategyRun("rejected", "; ".join(report.findings))
    if "strategy" not in report.defines:
        return StrategyRun("missing", "the code defines no top-level strategy")
    tables = [spawn_table(seed, max_moves) for seed in seeds]
    # The child's own deadline leaves a quarter of the budget for its start-up and for returning the moves.
    result = sandbox.run(code + "\n\n" + harness_source(), ENTRY, args=(tables, max_moves, 0.75 * timeout_s),
                         timeout_s=timeout_s, allowed_imports=ALLOWED_IMPORTS)
    if not result.ok:
        return StrategyRun(result.failure or "raised", result.error or "")
    moves = result.value
    if not (isinstance(moves, list) and len(moves) == len(seeds) and all(
            isinstance(m, str) and len(m) <= max_moves and not set(m) - set(MOVE_KEYS) for m in moves)):
        return StrategyRun("bad_result", f"expected {len(seeds)} strings of at most {max_moves} moves "
                                         f"({MOVE_KEYS}), got {str(moves)[:80]}")
    return StrategyRun(None, games=tuple(replay(seed, m, max_moves) for seed, m in zip(seeds, moves)))


PLAYED_AT_ONCE = os.cpu_count() or 1
"""Answers of a batch played at once: one sandbox child per core, so no strategy's clock is shared with another's."""


def _runs(completions: list[Any], game_seeds: list[list[int]], max_moves: list[int],
          timeout_s: list[float]) -> list[StrategyRun]:
    jobs = [(extract_code(c.final), tuple(seeds), moves, float(seconds))
            for c, seeds, moves, seconds in zip(completions, game_seeds, max_moves, timeout_s, strict=True)]
    return map_distinct(play_strategy, jobs, PLAYED_AT_ONCE)


@reward("game2048_strategy_runs", range=(0.0, 1.0))
def strategy_runs(completions: list[Any], game_seeds: list[list[int]], max_moves: list[int],
                  timeout_s: list[float], **columns: Any) -> list[Score]:
    """1.0 when the answer's `strategy` parses, passes the source check and plays every game without an error,
    else 0.0 with the failure as the reason (no code, syntax, rejected, missing, timeout, raised, bad_result ...)."""
    return [Score(0.0, run.failure) if run.failure else Score(1.0, "ran")
            for run in _runs(completions, game_seeds, max_moves, timeout_s)]


@reward("game2048_strategy_clean", range=(0.0, 1.0))
def strategy_clean(completions: list[Any], **columns: Any) -> list[Score]:
    """1.0 when the answer's code parses and imports and calls nothing forbidden (`source_check` with
    ALLOWED_IMPORTS), 0.0 otherwise: forbidden code, unparsable code, no code.

    >>> from types import SimpleNamespace as Parsed
    >>> [s.value for s in strategy_clean([Parsed(final="def strategy(b): return 'W'"),
    ...     Parsed(final="import os\\ndef strategy(b): return 'W'"), Parsed(final="def ("), Parsed(final=None)])]
    [1.0, 0.0, 0.0, 0.0]
    """
    scores = []
    for completion in completions:
        code = extract_code(completion.final)
        report = None if code is None else check_source(code, ALLOWED_IMPORTS)
        if report is None or report.syntax_error:
            scores.append(Score(0.0, "no code" if report is None else "syntax"))
        else:
            scores.append(Score(0.0, "forbidden import or call") if report.findings else Score(1.0, "clean"))
    return scores


@reward("game2048_strategy_max_tile", range=(0.0, 1.0))
def strategy_max_tile(completions: list[Any], game_seeds: list[list[int]], max_moves: list[int],
                      timeout_s: list[float], **columns: Any) -> list[Score]:
    """Mean over the task's games of log2(largest tile) / 11, capped at 1 (a 2048 tile scores 1, a 64 scores 0.55),
    from the parent's replay of the moves; 0.0 when the code did not run."""
    scores = []
    for run in _runs(completions, game_seeds, max_moves, timeout_s):
        if run.failure:
            scores.append(Score(0.0, run.failure))
            continue
        best = max(g.max_tile for g in run.games)
        value = sum(min(1.0, math.log2(g.max_tile) / 11) for g in run.games) / len(run.games)
        scores.append(Score(value, "won" if best >= 2048 else f"best tile {best}"))
    return scores
