"""Which checkpoints are complete, and resuming from the newest one.

transformers writes `checkpoint-N/` in place (adapters, optimizer, scheduler, RNG, trainer state with the data
position), so a kill during a save leaves a partial folder. A `COMPLETE` marker, renamed into place after the
whole save, tells finished checkpoints apart; resuming skips unmarked ones.
"""

import os
import re
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

MARKER = "COMPLETE"


class CompleteMarker(TrainerCallback):
    """Marks `checkpoint-N/` complete once transformers has written all of it (on_save runs after the save).

    Under accelerate launch every process writes its own RNG state into the folder and the main process the rest, so
    the processes wait for each other, then the main one marks it.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tmp = folder / f".{MARKER}.tmp"
        tmp.write_text(f"{state.global_step}\n")
        os.replace(tmp, folder / MARKER)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / MARKER).exists()]
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])
