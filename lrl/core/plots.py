"""Pictures of audio for people: log-mel spectrograms (numpy, via transformers.audio_utils) and the
augmentation preview figures (waveform + log-mel before/after, SpecAugment masks over model frames).
Matplotlib with the Agg backend; every figure is written atomically as a PNG."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from lrl.core.io import atomic_write_bytes

logger = logging.getLogger(__name__)

N_MELS = 80  # mel bands, as in most ASR front ends
WIN_SECONDS = 0.025  # analysis window, s
HOP_SECONDS = 0.010  # hop between spectrogram frames, s
DB_RANGE = 80.0  # dB shown below the loudest bin


def log_mel(samples: np.ndarray, sample_rate: int, n_mels: int = N_MELS) -> tuple[np.ndarray, np.ndarray]:
    """(log-mel power in dB, shape [n_mels, frames]; centre frequency of each band in Hz)."""
    from transformers.audio_utils import (
        hertz_to_mel,
        mel_filter_bank,
        mel_to_hertz,
        spectrogram,
        window_function,
    )

    win = int(round(WIN_SECONDS * sample_rate))
    hop = int(round(HOP_SECONDS * sample_rate))
    n_fft = max(1024, 1 << (win - 1).bit_length())  # zero-padded: finer bins than the low mel bands (no stripes)
    fmax = sample_rate / 2
    filters = mel_filter_bank(n_fft // 2 + 1, n_mels, 0.0, fmax, sample_rate, norm="slaney", mel_scale="slaney")
    x = np.asarray(samples, dtype=np.float32)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    spec = spectrogram(x, window_function(win, "hann"), frame_length=win, hop_length=hop, fft_length=n_fft,
                       power=2.0, mel_filters=filters, log_mel="dB", reference=1.0, min_value=1e-10)
    # band centres: the inner points of the n_mels + 2 equally spaced mel edges mel_filter_bank uses
    mel_edges = np.linspace(hertz_to_mel(0.0, "slaney"), hertz_to_mel(fmax, "slaney"), n_mels + 2)
    return spec, mel_to_hertz(mel_edges[1:-1], "slaney")


def _figure(nrows: int, ncols: int, **kw):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(nrows, ncols, **kw)


def _save(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _mel_axis(ax, centres: np.ndarray) -> None:
    """Label a mel-bin axis in Hz (the bands are spaced on the mel scale)."""
    ticks = [t for t in (0, 250, 500, 1000, 2000, 3000, 4000, 6000, 8000) if t <= centres[-1] * 1.02]
    ax.set_yticks([float(np.interp(t, centres, np.arange(len(centres)))) for t in ticks])
    ax.set_yticklabels([str(t) for t in ticks])
    ax.set_ylabel("frequency (Hz, mel scale)")


def _show_mel(ax, db: np.ndarray, centres: np.ndarray, vmin: float, vmax: float):
    seconds = db.shape[1] * HOP_SECONDS
    im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
                   extent=(0, seconds, -0.5, len(centres) - 0.5), interpolation="nearest")
    _mel_axis(ax, centres)
    ax.set_xlabel("time (s)")
    return im


def plot_before_after(before: np.ndarray, after: np.ndarray, sample_rate: int, path: str | Path, title: str) -> Path:
    """Waveforms (top) and log-mel spectrograms (bottom) of a clip before (left) and after (right)
    augmentation, on shared amplitude, time and dB scales."""
    db_b, centres = log_mel(before, sample_rate)
    db_a, _ = log_mel(after, sample_rate)
    vmax = float(max(db_b.max(), db_a.max()))
    vmin = vmax - DB_RANGE
    t_max = max(len(before), len(after)) / sample_rate
    peak = float(max(np.abs(before).max(initial=0), np.abs(after).max(initial=0), 1e-3)) * 1.05
    plt, fig, axes = _figure(2, 2, figsize=(13, 7), gridspec_kw={"height_ratios": [1, 1.6]}, constrained_layout=True)
    for col, (x, db, label) in enumerate(((before, db_b, "before"), (after, db_a, "after"))):
        ax = axes[0, col]
        ax.plot(np.arange(len(x)) / sample_rate, x, lw=0.4, color="tab:blue" if col == 0 else "tab:orange")
        ax.set_xlim(0, t_max)
        ax.set_ylim(-peak, peak)
        ax.set_title(f"{label}: {len(x) / sample_rate:.2f} s, peak {np.abs(x).max(initial=0):.2f}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("amplitude")
        ax.grid(alpha=0.3)
        im = _show_mel(axes[1, col], db, centres, vmin, vmax)
        axes[1, col].set_xlim(0, t_max)
        axes[1, col].set_title(f"log-mel spectrogram, {label}")
    fig.colorbar(im, ax=axes[1, :], label="power (dB)", shrink=0.9)
    fig.suptitle(title)
    return _save(plt, fig, Path(path))


def plot_specaugment(samples: np.ndarray, sample_rate: int, time_masks: np.ndarray, feature_masks: np.ndarray,
                     frame_seconds: float, path: str | Path, title: str) -> Path:
    """SpecAugment over a clip: the log-mel with the masked encoder frames shaded (top) and, per draw,
    the frames x hidden-channels grid the model sees, masked time spans and channels marked (bottom).
    `time_masks` is [draws, frames], `feature_masks` [draws, channels] (booleans)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    db, centres = log_mel(samples, sample_rate)
    draws, frames = time_masks.shape
    seconds = frames * frame_seconds
    plt, fig, axes = _figure(1 + draws, 1, figsize=(12, 3.2 + 2.2 * draws), constrained_layout=True, squeeze=False)
    ax = axes[0, 0]
    im = _show_mel(ax, db, centres, float(db.max()) - DB_RANGE, float(db.max()))
    fig.colorbar(im, ax=ax, label="power (dB)")
    for start, end in _runs(time_masks[0]):
        ax.axvspan(start * frame_seconds, end * frame_seconds, color="cyan", alpha=0.35, lw=0)
    ax.set_xlim(0, max(seconds, db.shape[1] * HOP_SECONDS))
    ax.set_title(f"clip with the time masks of draw 1 shaded ({time_masks[0].mean():.0%} of {frames} frames)")
    cmap = ListedColormap(["#f2f2f2", "#1f77b4", "#d62728", "#6a3d9a"])
    for i in range(draws):
        ax = axes[1 + i, 0]
        grid = time_masks[i][None, :].astype(int) + 2 * feature_masks[i][:, None].astype(int)
        ax.imshow(grid, origin="lower", aspect="auto", cmap=cmap, vmin=0, vmax=3, interpolation="nearest",
                  extent=(0, seconds, -0.5, feature_masks.shape[1] - 0.5))
        ax.set_xlabel("time (s), one column per encoder frame")
        ax.set_ylabel("hidden channel")
        ax.set_title(f"draw {i + 1}: time masked {time_masks[i].mean():.0%}, channels zeroed {feature_masks[i].mean():.0%}",
                     loc="left")
        if i == 0:
            ax.legend(handles=[Patch(color="#1f77b4", label="time mask (mask embedding)"),
                               Patch(color="#d62728", label="feature mask (zeros)"),
                               Patch(color="#6a3d9a", label="both")],
                      loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    return _save(plt, fig, Path(path))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of the True runs of a 1-D boolean array."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(int)))
    return list(zip(edges[::2], edges[1::2], strict=True))
