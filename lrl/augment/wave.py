"""Waveform augmentation for training audio: one frozen config per transform (audiomentations, plus
Kaldi-style speed perturbation), presets, and the augmenter, which draws every clip from one seed with a
distinct stream per call, dataloader worker and rank. Eval splits are never augmented.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lrl.core.constants import AUDIO_SUFFIXES, SAMPLE_RATE

logger = logging.getLogger(__name__)

_GLOBAL_RNG_LOCK = threading.Lock()  # audiomentations draws from `random` and `np.random`: one user at a time


# -- validation helpers --------------------------------------------------------------------------------
def _check_p(p: float, name: str = "p") -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _check_range(lo: float, hi: float, lo_name: str, hi_name: str, bounds: tuple[float, float]) -> None:
    a, b = bounds
    for v, n in ((lo, lo_name), (hi, hi_name)):
        if not a <= v <= b:
            raise ValueError(f"{n} must be in [{a}, {b}], got {v!r}")
    if lo > hi:
        raise ValueError(f"{lo_name} must be <= {hi_name}, got {lo_name}={lo!r} > {hi_name}={hi!r}")


def _check_folder(folder: str, name: str) -> None:
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{name} must be an existing folder of audio files, got {folder!r} (no such folder)")
    if not any(p.suffix.lower() in AUDIO_SUFFIXES for p in path.rglob("*") if p.is_file()):
        raise ValueError(f"{name}: no audio files ({', '.join(AUDIO_SUFFIXES)}) under {folder!r}")


# -- one config per transform (all frozen; `p` is the probability each clip gets it) -------------------------
@dataclass(frozen=True)
class SpeedConfig:
    """Kaldi-style speed perturbation: tempo and pitch change together (a resample played at the old rate)."""

    p: float = 1.0  # probability of drawing a factor at all
    factors: tuple[float, ...] = (0.9, 1.0, 1.1)  # drawn uniformly; >1 is faster, length becomes len/factor

    def __post_init__(self) -> None:
        _check_p(self.p)
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        if not self.factors or not all(0.5 <= f <= 2.0 for f in self.factors):
            raise ValueError(f"factors must be a non-empty list of speeds in [0.5, 2.0], got {list(self.factors)}")


@dataclass(frozen=True)
class StretchConfig:
    """Time stretch without pitch change (signalsmith); the clip length changes, no speech is cut."""

    p: float = 0.2  # probability
    min_rate: float = 0.9  # slowest rate (<1 is slower, longer)
    max_rate: float = 1.1  # fastest rate

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_rate, self.max_rate, "min_rate", "max_rate", (0.5, 2.0))


@dataclass(frozen=True)
class PitchConfig:
    """Pitch shift without tempo change (signalsmith)."""

    p: float = 0.2  # probability
    min_semitones: float = -2.0  # lowest shift, semitones
    max_semitones: float = 2.0  # highest shift, semitones

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_semitones, self.max_semitones, "min_semitones", "max_semitones", (-12.0, 12.0))


@dataclass(frozen=True)
class NoiseConfig:
    """Additive noise at a random SNR: white (Gaussian) when both decays are 0, else coloured."""

    p: float = 0.3  # probability
    min_snr_db: float = 20.0  # lowest signal-to-noise ratio, dB (more noise)
    max_snr_db: float = 40.0  # highest SNR, dB
    min_f_decay: float = 0.0  # spectral slope, dB/octave: 0 white, -3.01 pink, -6.02 brown, +3.01 blue
    max_f_decay: float = 0.0  # upper end of the slope range, dB/octave

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_snr_db, self.max_snr_db, "min_snr_db", "max_snr_db", (-20.0, 100.0))
        _check_range(self.min_f_decay, self.max_f_decay, "min_f_decay", "max_f_decay", (-12.0, 12.0))


@dataclass(frozen=True)
class GainConfig:
    """Loudness change. A no-op for models whose feature extractor has do_normalize=True (XLS-R, MMS)."""

    p: float = 0.5  # probability
    min_gain_db: float = -6.0  # dB
    max_gain_db: float = 6.0  # dB

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_gain_db, self.max_gain_db, "min_gain_db", "max_gain_db", (-40.0, 40.0))


@dataclass(frozen=True)
class BandStopConfig:
    """A notch somewhere in the speech band (a cheap microphone or codec colouring)."""

    p: float = 0.2  # probability
    min_center_hz: float = 200.0  # Hz
    max_center_hz: float = 4000.0  # Hz

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_center_hz, self.max_center_hz, "min_center_hz", "max_center_hz", (20.0, SAMPLE_RATE / 2 - 100))


@dataclass(frozen=True)
class LowPassConfig:
    """Low-pass filter; a cutoff of 3-4 kHz sounds like a telephone."""

    p: float = 0.2  # probability
    min_cutoff_hz: float = 3000.0  # Hz
    max_cutoff_hz: float = 7000.0  # Hz, below the 8 kHz Nyquist of 16 kHz audio

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_cutoff_hz, self.max_cutoff_hz, "min_cutoff_hz", "max_cutoff_hz", (100.0, SAMPLE_RATE / 2 - 100))


@dataclass(frozen=True)
class ReverbConfig:
    """Convolution with a room impulse response picked from a folder of IR files."""

    rir_dir: str  # folder of impulse-response audio files (required)
    p: float = 0.3  # probability

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_folder(self.rir_dir, "rir_dir")


@dataclass(frozen=True)
class BackgroundNoiseConfig:
    """Background noise mixed in from a folder of recordings (e.g. MUSAN), at a random SNR."""

    noise_dir: str  # folder of noise audio files (required)
    p: float = 0.3  # probability
    min_snr_db: float = 5.0  # dB
    max_snr_db: float = 30.0  # dB

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_snr_db, self.max_snr_db, "min_snr_db", "max_snr_db", (-20.0, 100.0))
        _check_folder(self.noise_dir, "noise_dir")


@dataclass(frozen=True)
class Mp3Config:
    """MP3 re-compression artefacts (needs the mp3 extra: `pip install 'lrl[mp3]'`)."""

    p: float = 0.2  # probability
    min_bitrate: int = 16  # kbps
    max_bitrate: int = 64  # kbps

    def __post_init__(self) -> None:
        _check_p(self.p)
        _check_range(self.min_bitrate, self.max_bitrate, "min_bitrate", "max_bitrate", (8, 320))


# Order of application: speed first (it defines the clip), room and noise next, channel effects, then gain.
_TRANSFORMS: dict[str, type] = {
    "speed": SpeedConfig, "stretch": StretchConfig, "pitch": PitchConfig, "reverb": ReverbConfig,
    "background": BackgroundNoiseConfig, "noise": NoiseConfig, "band_stop": BandStopConfig,
    "low_pass": LowPassConfig, "mp3": Mp3Config, "gain": GainConfig,
}
WavePreset = Literal["none", "light", "strong"]
WAVE_PRESETS: tuple[str, ...] = get_args(WavePreset)


@dataclass(frozen=True)
class WaveAugmentConfig:
    """Which waveform transforms run (None = off) and their ranges; `preset()` or `from_dict()` build one."""

    speed: SpeedConfig | None = None  # Kaldi-style 0.9/1.0/1.1 speed perturbation
    stretch: StretchConfig | None = None  # tempo only
    pitch: PitchConfig | None = None  # pitch only
    reverb: ReverbConfig | None = None  # room impulse responses from a folder
    background: BackgroundNoiseConfig | None = None  # noise recordings from a folder
    noise: NoiseConfig | None = None  # synthetic white/coloured noise
    band_stop: BandStopConfig | None = None  # notch filter
    low_pass: LowPassConfig | None = None  # telephone-like band limit
    mp3: Mp3Config | None = None  # codec artefacts (optional extra)
    gain: GainConfig | None = None  # loudness
    name: str = field(default="custom", compare=False)  # preset name, shown in logs and previews

    def __post_init__(self) -> None:
        for key, cls in _TRANSFORMS.items():
            value = getattr(self, key)
            if value is not None and not isinstance(value, cls):
                raise ValueError(f"{key} must be a {cls.__name__} or None, got {type(value).__name__}")

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the transforms that can fire, in application order."""
        return tuple(k for k in _TRANSFORMS if getattr(self, k) is not None and getattr(self, k).p > 0)

    @classmethod
    def preset(cls, name: str) -> WaveAugmentConfig:
        """`none` (identity), `light` (speed + mild white noise; cheap) or `strong` (adds pitch, stretch,
        coloured noise at lower SNR, band-stop and telephone low-pass). No preset uses `gain`: Wav2Vec2's
        feature extractor normalises each clip to zero mean and unit variance, which undoes it."""
        if name == "none":
            return cls(name="none")
        if name == "light":
            return cls(speed=SpeedConfig(), noise=NoiseConfig(p=0.3, min_snr_db=20.0, max_snr_db=40.0), name="light")
        if name == "strong":
            return cls(
                speed=SpeedConfig(), stretch=StretchConfig(p=0.2), pitch=PitchConfig(p=0.3),
                noise=NoiseConfig(p=0.6, min_snr_db=10.0, max_snr_db=30.0, min_f_decay=-6.0, max_f_decay=3.0),
                band_stop=BandStopConfig(p=0.2), low_pass=LowPassConfig(p=0.25, min_cutoff_hz=3000.0, max_cutoff_hz=4000.0),
                name="strong",
            )
        raise ValueError(f"preset must be one of {list(WAVE_PRESETS)}, got {name!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WaveAugmentConfig:
        """An `[augment]` table (what `lrl augment preview --config` reads; training takes a preset name,
        `data.augment`): `{"preset": "light"}`, explicit transforms
        (`{"noise": {"p": 0.5, "min_snr_db": 10}, "speed": {}}`), or a preset with some transforms
        replaced (a table) or switched off (`false`)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"augment must be a table (dict), got {type(d).__name__}")
        unknown = sorted(set(d) - set(_TRANSFORMS) - {"preset"})
        if unknown:
            raise ValueError(f"augment: unknown key(s) {unknown}; allowed: 'preset', {sorted(_TRANSFORMS)}")
        preset = d.get("preset")
        base = cls.preset(str(preset)) if preset is not None else cls(name="custom")
        changes: dict[str, Any] = {}
        for key, cls_ in _TRANSFORMS.items():
            if key not in d:
                continue
            value = d[key]
            if value is False or value is None:
                changes[key] = None
            elif isinstance(value, Mapping):
                names = {f.name for f in dataclasses.fields(cls_)}
                bad = sorted(set(value) - names)
                if bad:
                    raise ValueError(f"augment.{key}: unknown field(s) {bad}; allowed: {sorted(names)}")
                try:
                    changes[key] = cls_(**value)
                except TypeError as e:  # a required field (a folder) is missing
                    raise ValueError(f"augment.{key}: {e}") from e
                except ValueError as e:
                    raise ValueError(f"augment.{key}.{e}") from e
            else:
                raise ValueError(f"augment.{key} must be a table of fields or false, got {value!r}")
        if changes and preset is not None:
            changes["name"] = f"{preset}+custom"
        return dataclasses.replace(base, **changes) if changes else base

    @classmethod
    def from_toml(cls, path: str | Path, table: str = "augment") -> WaveAugmentConfig:
        """Read the `[augment]` table (or `table`) of a TOML file."""
        import tomllib

        from lrl.core.io import LrlError

        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise LrlError(f"{path}: no such file") from e
        except tomllib.TOMLDecodeError as e:
            raise LrlError(f"{path}: not valid TOML ({e})") from e
        if table not in data:
            raise LrlError(f"{path}: no [{table}] table; add e.g. `[{table}]\\npreset = \"light\"`")
        return cls.from_dict(data[table])

    def to_dict(self) -> dict[str, Any]:
        """Explicit form (every enabled transform with all its fields); `from_dict` reads it back."""
        out: dict[str, Any] = {}
        for key in _TRANSFORMS:
            value = getattr(self, key)
            if value is not None:
                out[key] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
        return out


# -- the augmenter -----------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded_global_rngs(gen: np.random.Generator):
    """Seed Python's `random` and numpy's global RNG (which audiomentations and transformers'
    `_compute_mask_indices` draw from) from `gen`, and restore their previous states afterwards."""
    with _GLOBAL_RNG_LOCK:
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(int(gen.integers(2**63)))
        np.random.seed(int(gen.integers(2**32)))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _speed_step(cfg: SpeedConfig) -> Callable:
    def step(x: np.ndarray, sr: int, gen: np.random.Generator) -> tuple[np.ndarray, str | None]:
        if gen.random() >= cfg.p:
            return x, None
        factor = float(cfg.factors[gen.integers(len(cfg.factors))])
        if factor == 1.0:
            return x, None
        import soxr

        # Read the clip as if recorded at sr*factor and resample to sr: tempo and pitch scale by `factor`.
        return soxr.resample(x, sr * factor, sr).astype(np.float32, copy=False), f"speed x{factor:g}"

    return step


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _describe(key: str, prm: dict, x: np.ndarray) -> str:
    """What an audiomentations transform just did, from its drawn parameters."""
    db = lambda ratio: 20 * np.log10(max(ratio, 1e-12))  # noqa: E731
    if key == "noise":
        noise = prm.get("noise_std", prm.get("desired_noise_rms", 0.0))
        if noise <= 0:
            return "noise (silent clip: none added)"
        slope = f", slope {prm['f_decay']:+.1f} dB/oct" if "f_decay" in prm else ""
        return f"noise {db(_rms(x) / max(noise, 1e-12)):.0f} dB SNR{slope}"
    return {
        "stretch": lambda: f"stretch x{prm.get('rate', 1):.2f}",
        "pitch": lambda: f"pitch {prm.get('num_semitones', 0):+.1f} st",
        "gain": lambda: f"gain {db(prm.get('amplitude_ratio', 1)):+.1f} dB",
        "band_stop": lambda: f"band-stop {prm.get('center_freq', 0):.0f} Hz",
        "low_pass": lambda: f"low-pass {prm.get('cutoff_freq', 0):.0f} Hz",
        "reverb": lambda: f"reverb {Path(str(prm.get('ir_file_path', ''))).name}",
        "background": lambda: f"background {Path(str(prm.get('noise_file_path', ''))).name} {prm.get('snr_db', 0):.0f} dB SNR",
        "mp3": lambda: f"mp3 {prm.get('bitrate')} kbps",
    }[key]()


def _audiomentations_step(key: str, cfg: Any) -> Callable:
    try:
        import audiomentations as A
    except ImportError as e:
        raise ImportError("waveform augmentation needs audiomentations: pip install audiomentations") from e
    if key == "stretch":
        t = A.TimeStretch(min_rate=cfg.min_rate, max_rate=cfg.max_rate, leave_length_unchanged=False, p=cfg.p)
    elif key == "pitch":
        t = A.PitchShift(min_semitones=cfg.min_semitones, max_semitones=cfg.max_semitones, p=cfg.p)
    elif key == "noise" and cfg.min_f_decay == cfg.max_f_decay == 0.0:
        t = A.AddGaussianSNR(min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, p=cfg.p)
    elif key == "noise":
        t = A.AddColorNoise(min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, min_f_decay=cfg.min_f_decay,
                            max_f_decay=cfg.max_f_decay, p=cfg.p)
    elif key == "gain":
        t = A.Gain(min_gain_db=cfg.min_gain_db, max_gain_db=cfg.max_gain_db, p=cfg.p)
    elif key == "band_stop":
        t = A.BandStopFilter(min_center_freq=cfg.min_center_hz, max_center_freq=cfg.max_center_hz, p=cfg.p)
    elif key == "low_pass":
        t = A.LowPassFilter(min_cutoff_freq=cfg.min_cutoff_hz, max_cutoff_freq=cfg.max_cutoff_hz, p=cfg.p)
    elif key == "reverb":
        t = A.ApplyImpulseResponse(ir_path=cfg.rir_dir, p=cfg.p, leave_length_unchanged=True)
    elif key == "background":
        t = A.AddBackgroundNoise(sounds_path=cfg.noise_dir, min_snr_db=cfg.min_snr_db, max_snr_db=cfg.max_snr_db, p=cfg.p)
    elif key == "mp3":
        try:
            import fast_mp3_augment  # noqa: F401
        except ImportError as e:
            raise ImportError("augment.mp3 needs the mp3 extra: pip install 'lrl[mp3]' (or fast-mp3-augment)") from e
        t = A.Mp3Compression(min_bitrate=cfg.min_bitrate, max_bitrate=cfg.max_bitrate, p=cfg.p)
    else:  # pragma: no cover - _TRANSFORMS and this table are kept in step
        raise ValueError(f"unknown transform {key!r}")

    def step(x: np.ndarray, sr: int, gen: np.random.Generator) -> tuple[np.ndarray, str | None]:
        y = t(x, sr)
        return y, (_describe(key, t.parameters, x) if t.parameters.get("should_apply") else None)

    return step


def _worker_key() -> int:
    """Inside a torch DataLoader worker: that worker's seed (base seed drawn per epoch + worker id), so
    workers and epochs differ yet a seeded run repeats; otherwise 0."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else int(info.seed) % 2**63 + 1


class WaveAugmenter:
    """`augmenter(samples, sample_rate) -> samples`: float32 mono in, float32 mono out (the length
    changes only with speed/stretch). Call k uses the RNG stream (seed, rank, worker, k)."""

    def __init__(self, config: WaveAugmentConfig, seed: int = 0, worker_id: int | None = None) -> None:
        if not isinstance(config, WaveAugmentConfig):
            raise ValueError(f"config must be a WaveAugmentConfig, got {type(config).__name__}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.config = config
        self.seed = int(seed)
        self.worker_id = worker_id  # None: taken from the torch DataLoader worker, if any
        self.calls = 0  # number of clips augmented so far (the last element of the stream key)
        self.last_applied: tuple[str, ...] = ()  # what the last call did, e.g. ("speed x1.1", "noise 23 dB SNR")
        self._steps = [
            _speed_step(getattr(config, k)) if k == "speed" else _audiomentations_step(k, getattr(config, k))
            for k in config.enabled
        ]

    def for_worker(self, worker_id: int) -> WaveAugmenter:
        """A fresh augmenter (same config and seed) with the RNG stream of dataloader worker `worker_id`."""
        if int(worker_id) < 0:
            raise ValueError(f"worker_id must be >= 0, got {worker_id}")
        return WaveAugmenter(self.config, self.seed, worker_id=int(worker_id))

    def _generator(self) -> np.random.Generator:
        worker = self.worker_id + 1 if self.worker_id is not None else _worker_key()
        rank = int(os.environ.get("RANK", "0") or 0)
        key = [self.seed, rank, worker, self.calls]
        self.calls += 1
        return np.random.default_rng(np.random.SeedSequence(key))

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be mono (1-D), got shape {x.shape}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        x = x.astype(np.float32, copy=False)
        if not self._steps or len(x) == 0:
            self.last_applied = ()
            return x
        gen = self._generator()
        applied = []
        with seeded_global_rngs(gen):
            for step in self._steps:
                x, what = step(x, sample_rate, gen)
                if what:
                    applied.append(what)
        self.last_applied = tuple(applied)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self) -> str:
        return f"WaveAugmenter({self.config.name!r}, seed={self.seed}, worker_id={self.worker_id}, transforms={list(self.config.enabled)})"
