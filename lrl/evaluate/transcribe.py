"""Transcribing audio files: `TranscribeConfig` (chunk length, context stride, LM on or off), `transcribe`,
which runs every file through the model in overlapping chunks (`inference.chunked_log_probs`) and decodes
it, and `Transcript`, the text with word start/end times from the CTC frames.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from lrl.core.constants import AUDIO_SUFFIXES
from lrl.core.io import LrlError
from lrl.evaluate.inference import CHUNK_SECONDS, STRIDE_SECONDS, AcousticModel, chunked_log_probs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TranscribeConfig:
    """How long audio is cut and decoded."""

    chunk_seconds: float = CHUNK_SECONDS  # audio per forward pass
    stride_seconds: float = STRIDE_SECONDS  # context on each side of a chunk whose frames are dropped when merging
    use_lm: bool = True  # beam search with the model's LM (MODEL/language_model) when there is one

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


def transcribe(model_dir: str | Path, inputs: list[str | Path], config: TranscribeConfig | None = None,
               lm: str | Path | None = None) -> list[Transcript]:
    """Transcribe audio files (folders are searched for audio) with the model and, if present, its LM;
    word times come from the CTC frames of each word (frame = conv stride / sampling rate)."""
    from lrl.core.audio import load_audio
    from lrl.core.io import iter_files
    from lrl.decode.decoder import CTCDecoder

    config = config or TranscribeConfig()
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = list(iter_files(p, AUDIO_SUFFIXES))
            if not found:
                logger.warning("no audio files (%s) under %s", " ".join(AUDIO_SUFFIXES), p)
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise LrlError(f"{p}: no such file or directory")
    am = AcousticModel(model_dir)
    decoder = CTCDecoder.load(model_dir, lm=lm)
    use_lm = config.use_lm and decoder.has_lm
    waves, logps = [], []
    for f in files:
        wave = load_audio(f, am.sample_rate)
        waves.append(wave)
        logps.append(chunked_log_probs(am, wave, config))
    with decoder:
        hyps = decoder.decode_batch(logps) if use_lm else [decoder.greedy(lp) for lp in logps]
    fs = am.frame_seconds
    return [
        Transcript(str(f), h.text, round(len(w) / am.sample_rate, 3),
                   [{"word": x.word, "start": round(x.start * fs, 3), "end": round(x.end * fs, 3)} for x in h.words])
        for f, w, h in zip(files, waves, hyps, strict=True)
    ]
