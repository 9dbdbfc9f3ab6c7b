"""`lrl augment preview`: augmented copies of one clip to listen to (WAV) and look at (waveform and
log-mel before/after), and a picture of SpecAugment's masks over the model's frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrl.augment.specaugment import SpecAugmentConfig, feature_frames
from lrl.augment.wave import WaveAugmentConfig, WaveAugmenter, seeded_global_rngs
from lrl.core.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PreviewResult:
    """What `preview` wrote."""

    wavs: tuple[Path, ...]  # DIR/<stem>_aug<i>.wav, 16 kHz PCM
    pngs: tuple[Path, ...]  # DIR/<stem>_aug<i>.png, before/after pictures
    specaugment_png: Path | None  # DIR/<stem>_specaugment.png
    durations: tuple[float, ...]  # seconds of each augmented clip (speed perturbation changes them)
    source_seconds: float  # the clip's own duration


def _write_wav(path: Path, x: np.ndarray) -> None:
    import io

    import soundfile as sf

    from lrl.core.io import atomic_write_bytes

    peak = float(np.abs(x).max(initial=0.0))
    if peak > 1.0:  # PCM would clip: scale for listening (the training copy is not scaled)
        logger.info("%s: peak %.2f > 1, scaled down for the WAV", path.name, peak)
        x = x / peak * 0.99
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def preview(
    audio: str | Path, out_dir: str | Path, config: WaveAugmentConfig, n: int = 4, seed: int = 0,
    specaugment: SpecAugmentConfig | None = None, model_config=None,
) -> PreviewResult:
    """Write `n` augmented versions of one clip (WAV + before/after PNG each) and, when `specaugment` is
    given, a picture of its masks over the frames of `model_config` (default: the wav2vec 2.0 layout)."""
    from lrl.core import plots

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    audio, out_dir = Path(audio), Path(out_dir)
    from lrl.core.audio import load_audio

    x = load_audio(audio, SAMPLE_RATE)
    if len(x) == 0:
        raise ValueError(f"{audio}: the clip is empty; pick a clip with speech")
    augmenter = WaveAugmenter(config, seed=seed)
    wavs, pngs, durations = [], [], []
    for i in range(1, n + 1):
        y = augmenter(x, SAMPLE_RATE)
        wav, png = out_dir / f"{audio.stem}_aug{i}.wav", out_dir / f"{audio.stem}_aug{i}.png"
        _write_wav(wav, y)
        title = (f"{audio.name}: '{config.name}' augmentation, draw {i} of {n} (seed {seed})\n"
                 f"applied: {', '.join(augmenter.last_applied) or 'nothing (each transform has its probability p)'}")
        plots.plot_before_after(x, y, SAMPLE_RATE, png, title)
        wavs.append(wav), pngs.append(png), durations.append(len(y) / SAMPLE_RATE)
    spec_png = None
    if specaugment is not None:
        spec_png = _preview_specaugment(x, out_dir / f"{audio.stem}_specaugment.png", specaugment, model_config, seed, audio.name)
    return PreviewResult(tuple(wavs), tuple(pngs), spec_png, tuple(durations), len(x) / SAMPLE_RATE)


def _preview_specaugment(x: np.ndarray, path: Path, spec: SpecAugmentConfig, model_config, seed: int, label: str,
                         draws: int = 3) -> Path:
    from transformers import Wav2Vec2Config

    from lrl.core import plots
    from lrl.core.hf_transformers import compute_mask_indices

    model_config = model_config or Wav2Vec2Config()
    frames = feature_frames(len(x), model_config)
    fitted = spec.validate(frames, num_features=model_config.hidden_size)
    hidden = model_config.hidden_size
    time_masks = np.zeros((draws, frames), dtype=bool)
    feature_masks = np.zeros((draws, hidden), dtype=bool)
    with seeded_global_rngs(np.random.default_rng(seed)):
        for d in range(draws):
            if fitted.mask_time_prob > 0:
                time_masks[d] = compute_mask_indices((1, frames), fitted.mask_time_prob, fitted.mask_time_length,
                                                     min_masks=fitted.mask_time_min_masks)[0]
            if fitted.mask_feature_prob > 0:
                feature_masks[d] = compute_mask_indices((1, hidden), fitted.mask_feature_prob, fitted.mask_feature_length,
                                                        min_masks=fitted.mask_feature_min_masks)[0]
    frame_seconds = float(np.prod(model_config.conv_stride)) / SAMPLE_RATE
    k = fitted.to_model_kwargs()
    title = (f"{label}: SpecAugment '{spec.name}' over {frames} frames x {hidden} channels\ntime p={k['mask_time_prob']} "
             f"len={k['mask_time_length']} min={k['mask_time_min_masks']}; feature p={k['mask_feature_prob']} "
             f"len={k['mask_feature_length']}" + (" (clamped to fit this clip)" if fitted != spec else ""))
    return plots.plot_specaugment(x, SAMPLE_RATE, time_masks, feature_masks, frame_seconds, path, title)
