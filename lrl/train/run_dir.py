"""Checkpoints in a run's output directory, for fine-tuning (the HF Trainer's OUT/checkpoint-<step>) and
continued pretraining (lrl.train.pretrain's own): which exist, which were completely written (their
trainer_state.json is saved last), the newest complete one to resume from, and pruning to the newest few.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"  # OUT/checkpoint-<step>: the HF Trainer's naming, pretrain uses it too
STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks a complete one


def checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every OUT/checkpoint-<step> directory, complete or not, oldest first."""
    found = []
    for p in Path(out).glob(f"{CHECKPOINT_PREFIX}*"):
        step = p.name[len(CHECKPOINT_PREFIX):]
        if step.isdigit() and p.is_dir():
            found.append((int(step), p))
    return sorted(found)


def complete_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of the checkpoints holding trainer_state.json, oldest first."""
    return [(s, p) for s, p in checkpoints(out) if (p / STATE_FILE).is_file()]


def last_complete_checkpoint(out: str | Path) -> str | None:
    """The newest checkpoint-N of `out` that was completely written (trainer_state.json is saved last).
    Partial ones newer than it (a run killed while saving) are removed with a warning."""
    for _, p in reversed(checkpoints(out)):
        if (p / STATE_FILE).is_file():
            return str(p)
        if int(os.environ.get("RANK", "0")) == 0:
            logger.warning("%s was not completely written (the run stopped while saving): removing it", p)
            shutil.rmtree(p, ignore_errors=True)
    return None


def prune_checkpoints(out: str | Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoint directories of `out`."""
    for _, p in checkpoints(out)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
