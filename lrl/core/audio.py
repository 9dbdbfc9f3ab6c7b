"""Audio decoding: any clip (mp3/wav/flac/ogg with soundfile, anything else through ffmpeg) to a mono
float32 array at the model's sampling rate, resampled with soxr. Failures raise AudioError with a
short machine-readable `reason` (missing, empty_file, truncated, not_audio, non_finite) that data preparation
counts and lists in skipped.tsv. Also the model's audio front-end settings (`default_feature_extractor`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np

from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import LrlError

logger = logging.getLogger(__name__)

# A decoded clip shorter than this share of the frame count its header announces is truncated
# (libsndfile decodes a cut mp3 up to the cut and says nothing; the Xing header still has the length).
TRUNCATED_BELOW = 0.99
FFMPEG_TIMEOUT = 120.0  # seconds for one ffmpeg decode before it is considered hung


class AudioError(LrlError):
    """A clip that cannot be decoded. `reason` is one word for skip tables, `str(e)` the detail."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of `path` as float32 mono at `sample_rate` Hz (channels averaged).

    soundfile (libsndfile: wav, flac, ogg/vorbis/opus, mp3) is tried first; if it cannot open the file,
    ffmpeg decodes it (`-nostdin`, so it never eats a caller's stdin). Raises AudioError.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    if not path.is_file():
        raise AudioError("missing", f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError("empty_file", f"{path}: file is empty (0 bytes)")
    try:
        samples, sr = _read_soundfile(path)
    except AudioError:
        raise
    except Exception as e:  # libsndfile cannot open it: a format it lacks, or not audio at all
        logger.debug("soundfile cannot read %s (%s); trying ffmpeg", path, e)
        samples, sr = _read_ffmpeg(path, sample_rate), sample_rate
    if samples.size == 0:
        raise AudioError("not_audio", f"{path}: decoded to zero samples")
    if not np.isfinite(samples).all():  # a float WAV can hold NaN/Inf: a NaN loss in training, "" when transcribed
        bad = int(samples.size - np.isfinite(samples).sum())
        raise AudioError("non_finite", f"{path}: {bad} of {samples.size} samples are NaN or infinite; "
                                       "re-export the clip from its source")
    if sr != sample_rate:
        import soxr

        samples = soxr.resample(samples, sr, sample_rate, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        expected = f.frames
        sr = f.samplerate
        data = f.read(dtype="float32", always_2d=True)
    if expected > 0 and data.shape[0] < TRUNCATED_BELOW * expected:
        raise AudioError(
            "truncated",
            f"{path}: decoded {data.shape[0] / sr:.2f} s of the {expected / sr:.2f} s its header announces",
        )
    return (data[:, 0] if data.shape[1] == 1 else data.mean(axis=1)), sr


def _read_ffmpeg(path: Path, sample_rate: int) -> np.ndarray:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(
            "not_audio",
            f"{path}: soundfile cannot read it and ffmpeg is not installed (apt-get install ffmpeg)",
        )
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
           "-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=FFMPEG_TIMEOUT)
    except subprocess.CalledProcessError as e:
        msg = e.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError("not_audio", f"{path}: not decodable audio ({msg[-1] if msg else 'ffmpeg failed'})") from e
    except subprocess.TimeoutExpired as e:
        raise AudioError("not_audio", f"{path}: ffmpeg did not finish in {FFMPEG_TIMEOUT:.0f} s") from e
    return np.frombuffer(out.stdout, dtype="<f4").copy()


def default_feature_extractor(sampling_rate: int = SAMPLE_RATE):
    """The `Wav2Vec2FeatureExtractor` lrl uses when a checkpoint brings none: mono input at
    `sampling_rate` Hz, each clip normalised to zero mean and unit variance (as XLS-R and MMS were
    trained), zero padding and an attention mask (layer-norm models must not attend to padding)."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=sampling_rate, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
