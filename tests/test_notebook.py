"""notebooks/gpt_oss_grpo.ipynb runs top to bottom on the CPU (its tiny path), headless, as a Colab user runs it.

The parameters are overridden the way papermill does it: a cell inserted after the one tagged `parameters`, here with
2 steps and a small evaluation so the whole notebook takes a couple of CPU minutes.
"""

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "gpt_oss_grpo.ipynb"


def test_tiny_path_trains_plots_evaluates_and_exports(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    run = tmp_path / "run"
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f'TINY = True\nSTEPS = 2\nTRAIN = ["--set", "prompts_per_step=2", "--set", "samples_every=1", "--set", '
        f'"micro_batch_size=4"]\n'  # micro-batches: gradient accumulation is exercised end to end here
        f'EVAL = ["--set", "eval_tasks=4", "--set", "eval_games=2", "--set", "eval_max_moves=3"]\nRUN = "{run}"'))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the reward-curve cell drew no inline plot"
    evaluated = json.loads((run / "eval-final.json").read_text())["metrics"]
    assert evaluated["boards"] == 4 and evaluated["games"] == 2
    shown = [o for o in outputs if "mean_move_reward" in str(o.get("data", {}).get("text/plain", ""))]
    assert shown, "the eval cell did not show the metrics"
    assert (run / "export" / "adapter" / "adapter_model.safetensors").exists()
    assert (run / "samples.md").exists() and (run / "completion_length.png").exists()
