"""Synthetic speech corpora made with espeak-ng: the demo's default data, and multilingual speech for
building small cross-lingual starting checkpoints. Output is a Common Voice-layout folder
(train/dev/test/validated.tsv, clips/*.wav at 16 kHz, clip_durations.tsv) plus LM text, so the demo
runs through exactly the code path a user's own Common Voice download takes."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import LrlError, atomic_write_text

logger = logging.getLogger(__name__)

# espeak-ng voice variants that sound clearly different from one another (male, female, old, "klatt").
DEFAULT_VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4", "klatt", "grandpa")
CV_COLUMNS = ("client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "age", "gender",
              "accents", "variant", "locale", "segment")


# -- a small Swahili grammar -------------------------------------------------------------------------
# Subject agreement (a-/wa-), tense (na present, li past, ta future) agreeing with the time word, and
# verbs that take only fitting objects: structure an n-gram LM can learn and a recogniser can use.
_SW_SUBJECTS = {
    "a": ["mtoto", "mwalimu", "mama", "baba", "mkulima", "daktari", "mwanafunzi", "dada yangu", "rafiki yangu"],
    "wa": ["watoto", "walimu", "wakulima", "wanafunzi", "wazee", "wageni"],
}
_SW_VERBS = {
    "kula": ["chakula", "ndizi", "wali", "samaki", "mkate", "embe"],
    "soma": ["kitabu", "barua", "gazeti", "hadithi"],
    "pika": ["chakula", "wali", "samaki", "chai", "ugali"],
    "nunua": ["ndizi", "mkate", "kitabu", "nguo", "viatu", "embe"],
    "ona": ["gari", "ndege", "mbuzi", "ng'ombe", "simba", "tembo"],
    "andika": ["barua", "jina", "hadithi"],
    "uza": ["ndizi", "samaki", "nguo", "mbuzi", "maziwa"],
    "beba": ["mzigo", "maji", "kuni", "mtoto"],
}
_SW_PLACES = ["sokoni", "nyumbani", "shuleni", "shambani", "mjini", "kijijini"]
_SW_TIMES = {"na": ["leo", "sasa"], "li": ["jana", "juzi"], "ta": ["kesho", "baadaye"]}
_SW_NUMBERS = ["mbili", "tatu", "nne", "tano"]


def swahili_sentence(rng: np.random.Generator) -> str:
    prefix = rng.choice(list(_SW_SUBJECTS))
    subject = rng.choice(_SW_SUBJECTS[prefix])
    tense = rng.choice(list(_SW_TIMES))
    verb = rng.choice(list(_SW_VERBS))
    obj = rng.choice(_SW_VERBS[verb])
    words = [subject, f"{prefix}{tense}{verb}", obj]
    if obj in ("ndizi", "embe", "samaki", "mbuzi") and rng.random() < 0.3:
        words.append(rng.choice(_SW_NUMBERS))
    if rng.random() < 0.7:
        words.append(rng.choice(_SW_PLACES))
    if rng.random() < 0.6:
        words.append(rng.choice(_SW_TIMES[tense]))
    return " ".join(words)


def unique_sentences(make: Callable[[np.random.Generator], str], n: int, rng: np.random.Generator,
                     exclude: set[str] = frozenset()) -> list[str]:
    """`n` distinct sentences from `make`, none in `exclude` (gives up after 50n draws)."""
    out: dict[str, None] = {}
    for _ in range(50 * n):
        s = make(rng)
        if s not in exclude:
            out.setdefault(s)
        if len(out) == n:
            break
    if len(out) < n:
        raise LrlError(f"the grammar yields only {len(out)} distinct sentences; asked for {n}")
    return list(out)


# -- rendering -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    language: str = "sw"  # espeak-ng voice (language) name
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # espeak-ng voice variants: one "speaker" each
    rate_wpm: tuple[int, int] = (130, 190)  # speaking rate range, words per minute
    pitch: tuple[int, int] = (25, 75)  # espeak-ng pitch range (0-99)
    snr_db: tuple[float, float] = (12.0, 35.0)  # added noise, signal-to-noise ratio range in dB
    noise_p: float = 0.7  # probability that a clip gets noise
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rate_wpm", "pitch", "snr_db"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: min {lo} > max {hi}")
        if not 0.0 <= self.noise_p <= 1.0:
            raise ValueError(f"noise_p must be in [0, 1], got {self.noise_p}")
        if not self.variants:
            raise ValueError("variants must name at least one espeak-ng voice variant")


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise LrlError("espeak-ng not found: `apt-get install espeak-ng` (or run `make setup`)")
    return exe


def render(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 mono at 16 kHz."""
    import soundfile as sf
    import soxr

    proc = subprocess.run(
        [_espeak(), "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise LrlError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if wav.ndim > 1:
        wav = wav.mean(axis=1)
    return soxr.resample(wav, sr, SAMPLE_RATE).astype(np.float32)


def _add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    # pink-ish noise: white noise through a one-pole low-pass plus some white, scaled to the SNR
    from scipy.signal import lfilter

    white = rng.standard_normal(len(wav)).astype(np.float32)
    noise = lfilter([0.1], [1.0, -0.9], white).astype(np.float32)
    noise += 0.3 * white
    p_sig = float(np.mean(wav**2)) + 1e-10
    p_noise = float(np.mean(noise**2)) + 1e-10
    return (wav + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))).astype(np.float32)


