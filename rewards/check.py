"""`check_reward`: validate a reward plugin the way Gymnasium's `check_env` validates an environment.

    findings = check_reward(get("my_reward"), answers=["left", "up"], columns={"board": [b1, b2]})

Each check is a small named function that calls the reward on real parsed Harmony completions and returns what it
found as sentences saying the likely cause; `oss-grpo check-plugin NAME` prints them and exits 1 if there are any.
The inputs are well-formed answers (built from `answers`, e.g. an environment's actions), then the broken output a
policy really produces: truncated, malformed after the stop token, no final channel, no tokens at all, an empty
batch. What is checked: the signature (a first positional parameter for the completions, `**columns`, and no
required column the task lacks), one valid value per completion (float, `Score` or None; finite; inside the declared
`reward_range`), the same result twice under the same seed, inputs left unchanged, no exception on broken input, and
the time per completion.
"""

import copy
import inspect
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oss_grpo.rewards.protocol import RewardFn, Score, score_value
from oss_grpo.rl.harmony import ParsedCompletion, harmony_tokenizer, parse_completion

SEED = 1234
"""Python's, numpy's and (when loaded) torch's generators are seeded with this before each call."""


@dataclass(frozen=True)
class Finding:
    """One problem: the check that found it and a sentence saying what is wrong and what to do."""

    check: str
    message: str


@dataclass(frozen=True)
class Inputs:
    """What the checks call the reward with: parsed completions and their columns (one entry per completion)."""

    completions: list[ParsedCompletion]
    columns: dict[str, list]
    extras: dict[str, Any]
    """Per-batch keywords TRL passes besides the columns (`trainer_state`, `log_metric`)."""

    def call(self, fn: RewardFn) -> list:
        return fn(self.completions, **self.columns, **self.extras)


def _parse(text: str) -> ParsedCompletion:
    return parse_completion(harmony_tokenizer().encode(text, add_special_tokens=False))


def sample_inputs(answers: list[str], columns: dict[str, list], extras: dict[str, Any]) -> tuple[Inputs, Inputs]:
    """(well-formed answers, broken completions) over the rows of `columns`, each row once per answer set."""
    rows = len(next(iter(columns.values()), []))
    if rows == 0:
        columns, rows = {}, 1
    answers = answers or ["42"]
    good = [_parse(f"<|channel|>final<|message|>{a}<|return|>") for a in answers]
    broken = [
        _parse(f"<|channel|>final<|message|>{answers[0]}"),  # truncated: no <|return|>
        _parse(f"<|channel|>final<|message|>{answers[0]}<|return|>{answers[0]}"),  # text after the stop token
        _parse(f"<|channel|>commentary<|message|>{answers[0]}<|return|>"),  # no final channel: final is None
        _parse(""),  # no tokens at all
    ]

    def batch(completions: list[ParsedCompletion]) -> Inputs:
        pick = [i % rows for i in range(len(completions))]
        return Inputs(completions, {k: [copy.deepcopy(v[i]) for i in pick] for k, v in columns.items()}, extras)

    n = max(len(good), rows)
    return batch([good[i % len(good)] for i in range(n)]), batch(broken)


def _seeded(fn: RewardFn, inputs: Inputs) -> Any:
    random.seed(SEED)
    # Seed only what is loaded: importing torch just to seed it costs seconds.
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(SEED)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(SEED)
    return inputs.call(fn)


def check_signature(fn: RewardFn, good: Inputs, broken: Inputs) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []  # a builtin or C callable: the calls below will tell
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    found = []
    if not positional:
        found.append("takes no positional parameter: a reward is called as fn(completions, **columns)")
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        found.append("has no **columns parameter: TRL passes every dataset column and trainer_state/log_metric "
                     "to every reward; end the signature with **columns")
    given = set(good.columns) | set(good.extras)
    for p in params[1:]:
        required = p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        if required and p.name not in given:
            found.append(f"requires the column {p.name!r}, which these tasks do not have (columns: "
                         f"{', '.join(sorted(good.columns)) or 'none'}); pick its env with --config, or give it a "
                         "default")
    return found


