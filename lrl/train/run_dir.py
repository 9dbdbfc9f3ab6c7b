"""Checkpoints in a run's output directory, for fine-tuning (the HF Trainer's OUT/checkpoint-<step>) and
continued pretraining (lrl.train.pretrain's own): which exist, which were completely written (their
trainer_state.json is saved last), the newest complete one to resume from, and pruning to the newest few.
Also the guards on what a run writes there: one run at a time (a lock), a resume that matches the run
(vocabulary, data, start), no checkpoint with NaN/Inf weights, and the bound on non-finite losses in a row.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from lrl.core import locks
from lrl.core.io import LrlError

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


# -- guards on what a run writes into its output directory -----------------------------------------------
LOCK_FILE = ".lrl.lock"  # OUT/.lrl.lock: flock-ed by the run writing OUT (its pid inside); kept, never the lock itself
# A stray bad batch (one clip with NaN/Inf samples, a diverging micro-batch) is skipped and counted; this many
# batches (fine-tuning) or updates (pretraining) in a row with a non-finite loss means every batch is bad (the
# data, or an LR that diverged), so the run stops with an error instead of "training" a model that never moves.
MAX_NONFINITE_IN_A_ROW = 5


@contextmanager
def run_lock(out: str | Path, command: str) -> Iterator[None]:
    """Hold an exclusive lock on the output directory `out` (created if missing) while the body runs: a
    second run on the same `out` fails at once with a clear error instead of interleaving checkpoints. The
    lock dies with the process (flock), so a killed run never blocks the next one. Only rank 0 locks
    (torchrun starts every rank on the same `out`). When the body fails and `out` was created here and
    holds nothing but the lock file, `out` is removed again: a failed start leaves no empty directory."""
    out = Path(out)
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise LrlError(f"--out {out} is a file: expected a directory (new or of an earlier run); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    with locks.exclusive(path, f"`lrl {command}`, pid {os.getpid()}", busy=lambda holder: (
            f"{out} is in use by another run ({holder}): wait for it to finish, or choose another --out")):
        try:
            yield
        except BaseException:
            if created and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
                path.unlink(missing_ok=True)
                with suppress(OSError):  # a new run on the same OUT may have just created its lock there
                    out.rmdir()
            raise


def check_finite_weights(model, what: str) -> None:
    """Refuse to save `model` when a parameter holds NaN or Inf (`what` names the file about to be written)."""
    import torch

    for name, p in model.named_parameters():
        if not torch.isfinite(p.detach()).all():
            raise LrlError(
                f"not writing {what}: parameter {name} holds NaN/Inf values (training diverged); lower the LR, "
                "check the audio for non-finite samples, and resume from an earlier checkpoint"
            )


def check_resume(out: str | Path, checkpoint: str | Path, config_file: Path, token_to_id: dict[str, int],
                 now: dict[str, object]) -> None:
    """Before a fine-tuning run continues `checkpoint` of `out`, compare what fixes the model's parameters and
    its data with the run's own: the vocabulary saved in the checkpoint (vocab.json: a different one gives a
    head of another size, or silently permuted labels), and the saved config `config_file` (the starting
    checkpoint, adapter mode and the number of training clips: `now` holds "model.checkpoint",
    "model.adapter_lang", "data.path" and "train_clips" of this run). Raises LrlError naming every
    difference; reads only, so a refused resume leaves the run's directory as it was."""
    import yaml

    checkpoint = Path(checkpoint)
    diffs: list[str] = []
    vocab_file = checkpoint / "vocab.json"
    if vocab_file.is_file():
        try:
            saved_vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise LrlError(f"{vocab_file}: unreadable ({e}); the checkpoint is damaged: resume from another "
                           "or start a new run with another --out") from e
        if saved_vocab != token_to_id:
            new = sorted(set(token_to_id) - set(saved_vocab))
            gone = sorted(set(saved_vocab) - set(token_to_id))
            what = ", ".join(p for p in (f"new {new}" if new else "", f"missing {gone}" if gone else "") if p)
            diffs.append(f"the dataset's vocabulary ({len(token_to_id)} tokens) is not the run's ({len(saved_vocab)} "
                         f"tokens in {vocab_file}): {what or 'the same tokens with other ids'}")
    saved: dict = {}
    if config_file.is_file():
        try:
            saved = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise LrlError(f"{config_file}: not readable YAML ({e}); cannot check that the resume matches the run") from e

    def get(key: str):
        node = saved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    before, after = get("resolved.train_clips"), now.get("train_clips")
    if before is not None and before != after:
        diffs.append(f"the run trained on {before} clips of {get('data.path')}, this dataset ({now.get('data.path')}) "
                     f"has {after}")
    for key in ("model.checkpoint", "model.adapter_lang"):
        if saved and not _same(get(key), now.get(key)):
            diffs.append(f"{key} was {get(key)!r}, now {now.get(key)!r}")
    if diffs:
        raise LrlError(
            f"cannot resume {out} from {checkpoint.name}: " + "; ".join(diffs) + f". Resume with the run's own "
            f"settings ({config_file} loads with -c), or start a new run with another --out"
        )
    if saved and not _same(get("data.path"), now.get("data.path")):
        logger.info("resuming with data.path %s (the run's was %s): same clips and vocabulary", now.get("data.path"),
                    get("data.path"))


def _same(a, b) -> bool:
    """Equal settings: the same value, or two spellings of one existing local path (relative vs absolute)."""
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(a).resolve() == Path(b).resolve()
