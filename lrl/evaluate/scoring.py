"""Evaluating a CTC model: log-probs of a prepared split computed once and cached on disk (keyed by the
model's weights + config and the split's fingerprint), greedy and LM decoding side by side, WER/CER with
jiwer on text normalised by the model's own normaliser (clips longer than a chunk run in overlapping
chunks; rows the data preparation left out are counted as not scored), a per-utterance TSV and real-time factors;
tuning alpha/beta (and beam width) on cached dev log-probs in parallel, with a heatmap; transcription of
audio files in overlapping chunks with word timestamps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lrl.core.constants import AUDIO_SUFFIXES
from lrl.core.cpu import set_torch_threads
from lrl.core.io import LrlError, atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_DIR = ".lrl-cache/logits"  # under the prepared dataset directory
CACHE_VERSION = 1  # bump when the cached arrays change meaning
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
UTTERANCES_FILE = "utterances.tsv"
SUMMARY_FILE = "summary.json"
CHUNK_SECONDS = 20.0  # audio per forward pass of long clips (= the default longest training clip)
STRIDE_SECONDS = 2.0  # context on each side of a chunk whose frames are dropped when merging


@dataclass(frozen=True)
class EvalConfig:
    """What `evaluate` decodes and how the acoustic model is run."""

    split: str = "test"  # split of the prepared dataset
    batch_seconds: float = 60.0  # audio per forward pass (utterances sorted by length, padded)
    max_utterances: int | None = None  # evaluate only the first N utterances of the split (quick looks)
    cache: bool = True  # reuse cached log-probs (DATA/.lrl-cache/logits/<key>.npz)
    threads: int = 0  # torch CPU threads; 0 = automatic (lrl.core.cpu.choose_threads)
    lm_workers: int = 0  # processes for LM decoding; 0 = all cores
    chunk_seconds: float = CHUNK_SECONDS  # clips longer than this run in overlapping chunks, as `lrl transcribe`
    stride_seconds: float = STRIDE_SECONDS  # context on each side of a chunk, dropped when merging

    def __post_init__(self) -> None:
        self.chunking()  # validates chunk_seconds / stride_seconds
        if not self.split:
            raise ValueError("split must be a split name such as 'test' or 'dev'")
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")
        if self.max_utterances is not None and self.max_utterances < 1:
            raise ValueError(f"max_utterances must be >= 1 or None, got {self.max_utterances}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = default), got {self.threads}")
        if self.lm_workers < 0:
            raise ValueError(f"lm_workers must be >= 0 (0 = all cores), got {self.lm_workers}")

    def chunking(self) -> TranscribeConfig:
        return TranscribeConfig(chunk_seconds=self.chunk_seconds, stride_seconds=self.stride_seconds)


# -- the acoustic model ---------------------------------------------------------------------------------
class AcousticModel:
    """A saved `Wav2Vec2ForCTC` + its feature extractor, returning per-utterance log-probs (frames, vocab)."""

    def __init__(self, model_dir: str | Path, threads: int = 0):
        import torch
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise LrlError(f"{self.model_dir} is not a model directory (no config.json): pass the output of `lrl train`")
        set_torch_threads(threads)  # lrl.core.cpu: 0 = from the CPUs free right now
        self.model = Wav2Vec2ForCTC.from_pretrained(str(self.model_dir), dtype=torch.float32).eval()
        self.feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained(str(self.model_dir))
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.ratio = int(self.model.config.inputs_to_logits_ratio)  # samples per output frame

    @property
    def frame_seconds(self) -> float:
        return self.ratio / self.sample_rate

    def log_probs(self, waves: list[np.ndarray], batch_seconds: float = 60.0) -> list[np.ndarray]:
        """Log-softmax outputs of each waveform (16 kHz float32), in input order."""
        import torch

        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out: list[np.ndarray | None] = [None] * len(waves)
        batch: list[int] = []

        def run(idx: list[int]) -> None:
            feats = self.feature_extractor(
                [waves[i] for i in idx], sampling_rate=self.sample_rate, return_tensors="pt", padding=True,
                return_attention_mask=True,
            )
            with torch.inference_mode():
                kwargs = {"attention_mask": feats["attention_mask"]} if len(idx) > 1 else {}
                logits = self.model(feats["input_values"], **kwargs).logits
                lengths = self.model._get_feat_extract_output_lengths(torch.tensor([len(waves[i]) for i in idx]))
                logp = torch.log_softmax(logits.float(), dim=-1).numpy()
            for j, i in enumerate(idx):
                out[i] = logp[j, : int(lengths[j])]

        for i in order:
            longest = max([len(waves[j]) for j in batch] + [len(waves[i])])
            if batch and longest * (len(batch) + 1) > batch_seconds * self.sample_rate:
                run(batch)
                batch = []
            batch.append(i)
        if batch:
            run(batch)
        return out  # type: ignore[return-value]


def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of the model's weights file and config.json."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    weights = [model_dir / w for w in WEIGHT_FILES if (model_dir / w).is_file()]
    if not weights:
        raise LrlError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {model_dir}: is this a saved Wav2Vec2ForCTC?")
    _hash_file(weights[0], h)
    _hash_file(model_dir / "config.json", h)
    return h.hexdigest()


# -- log-prob cache ---------------------------------------------------------------------------------
@dataclass
class SplitLogProbs:
    """Log-probs of one split: per-utterance arrays (float32) with ids, references and durations."""

    ids: list[str]
    refs: list[str]
    durations: list[float]
    logps: list[np.ndarray]
    model_seconds: float  # forward-pass wall time when computed (not when loaded from the cache)
    frame_seconds: float
    cached: bool = False
    key: str = ""
    split_rows: int = -1  # rows of the split before max_utterances (-1: as many as ids)

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))


def _save_cache(path: Path, s: SplitLogProbs) -> None:
    import io

    lengths = np.array([len(x) for x in s.logps], dtype=np.int64)
    flat = np.concatenate(s.logps).astype(np.float32) if s.logps else np.zeros((0, 0), np.float32)
    meta = {"version": CACHE_VERSION, "ids": s.ids, "refs": s.refs, "durations": s.durations,
            "model_seconds": s.model_seconds, "frame_seconds": s.frame_seconds, "split_rows": s.split_rows}
    buf = io.BytesIO()
    np.savez(buf, logp=flat, lengths=lengths, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    atomic_write_bytes(path, buf.getvalue())


def _load_cache(path: Path, key: str) -> SplitLogProbs | None:
    try:
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("version") != CACHE_VERSION:
                return None
            flat, lengths = z["logp"].astype(np.float32), z["lengths"]
    except Exception as e:  # a truncated or foreign file: recompute rather than fail
        logger.warning("ignoring unreadable log-prob cache %s (%s)", path, e)
        return None
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    logps = [flat[bounds[i]:bounds[i + 1]] for i in range(len(lengths))]
    return SplitLogProbs(meta["ids"], meta["refs"], meta["durations"], logps, meta["model_seconds"],
                         meta["frame_seconds"], cached=True, key=key, split_rows=meta.get("split_rows", -1))


def split_log_probs(model_dir: str | Path, data_dir: str | Path, config: EvalConfig | None = None) -> SplitLogProbs:
    """Log-probs of `config.split` of a prepared dataset, from the cache when the model weights/config and
    the split's fingerprint are unchanged; computed with the model (and cached) otherwise. Clips longer than
    `config.chunk_seconds` run in overlapping chunks (`chunked_log_probs`), so memory stays bounded."""
    from lrl.data.prepare import load_prepared

    config = config or EvalConfig()
    data_dir = Path(data_dir)
    dd, data_vocab = load_prepared(data_dir)
    if config.split not in dd:
        raise LrlError(f"{data_dir} has no split {config.split!r}; it has {sorted(dd)}. Choose one with --split.")
    ds = dd[config.split]
    split_rows = len(ds)
    if config.max_utterances is not None:
        ds = ds.select(range(min(config.max_utterances, len(ds))))
    # the split's fingerprint, plus its Arrow files' sizes and times (a dataset rewritten by other means)
    files = sorted((Path(f["filename"]).name, Path(f["filename"]).stat().st_size, Path(f["filename"]).stat().st_mtime_ns)
                   for f in ds.cache_files if Path(f["filename"]).is_file())
    key_src = (f"{CACHE_VERSION}|{model_fingerprint(model_dir)}|{ds._fingerprint}|{files}|{config.split}|{len(ds)}|"
               f"{config.chunk_seconds}|{config.stride_seconds}")
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    path = data_dir / CACHE_DIR / f"{key}.npz"
    if config.cache and path.is_file():
        loaded = _load_cache(path, key)
        if loaded is not None:
            logger.info("log-probs of %s/%s from the cache %s", data_dir.name, config.split, path)
            return loaded
    _check_vocab(model_dir, data_vocab)
    am = AcousticModel(model_dir, threads=config.threads)
    ids = [str(x) for x in list(ds["id"])]
    refs = [str(x) for x in list(ds["text"])]
    durations = [float(x) for x in list(ds["duration"])]
    waves = [np.asarray(a, dtype=np.float32) for a in list(ds["audio"])]
    t0 = time.perf_counter()
    long = [len(w) > config.chunk_seconds * am.sample_rate for w in waves]
    batched = iter(am.log_probs([w for w, x in zip(waves, long, strict=True) if not x], config.batch_seconds))
    logps = [chunked_log_probs(am, w, config.chunking()) if x else next(batched) for w, x in zip(waves, long, strict=True)]
    seconds = time.perf_counter() - t0
    out = SplitLogProbs(ids, refs, durations, logps, seconds, am.frame_seconds, cached=False, key=key,
                        split_rows=split_rows)
    if config.cache:
        _save_cache(path, out)
    logger.info("log-probs of %d utterances (%.1f s audio) in %.1f s (RTF %.3f)", len(ids), out.audio_seconds,
                seconds, seconds / max(out.audio_seconds, 1e-9))
    return out


def _check_vocab(model_dir: str | Path, data_vocab) -> None:
    from lrl.data.vocab import Vocab

    try:
        model_vocab = Vocab.load(model_dir)
    except (LrlError, FileNotFoundError) as e:
        raise LrlError(f"{model_dir}: cannot read the model's vocabulary/normaliser ({e}); a model dir holds the "
                       "processor files and normalizer.json (`lrl train` writes them)") from e
    if model_vocab.tokens != data_vocab.tokens:
        logger.warning("the model's vocabulary differs from the dataset's (%d vs %d tokens): references are "
                       "scored as they are, but the model may not be able to write some of their characters",
                       len(model_vocab), len(data_vocab))


def _warn_if_flat(logps: list[np.ndarray], threshold: float = 0.5) -> None:
    """Beam search slows down by orders of magnitude on near-uniform outputs (every token is expanded)."""
    frames = [np.exp(lp.max(axis=1)) for lp in logps if len(lp)]
    if frames and float(np.mean(np.concatenate(frames))) < threshold:
        logger.warning(
            "the model's outputs are flat (mean top-token probability %.2f < %.2f: under-trained?); LM beam "
            "search expands most tokens at every frame and will be slow. Use --no-lm, or train longer.",
            float(np.mean(np.concatenate(frames))), threshold,
        )


# -- scoring ---------------------------------------------------------------------------------------
@dataclass
class Score:
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int


def score(refs: list[str], hyps: list[str]) -> Score:
    """Corpus WER/CER with jiwer (refs/hyps already normalised); empty references are allowed."""
    import jiwer

    if not refs:
        return Score(0.0, 0.0, 0, 0, 0, 0)
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    n = w.hits + w.substitutions + w.deletions
    return Score(float(w.wer), float(c.cer), w.substitutions, w.deletions, w.insertions, n)


def word_errors(ref: str, hyp: str) -> int:
    import jiwer

    w = jiwer.process_words(ref, hyp)
    return w.substitutions + w.deletions + w.insertions


# -- evaluate ------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    split: str
    n: int  # utterances scored
    not_scored: dict  # rows of the split not scored, per reason: what `lrl data prepare` skipped (skipped.tsv),
    # empty_reference (empty under the model's normaliser), max_utterances (left out by --max-utterances)
    greedy: Score
    lm: Score | None
    rtf_model: float  # model seconds per audio second (from when the log-probs were computed)
    rtf_greedy: float
    rtf_lm: float | None
    cached: bool
    decoder: dict = field(default_factory=dict)
    out_dir: Path | None = None
    chunked: int = 0  # scored clips longer than chunk_seconds, run in overlapping chunks
    kept_unfiltered: dict = field(default_factory=dict)  # rows prepare kept that training's filters would drop
    prepare_record: bool = True  # False: no summary.json, so rows dropped before the dataset are not counted

    def counts(self) -> str:
        """'test: 347 scored, 3 not scored (truncated 2, empty_text 1)'."""
        why = ", ".join(f"{r} {n}" for r, n in self.not_scored.items())
        line = f"{self.split}: {self.n} scored, {sum(self.not_scored.values())} not scored" + (f" ({why})" if why else "")
        if not self.prepare_record:
            line += " (no prepare summary.json: rows dropped before the dataset are unknown)"
        if self.kept_unfiltered:
            line += "; kept for scoring though training would drop them: " + ", ".join(
                f"{r} {n}" for r, n in self.kept_unfiltered.items())
        if self.chunked:
            line += f"; {self.chunked} long clip(s) scored in chunks"
        return line

    def table(self) -> str:
        rows = [("greedy", self.greedy, self.rtf_greedy)]
        if self.lm is not None:
            rows.append(("LM beam", self.lm, self.rtf_lm))
        lines = ["| decoding | WER | CER | sub | del | ins | RTF |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s, rtf in rows:
            lines.append(f"| {name} | {s.wer:.2%} | {s.cer:.2%} | {s.substitutions} | {s.deletions} | "
                         f"{s.insertions} | {rtf:.3g} |")
        lines.append(f"| model forward{' (cached)' if self.cached else ''} | | | | | | {self.rtf_model:.3g} |")
        return "\n".join(lines)


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    config: EvalConfig | None = None,
    lm: str | Path | None = None,
    use_lm: bool = True,
    out_dir: str | Path | None = None,
) -> EvalResult:
    """WER/CER of a model on a split, greedy and (when an LM is given or installed in the model dir) with
    beam search, written to OUT/utterances.tsv and OUT/summary.json (OUT defaults to MODEL/eval-<split>).
    Every row of the split is scored or counted in `not_scored` with its reason."""
    from lrl.core.text import Normalizer
    from lrl.data.prepare import split_record
    from lrl.data.vocab import Vocab
    from lrl.decode.decoder import CTCDecoder

    config = config or EvalConfig()
    model_dir = Path(model_dir)
    logps = split_log_probs(model_dir, data_dir, config)
    norm = Normalizer(Vocab.load(model_dir).normalizer)
    decoder = CTCDecoder.load(model_dir, lm=lm, workers=config.lm_workers)
    with_lm = use_lm and decoder.has_lm
    if with_lm:
        _warn_if_flat(logps.logps)

    record = split_record(data_dir, config.split)
    not_scored = Counter(record.get("skipped", {}) if record else {})
    not_scored["max_utterances"] = max(0, logps.split_rows - len(logps.ids))
    keep, refs = [], []
    for i, r in enumerate(logps.refs):
        text = norm(r)
        if not text:
            not_scored["empty_reference"] += 1
            continue
        keep.append(i)
        refs.append(text)
    if not keep:
        raise LrlError(f"no utterance with a non-empty reference in split {config.split!r}")
    audio = sum(logps.durations[i] for i in keep)

    t0 = time.perf_counter()
    greedy = [norm(decoder.greedy(logps.logps[i]).text) or "" for i in keep]
    t_greedy = time.perf_counter() - t0
    lm_hyps, t_lm = None, None
    if with_lm:
        t0 = time.perf_counter()
        with decoder:
            lm_hyps = [norm(h.text) or "" for h in decoder.decode_batch([logps.logps[i] for i in keep])]
        t_lm = time.perf_counter() - t0

    out_dir = Path(out_dir) if out_dir else model_dir / f"eval-{config.split}"
    lines = ["id\tduration\tref\tgreedy\tgreedy_errors" + ("\tlm\tlm_errors" if with_lm else "")]
    for j, i in enumerate(keep):
        row = [logps.ids[i], f"{logps.durations[i]:.2f}", refs[j], greedy[j], str(word_errors(refs[j], greedy[j]))]
        if lm_hyps is not None:
            row += [lm_hyps[j], str(word_errors(refs[j], lm_hyps[j]))]
        lines.append("\t".join(x.replace("\t", " ") for x in row))
    atomic_write_text(out_dir / UTTERANCES_FILE, "\n".join(lines) + "\n")

    res = EvalResult(
        split=config.split, n=len(keep), not_scored={k: v for k, v in sorted(not_scored.items()) if v},
        greedy=score(refs, greedy), lm=score(refs, lm_hyps) if lm_hyps is not None else None,
        rtf_model=logps.model_seconds / max(logps.audio_seconds, 1e-9), rtf_greedy=t_greedy / audio,
        rtf_lm=t_lm / audio if t_lm is not None else None, cached=logps.cached,
        decoder={"lm": str(decoder.lm_path) if with_lm else None, **{k: getattr(decoder.config, k) for k in (
            "alpha", "beta", "beam_width")}} if with_lm else {},
        out_dir=out_dir, chunked=sum(logps.durations[i] > config.chunk_seconds for i in keep),
        kept_unfiltered=dict(record.get("kept_unfiltered", {})) if record else {}, prepare_record=record is not None,
    )
    summary = {k: v for k, v in asdict(res).items() if k != "out_dir"}
    summary.update(model=str(model_dir), data=str(data_dir), audio_seconds=audio, cache_key=logps.key,
                   counts=res.counts())
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    return res


# -- tuning ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneConfig:
    """The (alpha, beta) grid and beam widths `tune_grid` searches."""

    alphas: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)  # LM weights of the coarse grid
    betas: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0)  # word insertion bonuses of the coarse grid
    refine: bool = True  # then a 3x3 grid around the best point at half the coarse steps
    grid_beam: int = 32  # beam width during the grid search (the LM weights matter more than the beam)
    beam_widths: tuple[int, ...] = (16, 32, 64, 100)  # tried at the best (alpha, beta); the smallest
    # within `beam_tolerance` of the best WER wins
    beam_tolerance: float = 0.0  # absolute WER a smaller beam may lose and still be chosen
    workers: int = 0  # processes (each inherits the loaded LM); 0 = all cores

    def __post_init__(self) -> None:
        if not self.alphas or not self.betas:
            raise ValueError(f"alphas and betas must be non-empty, got {self.alphas} / {self.betas}")
        if min(self.alphas) < 0:
            raise ValueError(f"alphas must be >= 0, got {self.alphas}")
        if self.grid_beam < 1 or not self.beam_widths or min(self.beam_widths) < 1:
            raise ValueError(f"grid_beam and beam_widths must be >= 1, got {self.grid_beam} / {self.beam_widths}")
        if self.beam_tolerance < 0:
            raise ValueError(f"beam_tolerance must be >= 0, got {self.beam_tolerance}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")


@dataclass(frozen=True)
class TunePoint:
    alpha: float
    beta: float
    beam_width: int
    wer: float
    cer: float
    seconds: float  # decoding wall time of the whole dev set at this point


@dataclass
class TuneResult:
    greedy_wer: float
    default: TunePoint  # pyctcdecode's defaults (0.5, 1.5) at the grid beam
    coarse: list[TunePoint]
    fine: list[TunePoint]
    beams: list[TunePoint]
    best: TunePoint

    def grid(self, points: list[TunePoint]) -> tuple[list[float], list[float], np.ndarray]:
        alphas = sorted({p.alpha for p in points})
        betas = sorted({p.beta for p in points})
        m = np.full((len(betas), len(alphas)), np.nan)
        for p in points:
            m[betas.index(p.beta), alphas.index(p.alpha)] = p.wer
        return alphas, betas, m


# Dev log-probs registered before the pool forks (workers inherit them with the LM).
_TUNE_DATA: dict[str, tuple] = {}


def _tune_point(args: tuple) -> TunePoint:
    from lrl.decode.decoder import _beam_search

    key, data_key, params = args
    prepared, refs, norm = _TUNE_DATA[data_key]
    t0 = time.perf_counter()
    hyps = [norm(_beam_search(key, params, lp, idx)[0]) or "" if len(lp) else "" for lp, idx in prepared]
    s = score(refs, hyps)
    return TunePoint(float(params[0]), float(params[1]), int(params[4]), s.wer, s.cer, time.perf_counter() - t0)


def _best(points: list[TunePoint]) -> TunePoint:
    return min(points, key=lambda p: (round(p.wer, 9), round(p.cer, 9), abs(p.alpha - 0.5) + abs(p.beta - 1.5)))


def tune_grid(decoder, logps: list[np.ndarray], refs: list[str], config: TuneConfig | None = None,
              normalizer=None) -> TuneResult:
    """Grid-search alpha/beta (then beam width) of `decoder` (a CTCDecoder with an LM) on dev log-probs.
    Points run in parallel over the decoder's process pool; every worker inherits the LM loaded once."""
    import os
    from dataclasses import replace

    config = config or TuneConfig()
    if not decoder.has_lm:
        raise LrlError("tuning needs a language model: pass --lm DIR (from `lrl lm build`)")
    norm = normalizer or (lambda t: " ".join(t.split()))
    base = replace(decoder.config, beam_width=config.grid_beam)
    decoder.close()  # a pool forked earlier would not see the dev data registered below
    key = decoder.key  # builds the decoder (loads the LM) before any fork
    data_key = os.urandom(8).hex()
    _TUNE_DATA[data_key] = ([decoder._prepare(lp, base) for lp in logps], list(refs), norm)
    try:
        greedy = score(list(refs), [norm(decoder.greedy(lp).text) or "" for lp in logps]).wer

        def run(points: list[tuple[float, float, int]]) -> list[TunePoint]:
            tasks = [(key, data_key, decoder._params(replace(base, alpha=float(a), beta=float(b), beam_width=w)))
                     for a, b, w in points]
            return decoder.map_pool(_tune_point, tasks, workers=config.workers)

        coarse_pts = [(a, b, config.grid_beam) for b in config.betas for a in config.alphas]
        default_pt = (0.5, 1.5, config.grid_beam)
        todo = coarse_pts + ([default_pt] if default_pt not in coarse_pts else [])
        done = run(todo)
        coarse = done[: len(coarse_pts)]
        default = next(p for p in done if (p.alpha, p.beta) == (0.5, 1.5))
        best = _best(coarse)
        fine: list[TunePoint] = []
        if config.refine:
            da = _step(config.alphas) / 2
            db = _step(config.betas) / 2
            pts = [(round(best.alpha + i * da, 4), round(best.beta + j * db, 4), config.grid_beam)
                   for j in (-1, 0, 1) for i in (-1, 0, 1) if best.alpha + i * da >= 0]
            seen = {(p.alpha, p.beta) for p in coarse}
            fine = run([p for p in pts if (p[0], p[1]) not in seen]) + [p for p in coarse if (p.alpha, p.beta) in {
                (q[0], q[1]) for q in pts}]
            best = _best(coarse + fine)
        beams = run([(best.alpha, best.beta, w) for w in sorted(set(config.beam_widths))])
        top = min(p.wer for p in beams)
        chosen = min((p for p in beams if p.wer <= top + config.beam_tolerance), key=lambda p: p.beam_width)
        return TuneResult(greedy, default, coarse, fine, beams, chosen)
    finally:
        _TUNE_DATA.pop(data_key, None)
        decoder.close()


