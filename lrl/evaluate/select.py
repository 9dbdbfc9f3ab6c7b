"""Choosing what to transcribe next (`lrl data select`): untranscribed clips ranked by how unsure the model
is of them (the mean normalised entropy of its output over the frames where it hears speech), taken in that
order until their durations add up to the hours asked for, with no group (a folder, i.e. a speaker or a
recording session) taking more than its share, so one voice does not fill the list. Writes a TSV in the
order to transcribe.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lrl.core.io import LrlError, atomic_write_text
from lrl.evaluate.inference import CHUNK_SECONDS, STRIDE_SECONDS

logger = logging.getLogger(__name__)

GroupBy = Literal["folder", "none"]
SPEECH_BLANK = 0.5  # a frame is "speech" when the blank's probability is below this
SELECTION_FILE = "selection.tsv"
BLOCK_FILES = 64  # audio files held in memory at a time


@dataclass(frozen=True)
class SelectConfig:
    """How much audio to choose and how the choice is spread."""

    hours: float = 1.0  # transcription budget: the chosen clips' durations add up to at most this
    max_group_share: float = 0.25  # most of `hours` one group may take (1 = no cap; never below 1/groups)
    group_by: GroupBy = "folder"  # what a group is: the clip's folder (a speaker/session), or none
    batch_seconds: float = 60.0  # seconds of padded audio per forward pass
    chunk_seconds: float = CHUNK_SECONDS  # clips longer than this run in overlapping chunks
    stride_seconds: float = STRIDE_SECONDS  # context on each side of a chunk, dropped when merging
    threads: int = 0  # torch CPU threads; 0 = automatic (lrl.core.cpu.choose_threads)
    allow_pickle: bool = False  # also load pickle (pytorch_model.bin) weights: only from sources you trust

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"hours must be > 0, got {self.hours}")
        if not 0 < self.max_group_share <= 1:
            raise ValueError(f"max_group_share must be in (0, 1], got {self.max_group_share}")
        if self.group_by not in ("folder", "none"):
            raise ValueError(f"group_by must be 'folder' or 'none', got {self.group_by!r}")
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")


@dataclass
class Candidate:
    path: str
    duration: float  # seconds
    score: float  # uncertainty in [0, 1]: higher = the model knows less
    group: str = ""


@dataclass
class Selected(Candidate):
    cumulative_hours: float = 0.0


def uncertainty(logp: np.ndarray) -> float:
    """Mean entropy of the output distribution / ln(vocabulary size) over the speech frames (blank below
    SPEECH_BLANK; all frames when there are none): 0 = sure of every character, 1 = no idea."""
    if len(logp) == 0:
        return 1.0
    p = np.exp(logp.astype(np.float64))
    speech = p[:, 0] < SPEECH_BLANK
    frames = p[speech] if speech.any() else p
    ent = -(frames * np.where(frames > 0, np.log(np.maximum(frames, 1e-30)), 0.0)).sum(axis=1)
    return float(ent.mean() / math.log(logp.shape[1]))


def choose(candidates: list[Candidate], config: SelectConfig) -> list[Selected]:
    """The most uncertain candidates first, as long as the total stays within `hours` and no group passes
    `max_group_share` of it (the cap is never below an equal share per group, so a few groups can fill it)."""
    budget = config.hours * 3600
    groups = {c.group for c in candidates}
    cap = budget * max(config.max_group_share, 1 / max(len(groups), 1))
    used: dict[str, float] = {}
    total, out = 0.0, []
    for c in sorted(candidates, key=lambda c: (-c.score, c.path)):
        if total + c.duration > budget or used.get(c.group, 0.0) + c.duration > cap:
            continue
        total += c.duration
        used[c.group] = used.get(c.group, 0.0) + c.duration
        out.append(Selected(c.path, c.duration, c.score, c.group, total / 3600))
    if total < 0.9 * budget and sum(c.duration for c in candidates) > total:
        logger.warning("%.2f of %.2f h chosen: the group cap (%.0f%% of the hours per %s) left the rest out; raise "
                       "--max-group-share to fill the budget", total / 3600, config.hours, 100 * cap / budget,
                       config.group_by)
    return out


def select(model_dir: str | Path, inputs: list[str | Path], config: SelectConfig | None = None,
           out: str | Path = SELECTION_FILE) -> list[Selected]:
    """Score every audio file of `inputs` (folders searched recursively) with the model and write the clips
    to transcribe, in order, to `out` (TSV: path, duration, score, cumulative_hours, group)."""
    from lrl.core import audio
    from lrl.evaluate.inference import AcousticModel, chunked_log_probs
    from lrl.evaluate.transcribe import TranscribeConfig, _audio_files

    config = config or SelectConfig()
    files, empty = _audio_files(inputs)
    for e in empty:
        logger.warning("%s", e.error)
    am = AcousticModel(model_dir, threads=config.threads, allow_pickle=config.allow_pickle)
    chunking = TranscribeConfig(chunk_seconds=config.chunk_seconds, stride_seconds=config.stride_seconds)
    candidates: list[Candidate] = []
    for start in range(0, len(files), BLOCK_FILES):
        block = files[start:start + BLOCK_FILES]
        waves = []
        for f in block:
            try:
                waves.append(audio.load_audio(f, am.sample_rate))
            except (LrlError, ValueError, OSError) as e:
                logger.warning("%s: skipped, cannot be read (%s)", f, " ".join(str(e).split()))
                waves.append(None)
        ok = [(f, w) for f, w in zip(block, waves, strict=True) if w is not None]
        short = [w for _, w in ok if len(w) <= config.chunk_seconds * am.sample_rate]
        batched = iter(am.log_probs(short, config.batch_seconds))
        for f, w in ok:
            lp = next(batched) if len(w) <= config.chunk_seconds * am.sample_rate else chunked_log_probs(am, w, chunking)
            group = str(f.parent) if config.group_by == "folder" else ""
            candidates.append(Candidate(str(f), len(w) / am.sample_rate, uncertainty(lp), group))
    chosen = choose(candidates, config)
    atomic_write_text(out, "path\tduration\tscore\tcumulative_hours\tgroup\n" + "".join(
        f"{s.path}\t{s.duration:.3f}\t{s.score:.4f}\t{s.cumulative_hours:.4f}\t{s.group}\n" for s in chosen))
    return chosen