def _value_problems(scores: Any, n: int, declared: tuple[float, float] | None) -> list[str]:
    if not isinstance(scores, list | tuple):
        return [f"returned {type(scores).__name__}: a reward must return a list with one value per completion"]
    if len(scores) != n:
        return [f"returned {len(scores)} scores for {n} completions: a reward must return one value "
                "(float, Score or None) per completion"]
    found = []
    for i, score in enumerate(scores):
        if isinstance(score, Score) and not isinstance(score.reason, str):
            found.append(f"score {i}: Score.reason is {type(score.reason).__name__}, not str")
        value = score_value(score)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            found.append(f"score {i} is {value!r} ({type(value).__name__}): use a float, Score(value, reason) or "
                         "None")
        elif not math.isfinite(value):
            found.append(f"score {i} is {value}: NaN and inf poison the group's advantages; use None to skip")
        elif declared and not declared[0] <= value <= declared[1]:
            found.append(f"score {i} is {value}, outside the declared range {declared}")
    return found[:3]


def check_return(fn: RewardFn, good: Inputs, broken: Inputs) -> list[str]:
    return _value_problems(_seeded(fn, good), len(good.completions), getattr(fn, "reward_range", None))


def check_deterministic(fn: RewardFn, good: Inputs, broken: Inputs) -> list[str]:
    first, second = _seeded(fn, good), _seeded(fn, good)
    if not isinstance(first, list | tuple) or not isinstance(second, list | tuple):
        return []  # check_return says what is wrong with the result
    if [score_value(s) for s in first] != [score_value(s) for s in second]:
        return [f"two calls under the same seed gave different scores ({first[:4]} vs {second[:4]}): seed any "
                "randomness from the inputs, or GRPO's advantages become noise"]
    return []


def check_inputs_unchanged(fn: RewardFn, good: Inputs, broken: Inputs) -> list[str]:
    before = copy.deepcopy(good.columns), [repr(c) for c in good.completions]
    _seeded(fn, good)
    if (good.columns, [repr(c) for c in good.completions]) != before:
        return ["changed its inputs (a column or a completion): the next reward in the config sees the changed "
                "data; work on copies"]
    return []


def check_broken_input(fn: RewardFn, good: Inputs, broken: Inputs) -> list[str]:
    found = []
    empty = Inputs([], {k: [] for k in good.columns}, good.extras)
    for name, inputs in (("broken Harmony (truncated, malformed, no final, no tokens)", broken),
                         ("an empty batch", empty)):
        try:
            scores = _seeded(fn, inputs)
        except Exception as err:  # the finding itself: the guard would score every such batch as an error
            found.append(f"raised {type(err).__name__}: {err} on {name}: score broken output (0.0 or None), "
                         "never raise")
            continue
        found += [f"on {name}: {p}" for p in _value_problems(scores, len(inputs.completions),
                                                             getattr(fn, "reward_range", None))]
    return found


def check_time(fn: RewardFn, good: Inputs, broken: Inputs, max_seconds: float = 1.0) -> list[str]:
    start = time.perf_counter()
    _seeded(fn, good)
    per_completion = (time.perf_counter() - start) / len(good.completions)
    if per_completion > max_seconds:
        return [f"took {per_completion:.2f} s per completion (limit {max_seconds:g} s): a step scores "
                "prompts_per_step * group_size completions with every reward"]
    return []


CHECKS: list[Callable[..., list[str]]] = [check_signature, check_time, check_return, check_deterministic,
                                          check_inputs_unchanged, check_broken_input]
"""In order; `check_time` makes the first call, so a reward that caches its results is timed cold."""


def check_reward(fn: RewardFn, answers: list[str], columns: dict[str, list], extras: dict[str, Any] | None = None,
                 max_seconds: float = 1.0) -> list[Finding]:
    """Run every check on `fn` with completions answering `answers` over the task rows in `columns`.

    Each check gets fresh copies of the inputs, so a reward that changes them is caught by the check for it. A check
    that itself raises becomes one finding naming the exception, and the signature's findings stop the rest (the
    calls would only repeat them).
    """
    good, broken = sample_inputs(answers, columns, extras or {})
    findings: list[Finding] = []
    for check in CHECKS:
        kwargs = {"max_seconds": max_seconds} if check is check_time else {}
        try:
            messages = check(fn, copy.deepcopy(good), copy.deepcopy(broken), **kwargs)  # what one check changes
        except Exception as err:  # a crashing plugin is a finding, not a crash of the checker
            messages = [f"raised {type(err).__name__}: {err} on well-formed answers"]
        name = check.__name__.removeprefix("check_")
        findings += [Finding(name, m) for m in messages]
        if check is check_signature and messages:
            break
    return findings