def _step(values: tuple[float, ...]) -> float:
    v = sorted(set(values))
    return min(b - a for a, b in zip(v, v[1:], strict=False)) if len(v) > 1 else 1.0


def plot_heatmap(result: TuneResult, path: str | Path, title: str = "") -> Path:
    """WER over (alpha, beta): the coarse grid, and the refined grid beside it; the best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("coarse grid", result.coarse)] + ([("refined grid", result.fine)] if result.fine else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5), squeeze=False)
    vmin = min(p.wer for _, pts in panels for p in pts)
    vmax = max(p.wer for _, pts in panels for p in pts)
    for ax, (name, pts) in zip(axes[0], panels, strict=True):
        alphas, betas, m = result.grid(pts)
        im = ax.imshow(m * 100, origin="lower", cmap="viridis_r", aspect="auto", vmin=vmin * 100, vmax=vmax * 100)
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlabel("alpha (LM weight)")
        ax.set_ylabel("beta (word insertion bonus)")
        ax.set_title(f"dev WER %, {name} (beam {pts[0].beam_width})")
        for (r, c), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(c, r, f"{v * 100:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v > (vmin + vmax) / 2 else "black")
        b = result.best
        if b.alpha in alphas and b.beta in betas:
            from matplotlib.patches import Rectangle

            c, r = alphas.index(b.alpha), betas.index(b.beta)
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3,
                                   label=f"best: alpha={b.alpha:g}, beta={b.beta:g}"))
            ax.plot(c + 0.32, r + 0.3, marker="*", color="red", markersize=12, markeredgecolor="white")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
        fig.colorbar(im, ax=ax, label="WER %")
    fig.suptitle(title or (f"greedy {result.greedy_wer:.1%} | defaults (0.5, 1.5) {result.default.wer:.1%} | "
                           f"best {result.best.wer:.1%} at alpha={result.best.alpha:g}, beta={result.best.beta:g}, "
                           f"beam {result.best.beam_width}"), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tune(model_dir: str | Path, data_dir: str | Path, lm: str | Path | None = None, split: str = "dev",
         config: TuneConfig | None = None, install: bool = True, cache: bool = True) -> tuple[TuneResult, Path]:
    """Tune on the cached log-probs of `split`; write MODEL/decoder.json (lm, alpha, beta, beam, dev WER
    before/after), MODEL/tune-<split>/{grid.tsv, heatmap.png}, and with `install` copy the LM into
    MODEL/language_model/ with the tuned attrs.json (+ MODEL/alphabet.json) so Wav2Vec2ProcessorWithLM and
    `lrl evaluate` use it."""
    from lrl.core.text import Normalizer
    from lrl.data.vocab import Vocab
    from lrl.decode.decoder import CTCDecoder, write_decoder_json
    from lrl.decode.lm import LM_DIR, install_lm

    config = config or TuneConfig()
    model_dir = Path(model_dir)
    logps = split_log_probs(model_dir, data_dir, EvalConfig(split=split, cache=cache))
    vocab = Vocab.load(model_dir)
    norm = Normalizer(vocab.normalizer)
    keep = [i for i, r in enumerate(logps.refs) if norm(r)]
    _warn_if_flat([logps.logps[i] for i in keep])
    decoder = CTCDecoder.load(model_dir, lm=lm, workers=config.workers)
    lm_source = decoder.lm_path
    result = tune_grid(decoder, [logps.logps[i] for i in keep], [norm(logps.refs[i]) for i in keep], config, norm)
    out = model_dir / f"tune-{split}"
    rows = ["pass\talpha\tbeta\tbeam_width\twer\tcer\tseconds"]
    for name, pts in (("coarse", result.coarse), ("fine", result.fine), ("beam", result.beams), ("default", [result.default])):
        rows += [f"{name}\t{p.alpha:g}\t{p.beta:g}\t{p.beam_width}\t{p.wer:.6f}\t{p.cer:.6f}\t{p.seconds:.3f}" for p in pts]
    atomic_write_text(out / "grid.tsv", "\n".join(rows) + "\n")
    plot_heatmap(result, out / "heatmap.png")
    b = result.best
    cfg = decoder.with_config(alpha=b.alpha, beta=b.beta, beam_width=b.beam_width)
    lm_record = str(lm_source)
    if install:
        install_lm(lm_source, model_dir, vocab, b.alpha, b.beta, cfg.unk_score_offset)
        lm_record = str(model_dir / LM_DIR)
    write_decoder_json(
        model_dir, cfg, lm=lm_record, lm_source=str(lm_source), tuned_on=f"{data_dir}:{split}", n_utterances=len(keep),
        dev_wer={"greedy": result.greedy_wer, "defaults_0.5_1.5": result.default.wer, "tuned": b.wer},
        dev_cer_tuned=b.cer,
    )
    return result, out


# -- transcription ------------------------------------------------------------------------------------


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


def chunked_log_probs(am: AcousticModel, wave: np.ndarray, config: TranscribeConfig) -> np.ndarray:
    """Log-probs of a long waveform from overlapping chunks: each chunk keeps the frames whose centre lies
    in its own part (outside the `stride_seconds` context on either side), so every frame comes from a
    chunk that saw context around it."""
    sr, ratio = am.sample_rate, am.ratio
    chunk = int(config.chunk_seconds * sr)
    stride = int(config.stride_seconds * sr)
    if len(wave) <= chunk:
        return am.log_probs([wave])[0]
    step = chunk - 2 * stride
    pieces = []
    start = 0
    while True:
        lo, hi = max(0, start - stride), min(len(wave), start + step + stride)
        lp = am.log_probs([wave[lo:hi]])[0]
        own_end = len(wave) if hi >= len(wave) else start + step
        centres = lo + (np.arange(len(lp)) + 0.5) * ratio
        pieces.append(lp[(centres >= start) & (centres < own_end)])
        if hi >= len(wave):
            break
        start += step
    return np.concatenate(pieces)


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
