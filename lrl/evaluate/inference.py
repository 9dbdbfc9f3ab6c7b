"""Running a saved CTC model: `AcousticModel` (batched by seconds of padded audio) and `chunked_log_probs` for
clips longer than a chunk; `split_log_probs`, the log-probs of a prepared split, cached on disk under the
dataset directory and keyed by the model's weights + config + vocabulary and the split's files (names, sizes,
mtimes) and row count. `check_model` is the one check of a model directory (weights, config, a vocabulary the
size of the head) every load goes through. Scoring, tuning and transcription all start from here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lrl.core.batching import pack_batches
from lrl.core.cpu import set_torch_threads
from lrl.core.hf_transformers import conv_output_lengths
from lrl.core.io import LrlError, atomic_write_bytes
from lrl.models.checkpoints import PICKLE_WEIGHTS, SAFE_WEIGHTS, check_ctc_model, load_ctc_model

if TYPE_CHECKING:
    from lrl.data.vocab import Vocab
    from lrl.evaluate.scoring import EvaluateConfig
    from lrl.evaluate.transcribe import TranscribeConfig

logger = logging.getLogger(__name__)

CACHE_DIR = ".lrl-cache/logits"  # under the prepared dataset directory
CACHE_VERSION = 2  # bump when the cached arrays change meaning (2: rows with NaN/Inf audio left out)
WEIGHT_FILES = (SAFE_WEIGHTS[0], PICKLE_WEIGHTS[0])  # single-file weights (a shard index would not fingerprint its shards)
CHUNK_SECONDS = 20.0  # audio per forward pass of long clips (= the default longest training clip)
STRIDE_SECONDS = 2.0  # context on each side of a chunk whose frames are dropped when merging


# -- the acoustic model ---------------------------------------------------------------------------------
def check_model(model_dir: str | Path, allow_pickle: bool = False) -> Vocab:
    """The vocabulary of a saved CTC model directory, after checking the directory (`check_ctc_model`: config,
    weights, head) and that vocab.json has one token per output of the head (another vocabulary would decode
    with the wrong token map). LrlError naming the file at fault."""
    from lrl.data.vocab import Vocab

    model_dir = Path(model_dir)
    outputs = check_ctc_model(model_dir, allow_pickle)
    try:
        vocab = Vocab.load(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise LrlError(f"{model_dir}: cannot read the model's vocabulary ({e}); a model directory holds vocab.json "
                       "and normalizer.json beside the weights (`lrl train run` writes them)") from e
    if outputs >= 0 and len(vocab) != outputs:
        raise LrlError(f"{model_dir / 'vocab.json'} has {len(vocab)} tokens but the model's head has {outputs} outputs: "
                       "expected the vocabulary the model was trained with (the vocab.json `lrl train run` saved "
                       "beside it)")
    return vocab


def min_samples(config) -> int:
    """The shortest input that gives one output frame: the conv front end's receptive field."""
    n = 1
    for k, s in zip(reversed(config.conv_kernel), reversed(config.conv_stride), strict=True):
        n = (n - 1) * s + k
    return n


