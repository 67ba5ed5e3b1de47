"""docs/PLUGINS.md works as written: its example plugin passes check-plugin and trains for a step."""

import re
from pathlib import Path

import pytest

from oss_grpo.rl.cli import check_plugin

REPO = Path(__file__).resolve().parents[1]
GUIDE = (REPO / "docs" / "PLUGINS.md").read_text()
EXAMPLE_ID = "docs/examples/my_reward.py:corner_reward"


def test_the_guide_shows_the_tested_example() -> None:
    shown = re.search(r"```python\n(.*?)```", GUIDE, re.DOTALL).group(1)
    example = (REPO / "docs" / "examples" / "my_reward.py").read_text()
    for line in shown.splitlines():
        code = line.split("#")[0].rstrip()
        if code and code.strip() != "...":
            assert code in example, f"the guide shows {code!r}, which docs/examples/my_reward.py does not have"
    assert f"oss-grpo check-plugin {EXAMPLE_ID}" in GUIDE and "oss-grpo train docs/examples/corner.yaml" in GUIDE


def test_the_example_passes_check_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the guide's ids are paths from the repo root
    assert check_plugin(EXAMPLE_ID, None, [], max_seconds=1.0) == 0


def test_one_training_step_with_the_example(train_one_step) -> None:
    row = train_one_step("docs/examples/corner.yaml")
    assert row[f"rewards/{EXAMPLE_ID}/errors"] == 0 and 0.0 <= row[f"rewards/{EXAMPLE_ID}/mean"] <= 1.0, row