def synthesize_corpus(
    splits: dict[str, Sequence[str]],
    out: str | Path,
    config: SynthConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Render `splits` (split name -> sentences) into a Common Voice-layout folder at `out`."""
    import soundfile as sf

    config = config or SynthConfig()
    out = Path(out)
    clips = out / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    total = sum(len(s) for s in splits.values())
    done = 0
    rows_by_split: dict[str, list[list[str]]] = {}
    durations = []
    for split, sentences in splits.items():
        rows = []
        for i, sentence in enumerate(sentences):
            sentence = " ".join(sentence.split())  # a tab or newline inside a sentence would break the TSV
            variant = config.variants[int(rng.integers(len(config.variants)))]
            rate = int(rng.integers(config.rate_wpm[0], config.rate_wpm[1] + 1))
            pitch = int(rng.integers(config.pitch[0], config.pitch[1] + 1))
            wav = render(sentence, f"{config.language}+{variant}", rate, pitch)
            if rng.random() < config.noise_p:
                wav = _add_noise(wav, float(rng.uniform(*config.snr_db)), rng)
            wav *= 0.5 / max(1e-4, float(np.abs(wav).max()))
            name = f"synth_{config.language}_{split}_{i:05d}.wav"
            sf.write(clips / name, wav, SAMPLE_RATE, subtype="PCM_16")
            durations.append((name, int(round(1000 * len(wav) / SAMPLE_RATE))))
            rows.append([f"espeak-{config.language}-{variant}", name, f"{split}{i}", sentence, "2", "0", "", "",
                         f"rate {rate} pitch {pitch}", "", config.language, ""])
            done += 1
            if progress:
                progress(done, total)
        rows_by_split[split] = rows
    for split, rows in rows_by_split.items():
        _write_tsv(out / f"{split}.tsv", CV_COLUMNS, rows)
    _write_tsv(out / "validated.tsv", CV_COLUMNS, [r for rows in rows_by_split.values() for r in rows])
    _write_tsv(out / "clip_durations.tsv", ("clip", "duration[ms]"), [[n, str(d)] for n, d in durations])
    atomic_write_text(
        out / "SOURCE.md",
        f"Synthetic {config.language} speech made by `lrl` with espeak-ng (voices "
        f"{', '.join(config.variants)}; rate {config.rate_wpm} wpm; pitch {config.pitch}; noise at "
        f"{config.snr_db} dB SNR with p={config.noise_p}; seed {config.seed}). Licence: CC0 1.0.\n",
    )
    return out


def _write_tsv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A TSV that Common Voice readers (QUOTE_NONE, no escapes) read back field for field."""
    for row in rows:
        bad = [f for f in row if "\t" in f or "\n" in f or "\r" in f]
        if bad:
            raise ValueError(f"TSV fields may not hold tabs or line breaks: {bad[0]!r}")
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", escapechar="\\")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def make_swahili_demo_corpus(out: str | Path, n_train: int = 600, n_dev: int = 60, n_test: int = 80,
                             n_lm: int = 4000, seed: int = 0,
                             progress: Callable[[int, int], None] | None = None) -> Path:
    """The demo's default corpus: grammar sentences, split so that dev/test sentences never occur in
    train or the LM text, rendered by several espeak-ng voices; `lm.txt` holds the LM-only sentences."""
    rng = np.random.default_rng(seed)
    test = unique_sentences(swahili_sentence, n_test, rng)
    dev = unique_sentences(swahili_sentence, n_dev, rng, exclude=set(test))
    held = set(test) | set(dev)
    train = unique_sentences(swahili_sentence, n_train, rng, exclude=held)
    lm = unique_sentences(swahili_sentence, n_lm, rng, exclude=held)
    out = Path(out)
    synthesize_corpus({"train": train, "dev": dev, "test": test}, out, SynthConfig(seed=seed), progress)
    atomic_write_text(out / "lm.txt", "\n".join(lm) + "\n")
    return out


