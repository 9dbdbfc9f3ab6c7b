"""`write_report`: one self-contained HTML page from one or more evaluated runs (`ReportConfig` says which
split, how audio is included and how much of each ranking to show). Reads files only; writes OUT (and,
with audio="link", OUT's _audio folder beside it) atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from lrl.core.io import LrlError, atomic_write_text
from lrl.report.align import Op, word_ops
from lrl.report.audio import MAX_CLIP_SECONDS, AudioMode, choose_kbps, clip_sources
from lrl.report.collect import Run, collect

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"  # the name lrl evaluate and lrl demo give the page
SIZE_WARN_MB = 10.0  # a page above this opens slowly in a browser: say so and suggest --audio link


@dataclass(frozen=True)
class ReportConfig:
    """What `write_report` shows."""

    split: str = "test"  # the split of each RUN (RUN/eval-<split>/)
    audio: AudioMode = "embed"  # embed: clips in the page; link: OUT_audio/ beside it; none: no players
    data: str | None = None  # prepared dataset for audio and speakers (default: the one in summary.json)
    suspects: str | None = None  # check-labels suspects TSV (id, score[, kind]); default MODEL/check-labels-<split>/
    top_confusions: int = 12  # character substitutions in the confusion heatmap
    top_words: int = 20  # word errors listed
    top_speakers: int = 20  # speakers in the WER-by-speaker chart (those with most utterances)

    def __post_init__(self) -> None:
        if not self.split:
            raise ValueError("split must be a split name such as 'test' or 'dev'")
        if self.audio not in get_args(AudioMode):
            raise ValueError(f"audio must be one of {list(get_args(AudioMode))}, got {self.audio!r}")
        for f in ("top_confusions", "top_words", "top_speakers"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")


@dataclass
class RunView:
    """A run with its word alignments (greedy and, when evaluated with an LM, LM)."""

    run: Run
    greedy: dict[str, list[Op]]  # utterance id -> ops
    lm: dict[str, list[Op]] | None

    def final(self, uid: str) -> list[Op] | None:
        table = self.lm if self.lm is not None else self.greedy
        return table.get(uid)


def analyse(run: Run) -> RunView:
    ids = [u.id for u in run.utterances]
    refs = [u.ref for u in run.utterances]
    greedy = dict(zip(ids, word_ops(refs, [u.greedy for u in run.utterances]), strict=True))
    lm = None
    if run.has_lm:
        lm = dict(zip(ids, word_ops(refs, [u.lm or "" for u in run.utterances]), strict=True))
    return RunView(run, greedy, lm)


@dataclass
class ReportResult:
    path: Path
    bytes: int
    rows: int  # utterance rows in the table
    runs: int
    audio: AudioMode
    clips: int  # rows with an audio player
    kbps: int = 0  # MP3 rate of the clips (0: no audio)

    def line(self) -> str:
        audio = f"audio {self.audio}" + (f" ({self.clips} clips, MP3 {self.kbps} kbit/s)" if self.clips else "")
        return f"{self.path}: {self.rows} utterances, {self.runs} run(s), {self.bytes / 1e6:.1f} MB, {audio}"


def write_report(runs: list[str | Path], out: str | Path, config: ReportConfig | None = None) -> ReportResult:
    """Collect each RUN (an eval-<split> folder, a model folder or a demo output), align its hypotheses and
    write one HTML page to OUT that opens offline: summary, curves, heatmap, WER by length and speaker,
    confusions, and the per-utterance table (several RUNs side by side)."""
    from lrl.report.html import render

    config = config or ReportConfig()
    if not runs:
        raise LrlError("no RUN given: pass an evaluation folder, a model folder or a demo output")
    out = Path(out)
    if out.is_dir():
        raise LrlError(f"{out} is a folder: --out takes the HTML file to write, e.g. {out / REPORT_FILE}")
    collected = [collect(r, config.split, data=config.data, suspects=config.suspects) for r in runs]
    names = [c.name for c in collected]
    for i, c in enumerate(collected):  # two models called "model": tell them apart
        if names.count(c.name) > 1:
            c.name = f"{c.name} ({i + 1})"
    views = [analyse(c) for c in collected]
    groups = [(c.data_dir, c.split, {u.id for u in c.utterances}) for c in collected if c.data_dir is not None]
    seconds = sum(min(u.duration, MAX_CLIP_SECONDS) for u in {u.id: u for c in collected for u in c.utterances}.values())
    kbps = choose_kbps(seconds, config.audio)
    audio = clip_sources(groups, config.audio, out, kbps=kbps)
    page = render(views, audio, config)
    atomic_write_text(out, page)
    size = len(page.encode("utf-8"))
    ids = {u.id for c in collected for u in c.utterances}
    if size > SIZE_WARN_MB * 1e6:
        logger.warning("%s is %.1f MB (%d utterances): browsers open it slowly; --audio link writes the clips "
                       "beside the page instead", out, size / 1e6, len(ids))
    return ReportResult(path=out, bytes=size, rows=len(ids), runs=len(views), audio=config.audio,
                        clips=sum(uid in audio for uid in ids), kbps=kbps if audio else 0)
