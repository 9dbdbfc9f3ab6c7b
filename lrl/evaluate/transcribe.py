"""Transcribing audio files: `TranscribeConfig` (chunk length, context stride, LM on or off),
`iter_transcripts`, which runs each file through the model in overlapping chunks
(`inference.chunked_log_probs`), decodes it and yields it before reading the next (a file that cannot be
read is yielded as a `TranscribeFailure` and the rest go on), `transcribe` (all of them, or the first error),
and `Transcript`, the text with word start/end times from the CTC frames.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from lrl.core.constants import AUDIO_SUFFIXES
from lrl.core.io import LrlError
from lrl.evaluate.inference import (
    CHUNK_SECONDS,
    STRIDE_SECONDS,
    AcousticModel,
    chunked_log_probs,
    load_decoder,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscribeConfig:
    """How long audio is cut and decoded."""

    chunk_seconds: float = CHUNK_SECONDS  # audio per forward pass
    stride_seconds: float = STRIDE_SECONDS  # context on each side of a chunk whose frames are dropped when merging
    use_lm: bool = True  # beam search with the model's LM (MODEL/language_model) when there is one
    allow_pickle: bool = False  # also load pickle (pytorch_model.bin) weights: only from sources you trust

    def __post_init__(self) -> None:
        if self.chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {self.chunk_seconds}")
        if not 0 <= self.stride_seconds < self.chunk_seconds / 2:
            raise ValueError(f"stride_seconds must be in [0, chunk_seconds/2 = {self.chunk_seconds / 2:g}), got "
                             f"{self.stride_seconds}")


@dataclass
class Transcript:
    path: str
    text: str
    duration: float
    words: list[dict]  # {"word", "start", "end"} in seconds

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TranscribeFailure:
    """An input that could not be transcribed, and why (one line that names it)."""

    path: str
    error: str


def _audio_files(inputs: list[str | Path]) -> tuple[list[Path], list[TranscribeFailure]]:
    """The audio files of `inputs` (folders searched recursively); a folder without audio is a failure, and
    when nothing at all is found that is an LrlError."""
    from lrl.core.io import iter_files

    files: list[Path] = []
    empty: list[TranscribeFailure] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = list(iter_files(p, AUDIO_SUFFIXES))
            if not found:
                empty.append(TranscribeFailure(str(p), f"{p}: no audio files ({' '.join(AUDIO_SUFFIXES)}) under it"))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise LrlError(f"{p}: no such file or directory")
    if not files:
        raise LrlError(empty[0].error if empty else "no audio files given")
    return files, empty


def iter_transcripts(model_dir: str | Path, inputs: list[str | Path], config: TranscribeConfig | None = None,
                     lm: str | Path | None = None) -> Iterator[Transcript | TranscribeFailure]:
    """Transcribe audio files (folders are searched for audio) with the model and, if present, its LM, one
    file at a time: each result is yielded before the next file is read. A file that cannot be decoded (empty,
    not audio, NaN/Inf samples...) is yielded as a `TranscribeFailure` and the others go on; a model or LM
    that cannot be loaded raises LrlError before any file. Word times come from the CTC frames of each word
    (frame = conv stride / sampling rate)."""
    from lrl.core import audio

    config = config or TranscribeConfig()
    files, empty = _audio_files(inputs)
    am = AcousticModel(model_dir, allow_pickle=config.allow_pickle)
    decoder = load_decoder(model_dir, lm=lm, use_lm=config.use_lm)
    fs = am.frame_seconds
    yield from empty
    with decoder:
        for f in files:
            try:
                wave = audio.load_audio(f, am.sample_rate)
                logp = chunked_log_probs(am, wave, config)
                h = decoder.decode(logp) if decoder.has_lm else decoder.greedy(logp)
            except (LrlError, ValueError, OSError, RuntimeError) as e:
                msg = " ".join(str(e).split())
                yield TranscribeFailure(str(f), msg if str(f) in msg else f"{f}: {msg}")
                continue
            words = [{"word": x.word, "start": round(x.start * fs, 3), "end": round(x.end * fs, 3)} for x in h.words]
            yield Transcript(str(f), h.text, round(len(wave) / am.sample_rate, 3), words)


def transcribe(model_dir: str | Path, inputs: list[str | Path], config: TranscribeConfig | None = None,
               lm: str | Path | None = None) -> list[Transcript]:
    """Every transcript of `iter_transcripts`; the first file that cannot be transcribed raises LrlError."""
    out = []
    for t in iter_transcripts(model_dir, inputs, config, lm):
        if isinstance(t, TranscribeFailure):
            raise LrlError(t.error)
        out.append(t)
    return out