# -- multilingual speech for a cross-lingual starting checkpoint ------------------------------------------
# espeak-ng voices for languages whose Common Voice sentence files ship in ../shared/data/lm-text
# (file stem -> voice). Several Latin-script orthographies: what a small XLS-R-like start needs to share
# letters (and so CTC head rows) with many target languages.
ESPEAK_VOICES = {"cy": "cy", "eu": "eu", "ga-IE": "ga", "mt": "mt", "de": "de", "en": "en", "sw": "sw"}


def make_multilingual_corpus(
    out: str | Path,
    texts: dict[str, str | Path],
    n_per_language: int = 300,
    n_dev_per_language: int = 10,
    max_words: int = 12,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Speech in several languages (`texts`: language -> sentence file; "sw" may map to "grammar") as one
    manifest `out/manifest.tsv` (path, sentence, split, speaker, language) for `lrl data prepare`."""
    from lrl.core.io import read_text_lines

    out = Path(out)
    rng = np.random.default_rng(seed)
    rows = []
    for lang, src in texts.items():
        if lang not in ESPEAK_VOICES:
            raise LrlError(f"no espeak-ng voice known for {lang!r}; known: {sorted(ESPEAK_VOICES)}")
        n = n_per_language + n_dev_per_language
        if str(src) == "grammar":
            sents = unique_sentences(swahili_sentence, n, rng)
        else:
            pool = [" ".join(s.split()) for s in read_text_lines(src) if 2 <= len(s.split()) <= max_words]
            if len(pool) < n:
                raise LrlError(f"{src}: only {len(pool)} sentences of 2..{max_words} words; need {n}")
            sents = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        cfg = SynthConfig(language=ESPEAK_VOICES[lang], seed=int(rng.integers(1 << 31)))
        synthesize_corpus({"train": sents[:n_per_language], "dev": sents[n_per_language:]}, out / lang, cfg, progress)
        for split in ("train", "dev"):
            from lrl.core.io import read_table

            for r in read_table(out / lang / f"{split}.tsv")[1]:
                rows.append([f"{lang}/clips/{r['path']}", r["sentence"], split, r["client_id"], lang])
    _write_tsv(out / "manifest.tsv", ("path", "sentence", "split", "speaker", "language"), rows)
    return out
