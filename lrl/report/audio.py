"""The report's audio players: each scored clip of the prepared split encoded small (MP3 through soundfile's
LAME, mono 16 kHz, 24 kbit/s or less so that a page's embedded audio fits AUDIO_BUDGET_MB), embedded in the page as a data URI or written beside it and linked
by a relative path, or left out.
"""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np

from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import atomic_write_bytes

logger = logging.getLogger(__name__)

AudioMode = Literal["embed", "link", "none"]  # in the page / files beside it / no players
# MP3 at 16 kHz through libsndfile's LAME, constant bit rate: fast (~90x real time on 2 busy cores; Opus, finer
# at its size, encoded at 8-19x there, too slow for a page `lrl evaluate` writes every time) and played by every
# browser. libsndfile's compression level -> kbit/s at 16 kHz, measured: 0.9 -> 24, 0.95 -> 16, 0.97 -> 8.
MP3_LEVELS = {24: 0.9, 16: 0.95, 8: 0.97}
# embedded audio of one page: the best rate whose base64 (4/3 of the bytes) fits. 350 demo clips (2.9 s) get
# 24 kbit/s (~4 MB); 350 Common Voice Yoruba clips (10.4 s on average) get 8 kbit/s (~4.9 MB)
AUDIO_BUDGET_MB = 8.0
MAX_CLIP_SECONDS = 30.0  # longer clips are cut here in the page (the table still scores the whole clip)
AUDIO_MIME = "audio/mpeg"
ENCODE_THREADS = 4  # libsndfile runs without the GIL: clips encode in parallel


def choose_kbps(seconds: float, mode: AudioMode, budget_mb: float = AUDIO_BUDGET_MB) -> int:
    """The MP3 rate for `seconds` of clips: the best one whose base64 fits the budget when embedded (the
    lowest when none does); linked files always get the best."""
    rates = sorted(MP3_LEVELS, reverse=True)
    if mode != "embed":
        return rates[0]
    return next((r for r in rates if seconds * r * 1000 / 8 * 4 / 3 <= budget_mb * 1e6), rates[-1])


def encode_clip(wave: np.ndarray, sample_rate: int = SAMPLE_RATE, kbps: int = 24,
                max_seconds: float = MAX_CLIP_SECONDS) -> bytes:
    """MP3 bytes (constant `kbps`, one of MP3_LEVELS) of a mono float clip, cut at `max_seconds`."""
    import soundfile as sf

    if kbps not in MP3_LEVELS:
        raise ValueError(f"kbps must be one of {sorted(MP3_LEVELS)}, got {kbps}")
    wave = np.asarray(wave, dtype=np.float32)[: int(max_seconds * sample_rate)]
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 1.0:
        wave = wave / peak
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=MP3_LEVELS[kbps],
             bitrate_mode="CONSTANT")
    return buf.getvalue()


def _file_name(uid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", uid) + ".mp3"


def _waves(data_dir: Path, split: str, ids: set[str]) -> Iterator[tuple[str, np.ndarray]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(data_dir))[split]
    except (FileNotFoundError, KeyError) as e:
        logger.warning("no audio from %s split %s: %s", data_dir, split, e)
        return
    keep = [i for i, uid in enumerate(ds["id"]) if uid in ids]
    ds = ds.select(keep).select_columns(["id", "audio"]).with_format("numpy")
    for row in ds:
        yield str(row["id"]), row["audio"]


def clip_sources(clips: Iterable[tuple[Path, str, set[str]]], mode: AudioMode, out_html: Path,
                 kbps: int = 24) -> dict[str, str]:
    """utterance id -> the <audio> src for every id found in the (data dir, split, ids) groups: a data URI
    (embed) or a path relative to the page under OUT_audio/ (link); {} for mode "none"."""
    if mode == "none":
        return {}
    folder = out_html.parent / f"{out_html.stem}_audio"
    src: dict[str, str] = {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(ENCODE_THREADS) as pool:
        for data_dir, split, ids in clips:
            waves = _waves(data_dir, split, ids - set(src))
            while batch := list(islice(waves, 8 * ENCODE_THREADS)):  # bounded memory on long splits
                for (uid, _), data in zip(batch, pool.map(lambda w: encode_clip(w, kbps=kbps), (w for _, w in batch)), strict=True):
                    if mode == "embed":
                        src[uid] = f"data:{AUDIO_MIME};base64," + base64.b64encode(data).decode("ascii")
                    else:
                        atomic_write_bytes(folder / _file_name(uid), data)
                        src[uid] = f"{folder.name}/{_file_name(uid)}"
    return src
