"""Waveform augmentation speed in x real time per core (1 thread): each preset on yo-cv clips, and each
transform alone at p=1, against the baseline of the same transforms called bare (one shared generator,
no per-call SeedSequence, no save/restore of the global RNGs). Clips are decoded (soundfile + soxr,
16 kHz) once before timing; candidate and baseline alternate (ABAB...) and the table reports medians.
`light` must reach >= 50x real time so augmentation never starves training.

    .venv/bin/python bench/augment.py [--clips 60] [--repeats 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
SR = 16000
LIGHT_TARGET = 50.0  # x real time the `light` preset must reach


def load_clips(corpus: Path, n: int) -> list[np.ndarray]:
    import soundfile as sf
    import soxr

    lines = (corpus / "train.tsv").read_text(encoding="utf-8").splitlines()
    col = lines[0].split("\t").index("path")
    clips = []
    for line in lines[1: n + 1]:
        x, sr = sf.read(str(corpus / "clips" / line.split("\t")[col]), dtype="float32", always_2d=True)
        clips.append(soxr.resample(x.mean(axis=1), sr, SR).astype(np.float32))
    return clips


def time_candidate(aug, clips) -> float:
    t = time.perf_counter()
    for x in clips:
        aug(x, SR)
    return time.perf_counter() - t


def time_baseline(aug, clips, gen) -> float:
    """The same transform objects, called bare: what the seeding wrapper adds is the difference."""
    t = time.perf_counter()
    for x in clips:
        for step in aug._steps:
            x, _ = step(x, SR, gen)
    return time.perf_counter() - t


def measure(config, clips, repeats: int) -> tuple[float, float, float]:
    """(candidate x RT, baseline x RT, median time ratio candidate/baseline)."""
    from lrl.augment.wave import WaveAugmenter

    audio_s = sum(len(x) for x in clips) / SR
    aug = WaveAugmenter(config, seed=0)
    gen = np.random.default_rng(0)
    time_candidate(aug, clips[:3]), time_baseline(aug, clips[:3], gen)  # warm-up (lazy imports, caches)
    cand, base = [], []
    for _ in range(repeats):
        cand.append(time_candidate(aug, clips))
        base.append(time_baseline(aug, clips, gen))
    ratio = statistics.median(c / b for c, b in zip(cand, base, strict=True)) if base[0] > 0 else float("nan")
    return audio_s / statistics.median(cand), audio_s / statistics.median(base), ratio


def folders(tmp: Path, shared: Path) -> tuple[str, str]:
    import soundfile as sf

    from lrl.core.audio import load_audio

    rir, noise = tmp / "rir", tmp / "noise"
    rir.mkdir(), noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # synthetic exponentially decaying rooms, RT60 ~0.2-0.6 s
        n = int(SR * (0.2 + 0.2 * i))
        ir = np.exp(-6.9 * np.arange(n) / n) * rng.standard_normal(n)
        sf.write(rir / f"room{i}.wav", (ir / np.abs(ir).max()).astype(np.float32), SR)
    for p in sorted((shared / "fsdd" / "recordings").glob("*.wav"))[:20]:
        sf.write(noise / p.name, load_audio(p, SR), SR)
    return str(rir), str(noise)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "yo-cv")
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from _results import update_section

    from lrl.augment.wave import WAVE_PRESETS, WaveAugmentConfig

    clips = load_clips(args.corpus, args.clips)
    audio_s = sum(len(x) for x in clips) / SR
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio, {args.repeats} repeats, 1 thread", flush=True)
    rows = []
    for name in WAVE_PRESETS:
        cand, base, ratio = measure(WaveAugmentConfig.preset(name), clips, args.repeats)
        rows.append((f"preset `{name}`", cand, base, ratio))
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rir, noise = folders(Path(tmp), args.corpus.parent)
        single = {
            "speed": {"factors": [0.9, 1.1]}, "stretch": {}, "pitch": {}, "noise": {},
            "noise (coloured)": {"min_f_decay": -6.0, "max_f_decay": 3.0}, "band_stop": {}, "low_pass": {},
            "gain": {}, "reverb": {"rir_dir": rir}, "background": {"noise_dir": noise},
        }
        for label, fields in single.items():
            key = label.split()[0]
            config = WaveAugmentConfig.from_dict({key: {**fields, "p": 1.0}})
            cand, base, ratio = measure(config, clips, max(2, args.repeats // 2))
            rows.append((f"`{label}` alone, p=1", cand, base, ratio))
            print(rows[-1], flush=True)

    light = rows[WAVE_PRESETS.index("light")][1]
    verdict = "PASS" if light >= LIGHT_TARGET else "FAIL"
    table = [
        f"{len(clips)} yo-cv train clips ({audio_s:.0f} s of audio, decoded to 16 kHz before timing), 1 thread, "
        f"median of {args.repeats} interleaved runs (single transforms: {max(2, args.repeats // 2)}). "
        "Baseline: the same transforms called bare (no per-call seeding / global-RNG save+restore). "
        "Other engineers share the 2 cores: absolute figures are pessimistic, ratios are side by side.",
        "",
        "| what | lrl WaveAugmenter (x real time) | bare transforms (x real time) | time ratio lrl/bare |",
        "|---|---:|---:|---:|",
    ]
    for label, cand, base, ratio in rows:
        if label == "preset `none`":
            table.append(f"| {label} | {cand:,.0f} | (no transforms) | - |")
        else:
            table.append(f"| {label} | {cand:,.0f} | {base:,.0f} | {ratio:.2f} |")
    table += ["", f"`light` >= {LIGHT_TARGET:.0f}x real time: **{verdict}** ({light:,.0f}x)."]
    path = update_section("augment", "\n".join(table))
    print("\n".join(table))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
