"""Built-in rewards on Harmony structure: did the completion end its turn properly, and can its tool call be run.

They score form, not content, so they are shaping terms next to a task reward. Each takes the parsed completions
(`oss_grpo.rl.harmony.ParsedCompletion`) and returns one score per completion; None means "does not apply" (TRL
leaves it out of that reward's advantage).
"""

import json
from typing import Any

from oss_grpo.rewards.registry import reward
from oss_grpo.rl.harmony import ParsedCompletion, stop_token_ids


@reward("harmony_final_answer", range=(0.0, 1.0))
def final_answer_present(completions: list[ParsedCompletion], **columns: Any) -> list[float]:
    """1.0 when the completion ends its turn with a non-empty answer on the final channel, else 0.0.

    Range {0.0, 1.0}. The answer must be the last message and the completion must stop cleanly on `<|return|>`: an
    answer on the analysis or commentary channel, a blank answer, or a truncated or malformed completion scores 0.

    >>> from oss_grpo.rl.harmony import harmony_encoding, parse_completion
    >>> def parse(text): return parse_completion(harmony_encoding().encode(text, allowed_special="all"))
    >>> final_answer_present([
    ...     parse("<|channel|>analysis<|message|>easy<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"),
    ...     parse("<|channel|>commentary<|message|>4<|return|>"),
    ...     parse("<|channel|>final<|message|> <|return|>"),
    ...     parse("<|channel|>final<|message|>4"),
    ... ])
    [1.0, 0.0, 0.0, 0.0]
    """
    return [
        float(c.error is None and c.stop == "return" and bool(c.messages) and c.messages[-1].channel == "final"
              and c.messages[-1].content.strip() != "")
        for c in completions
    ]


@reward("harmony_tool_call", range=(0.0, 1.0))
def tool_call_well_formed(
    completions: list[ParsedCompletion], tools: list[list[dict] | None] | None = None, **columns: Any
) -> list[float | None]:
    """1.0 when a tool call can be executed as is, 0.0 when it cannot, None for completions that call no tool.

    Range {0.0, 1.0} or None. Executable means: the completion stops cleanly on `<|call|>`; the call goes to
    `functions.NAME` with NAME one of the completion's `tools` (the dataset column of OpenAI function definitions,
    when there is one); its content type is `<|constrain|>json`; its content is a JSON object; and it has every
    `required` parameter of that tool's schema.

    >>> from oss_grpo.rl.harmony import harmony_encoding, parse_completion
    >>> def parse(text): return parse_completion(harmony_encoding().encode(text, allowed_special="all"))
    >>> move = {"type": "function", "function": {"name": "move", "parameters": {
    ...     "type": "object", "properties": {"dir": {"type": "string"}}, "required": ["dir"]}}}
    >>> call = " to=functions.{}<|channel|>commentary <|constrain|>json<|message|>{}<|call|>"
    >>> tool_call_well_formed([
    ...     parse(call.format("move", '{"dir": "left"}')),
    ...     parse(call.format("move", '{"dir": "left"')),
    ...     parse(call.format("move", '{}')),
    ...     parse(call.format("jump", '{"dir": "left"}')),
    ...     parse("<|channel|>final<|message|>left<|return|>"),
    ... ], tools=[[move]] * 5)
    [1.0, 0.0, 0.0, 0.0, None]
    """
    scores: list[float | None] = []
    for i, completion in enumerate(completions):
        if completion.stop != "call":
            scores.append(None)
            continue
        declared = None if tools is None or tools[i] is None else {
            spec["name"]: spec for spec in (t.get("function", t) for t in tools[i])}
        scores.append(float(completion.error is None and _executable(completion.messages[-1], declared)))
    return scores


def _executable(call: Any, declared: dict[str, dict] | None) -> bool:
    name = (call.recipient or "").removeprefix("functions.")
    if not (call.recipient or "").startswith("functions.") or (declared is not None and name not in declared):
        return False
    if call.content_type != "<|constrain|>json":
        return False
    try:
        arguments = json.loads(call.content)
    except json.JSONDecodeError:
        return False
    required = ((declared or {}).get(name, {}).get("parameters") or {}).get("required", [])
    return isinstance(arguments, dict) and all(key in arguments for key in required)


@reward("harmony_clean_stop", range=(0.0, 1.0))
def nothing_after_stop(completions: list[ParsedCompletion], **columns: Any) -> list[float]:
    """0.0 when ids follow the completion's first `<|return|>` or `<|call|>`, else 1.0.

    Range {0.0, 1.0}. A generator that stops on both tokens never produces such ids, so a 0 here points at the
    sampling set-up (a missing stop id) as much as at the model. Truncated completions score 1: the other rewards
    judge those.

    >>> from oss_grpo.rl.harmony import harmony_encoding, parse_completion
    >>> def parse(text): return parse_completion(harmony_encoding().encode(text, allowed_special="all"))
    >>> nothing_after_stop([parse("<|channel|>final<|message|>up<|return|>"),
    ...                     parse("<|channel|>final<|message|>up<|return|>down")])
    [1.0, 0.0]
    """
    stops = set(stop_token_ids())
    return [
        float(next((i for i, t in enumerate(c.tokens) if t in stops), len(c.tokens)) >= len(c.tokens) - 1)
        for c in completions
    ]
