"""A newcomer follows README.md and docs/QUICKSTART.md literally, and it works.

Kept cheap for CI: README command 2 (install + tests) is exactly what `.ci/run` executes, so CI *is* that step run
word for word (checked here, not repeated). README command 1's install is command 2's minus the extras, and its
60-step training is the 2-step training below at full length (tests/test_cli.py also trains the default), so neither
is re-run. What runs is QUICKSTART's "first minutes" block, every line as written through bash, in a scratch folder
that sees the repo's configs/ and docs/: a 2-step training, its evaluation, and the plugin guide's example through
check-plugin (the guide's own steps are tests/test_plugins_guide.py).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.DOTALL)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_quickstart_starts_with_the_readme_commands() -> None:
    assert bash_blocks(REPO / "docs" / "QUICKSTART.md")[0] == bash_blocks(REPO / "README.md")[0]


def test_ci_runs_readme_command_2_word_for_word() -> None:
    install, tests = commands(bash_blocks(REPO / "README.md")[0])
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert [line.replace(" -q", "") for line in ci] == [tests]  # pip's -q only quiets CI's log
    assert install.split(" -e ")[0] == tests.split(" -e ")[0]  # the same venv and torch; command 2 adds extras


def test_first_minutes_run_as_written(tmp_path: Path) -> None:
    for name in ("configs", "docs"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TRL_EXPERIMENTAL_SILENCE": "1"}
    train, evaluate, check = commands(bash_blocks(REPO / "docs" / "QUICKSTART.md")[1])
    results = [subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900) for line in (train, evaluate, check)]
    for line, result in zip((train, evaluate, check), results):
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "estimated memory:" in results[0].stdout and (tmp_path / "runs/quickstart/final").is_dir()
    table = results[1].stdout.splitlines()
    header = next(i for i, row in enumerate(table) if row.split() == ["metric", "value"])
    assert [row.split()[0] for row in table[header + 1 : header + 3]] == ["boards", "mean_move_reward"]
    saved = json.loads((tmp_path / "runs/quickstart/eval-final.json").read_text())["metrics"]
    assert saved["boards"] == 8 and saved["games"] == 2
    assert "all checks passed" in results[2].stdout