class AcousticModel:
    """A saved `Wav2Vec2ForCTC` + its feature extractor, returning per-utterance log-probs (frames, vocab).
    Loading checks the directory (`check_model`); pickle weights only with `allow_pickle`."""

    def __init__(self, model_dir: str | Path, threads: int = 0, allow_pickle: bool = False):
        self.model_dir = Path(model_dir)
        self.vocab = check_model(self.model_dir, allow_pickle)
        set_torch_threads(threads)  # lrl.core.cpu: 0 = from the CPUs free right now
        self.model, self.feature_extractor = load_ctc_model(self.model_dir, allow_pickle)
        if self.model.config.vocab_size != len(self.vocab):  # pickle weights: the head is known only now
            raise LrlError(f"{self.model_dir / 'vocab.json'} has {len(self.vocab)} tokens but the model's head has "
                           f"{self.model.config.vocab_size} outputs: expected the vocabulary the model was trained with")
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.ratio = int(self.model.config.inputs_to_logits_ratio)  # samples per output frame
        self.min_samples = min_samples(self.model.config)

    @property
    def frame_seconds(self) -> float:
        return self.ratio / self.sample_rate

    def log_probs(self, waves: list[np.ndarray], batch_seconds: float = 60.0) -> list[np.ndarray]:
        """Log-softmax outputs of each waveform (16 kHz float32), in input order. Forward passes hold up to
        `batch_seconds` of padded audio (`pack_batches`: sorted by length); a longer clip runs alone."""
        import torch

        out: list[np.ndarray | None] = [None] * len(waves)
        short = [i for i, w in enumerate(waves) if len(w) < self.min_samples]
        if short:  # shorter than the conv front end's receptive field: no frame at all; zeros make one
            logger.info("%d clip(s) shorter than %.3f s padded with silence to give one frame", len(short),
                        self.min_samples / self.sample_rate)
            waves = list(waves)
            for i in short:
                waves[i] = np.pad(waves[i], (0, self.min_samples - len(waves[i])))
        # a clip over the cap runs alone either way: capping its duration at the cap keeps pack_batches'
        # warning about such clips (worded for training data) out of inference
        seconds = [min(len(w) / self.sample_rate, batch_seconds) for w in waves]
        for idx in pack_batches(seconds, batch_seconds):
            feats = self.feature_extractor(
                [waves[i] for i in idx], sampling_rate=self.sample_rate, return_tensors="pt", padding=True,
                return_attention_mask=True,
            )
            with torch.inference_mode():
                kwargs = {"attention_mask": feats["attention_mask"]} if len(idx) > 1 else {}
                logits = self.model(feats["input_values"], **kwargs).logits
                lengths = conv_output_lengths(torch.tensor([len(waves[i]) for i in idx]), self.model.config)
                logp = torch.log_softmax(logits.float(), dim=-1).numpy()
            for j, i in enumerate(idx):
                out[i] = logp[j, : int(lengths[j])]
        return out  # type: ignore[return-value]


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


# -- the log-prob cache of a split -----------------------------------------------------------------
def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 of the model's weights file, config.json and vocab.json (the token map of the log-probs)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    weights = [model_dir / w for w in WEIGHT_FILES if (model_dir / w).is_file()]
    if not weights:
        raise LrlError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {model_dir}: is this a saved Wav2Vec2ForCTC?")
    _hash_file(weights[0], h)
    _hash_file(model_dir / "config.json", h)
    if (model_dir / "vocab.json").is_file():
        _hash_file(model_dir / "vocab.json", h)
    return h.hexdigest()


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
    non_finite: list[str] = field(default_factory=list)  # ids of rows left out: NaN/Inf samples

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))


def _save_cache(path: Path, s: SplitLogProbs) -> None:
    import io

    lengths = np.array([len(x) for x in s.logps], dtype=np.int64)
    flat = np.concatenate(s.logps).astype(np.float32) if s.logps else np.zeros((0, 0), np.float32)
    meta = {"version": CACHE_VERSION, "ids": s.ids, "refs": s.refs, "durations": s.durations,
            "model_seconds": s.model_seconds, "frame_seconds": s.frame_seconds, "split_rows": s.split_rows,
            "non_finite": s.non_finite}
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
                         meta["frame_seconds"], cached=True, key=key, split_rows=meta.get("split_rows", -1),
                         non_finite=list(meta.get("non_finite", [])))


def _split_files(ds, split_dir: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the files a split was read from: its Arrow files (`Dataset.cache_files`) or,
    for a split loaded into memory (it has none), the files of its folder. Preparing the split again rewrites
    them, so the cache key follows the data; names, not paths, so a moved dataset keeps its cache. (Public
    API: `Dataset._fingerprint` would do, but is private to `datasets`.)"""
    paths = [Path(f["filename"]) for f in ds.cache_files]
    if not paths and split_dir.is_dir():
        paths = [p for p in split_dir.iterdir() if p.is_file()]
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file())


def split_log_probs(model_dir: str | Path, data_dir: str | Path, config: EvaluateConfig) -> SplitLogProbs:
    """Log-probs of `config.split` of a prepared dataset, from the cache when the model weights/config and
    the split's files and row count are unchanged; computed with the model (and cached) otherwise. Clips longer
    than `config.chunk_seconds` run in overlapping chunks (`chunked_log_probs`), so memory stays bounded."""
    from lrl.data.prepare import load_prepared

    data_dir = Path(data_dir)
    model_vocab = check_model(model_dir, config.allow_pickle)  # on every call: the cache may hide a broken model
    dd, data_vocab = load_prepared(data_dir)
    if config.split not in dd:
        raise LrlError(f"{data_dir} has no split {config.split!r}; it has {sorted(dd)}. Choose one with --split.")
    ds = dd[config.split]
    split_rows = len(ds)
    if config.max_utterances is not None:
        ds = ds.select(range(min(config.max_utterances, len(ds))))
    files = _split_files(ds, data_dir / config.split)
    key_src = (f"{CACHE_VERSION}|{model_fingerprint(model_dir)}|{files}|{config.split}|{len(ds)}|"
               f"{config.chunk_seconds}|{config.stride_seconds}")
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    path = data_dir / CACHE_DIR / f"{key}.npz"
    if config.cache and path.is_file():
        loaded = _load_cache(path, key)
        if loaded is not None:
            logger.info("log-probs of %s/%s from the cache %s", data_dir.name, config.split, path)
            _warn_non_finite(loaded.non_finite, config.split)
            return loaded
    _check_vocab(model_vocab, data_vocab)
    am = AcousticModel(model_dir, threads=config.threads, allow_pickle=config.allow_pickle)
    ids = [str(x) for x in list(ds["id"])]
    refs = [str(x) for x in list(ds["text"])]
    durations = [float(x) for x in list(ds["duration"])]
    waves = [np.asarray(a, dtype=np.float32) for a in list(ds["audio"])]
    finite = [bool(np.isfinite(w).all()) for w in waves]
    non_finite = [i for i, ok in zip(ids, finite, strict=True) if not ok]
    _warn_non_finite(non_finite, config.split)
    ids, refs, durations, waves = ([x for x, ok in zip(xs, finite, strict=True) if ok]
                                   for xs in (ids, refs, durations, waves))
    t0 = time.perf_counter()
    long = [len(w) > config.chunk_seconds * am.sample_rate for w in waves]
    batched = iter(am.log_probs([w for w, x in zip(waves, long, strict=True) if not x], config.batch_seconds))
    logps = [chunked_log_probs(am, w, config.chunking()) if x else next(batched) for w, x in zip(waves, long, strict=True)]
    seconds = time.perf_counter() - t0
    out = SplitLogProbs(ids, refs, durations, logps, seconds, am.frame_seconds, cached=False, key=key,
                        split_rows=split_rows, non_finite=non_finite)
    if config.cache:
        _save_cache(path, out)
    logger.info("log-probs of %d utterances (%.1f s audio) in %.1f s (RTF %.3f)", len(ids), out.audio_seconds,
                seconds, seconds / max(out.audio_seconds, 1e-9))
    return out


def _warn_non_finite(ids: list[str], split: str) -> None:
    if ids:
        logger.warning("%d row(s) of %s have NaN or infinite samples and are not scored (non_finite): %s; prepare "
                       "the data again with `lrl data prepare`, which skips such clips", len(ids), split,
                       ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))


def _check_vocab(model_vocab: Vocab, data_vocab: Vocab) -> None:
    if model_vocab.tokens != data_vocab.tokens:
        logger.warning("the model's vocabulary differs from the dataset's (%d vs %d tokens): references are "
                       "scored as they are, but the model may not be able to write some of their characters",
                       len(model_vocab), len(data_vocab))


def load_decoder(model_dir: str | Path, lm: str | Path | None = None, workers: int = 0, use_lm: bool = True):
    """The model's `CTCDecoder` (its vocabulary, decoder.json and LM; greedy only without `use_lm`), with the
    LM loaded now, so an LM file KenLM cannot read is one LrlError naming it, not a failure mid-decoding."""
    from lrl.data.vocab import Vocab
    from lrl.decode.decoder import CTCDecoder
    from lrl.decode.lm import find_lm

    if not use_lm:
        return CTCDecoder.from_vocab(Vocab.load(model_dir))
    decoder = CTCDecoder.load(model_dir, lm=lm, workers=workers)
    if decoder.has_lm:
        try:
            decoder.key  # noqa: B018 - builds the search (loads the LM)
        except (OSError, RuntimeError, UnicodeDecodeError) as e:
            model = find_lm(decoder.lm_path).model
            raise LrlError(f"{model}: KenLM cannot read this LM ({' '.join(str(e).split())[:200]}); expected a KenLM "
                           "binary or ARPA file: rebuild it with `lrl lm build`") from e
    return decoder


def warn_if_flat(logps: list[np.ndarray], threshold: float = 0.5) -> None:
    """Beam search slows down by orders of magnitude on near-uniform outputs (every token is expanded)."""
    frames = [np.exp(lp.max(axis=1)) for lp in logps if len(lp)]
    if frames and float(np.mean(np.concatenate(frames))) < threshold:
        logger.warning(
            "the model's outputs are flat (mean top-token probability %.2f < %.2f: under-trained?); LM beam "
            "search expands most tokens at every frame and will be slow. Use --no-lm, or train longer.",
            float(np.mean(np.concatenate(frames))), threshold,
        )

