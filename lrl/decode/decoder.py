"""lrl's CTC decoder: greedy decoding, and beam search with a KenLM n-gram through flashlight-text's C++
search (`lrl.decode.flashlight`, when installed) or stock pyctcdecode (lrl owns this wrapper because
`Wav2Vec2ProcessorWithLM` goes away in transformers v6). Batch decoding reuses one forked process pool over
utterances; runs of frames where only the blank can be expanded are cut to one frame first (exact: they add
the same score to every beam). `save()` writes a directory `Wav2Vec2ProcessorWithLM` loads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from lrl.core.io import LrlError, atomic_write_text
from lrl.data.vocab import Vocab
from lrl.decode.constants import (
    DEFAULT_ALPHA,
    DEFAULT_BEAM_SIZE_TOKEN,
    DEFAULT_BEAM_WIDTH,
    DEFAULT_BETA,
    DEFAULT_MIN_TOKEN_LOGP,
    DEFAULT_PRUNE_LOGP,
    DEFAULT_UNK_SCORE_OFFSET,
    MIN_TOKEN_CLIP_P,
)

logger = logging.getLogger(__name__)

DECODER_FILE = "decoder.json"  # lrl's record of the tuned decoder beside a model
Backend = Literal["auto", "pyctcdecode", "flashlight"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@dataclass(frozen=True)
class DecoderConfig:
    """Beam-search settings. alpha/beta/unk_score_offset/score_boundary are pyctcdecode's LM attributes."""

    alpha: float = DEFAULT_ALPHA  # LM weight (pyctcdecode default; `lrl lm tune` finds yours)
    beta: float = DEFAULT_BETA  # word insertion bonus, natural-log units per word
    beam_width: int = DEFAULT_BEAM_WIDTH  # beams kept per frame
    unk_score_offset: float = DEFAULT_UNK_SCORE_OFFSET  # log-score added to words outside the LM's unigrams
    score_boundary: bool = True  # score <s> ... </s> sentence boundaries with the LM
    beam_prune_logp: float = DEFAULT_PRUNE_LOGP  # beams this far (log) below the best are dropped
    token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP  # tokens below this log-prob are not expanded (unless argmax)
    beam_size_token: int = DEFAULT_BEAM_SIZE_TOKEN  # C++ backend: the most probable tokens tried per frame
    # (0 = all); pyctcdecode's cut is token_min_logp
    workers: int = 0  # processes for batch decoding; 0 = all available cores, 1 = in this process
    compress_blanks: bool = True  # cut runs of blank-only frames to one before the beam search (exact)
    backend: Backend = "auto"  # beam search: "flashlight" (C++, pip install 'lrl[fast]'), "pyctcdecode", or
    # "auto" = flashlight for character LMs (`lrl lm build --unit char`) and, when installed, for word LMs with
    # a lexicon.txt of training words; pyctcdecode otherwise. Same scoring (alpha on the LM's natural log, beta
    # per word); flashlight's word search spells only the LM's unigrams and the lexicon's words

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.beam_prune_logp >= 0:
            raise ValueError(f"beam_prune_logp must be < 0 (a log-probability margin), got {self.beam_prune_logp}")
        if self.token_min_logp >= 0:
            raise ValueError(f"token_min_logp must be < 0 (a log-probability), got {self.token_min_logp}")
        if self.unk_score_offset > 0:
            raise ValueError(f"unk_score_offset must be <= 0, got {self.unk_score_offset}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")
        if self.beam_size_token < 0:
            raise ValueError(f"beam_size_token must be >= 0 (0 = all tokens), got {self.beam_size_token}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")

    @classmethod
    def from_dict(cls, data: dict) -> DecoderConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Word:
    word: str
    start: int  # first frame (inclusive)
    end: int  # last frame + 1


@dataclass(frozen=True)
class Hypothesis:
    text: str
    words: tuple[Word, ...] = ()
    logit_score: float = 0.0  # acoustic log-score (without the constant of cut blank frames)
    lm_score: float = 0.0  # combined score the beam was ranked by


# -- log-probs ------------------------------------------------------------------------------------
def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax, clipped at log(1e-15) like pyctcdecode; float32."""
    x = np.asarray(x, dtype=np.float32)
    m = np.max(x, axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0
    z = x - m
    with np.errstate(divide="ignore"):
        out = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return np.clip(out, np.log(MIN_TOKEN_CLIP_P), 0).astype(np.float32)


def compress_blank_frames(
    logp: np.ndarray, blank_id: int = 0, token_min_logp: float = DEFAULT_MIN_TOKEN_LOGP
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first frame of each run of frames where the blank is the argmax and no other token reaches
    `token_min_logp` (pyctcdecode expands only the blank there, adding the same score to every beam, so the
    ranking of beams is unchanged). Returns (kept log-probs, original index of each kept frame)."""
    if len(logp) == 0:
        return logp, np.zeros(0, dtype=np.int64)
    others = np.delete(logp, blank_id, axis=1)
    blank_only = (np.argmax(logp, axis=1) == blank_id) & (others.max(axis=1) < token_min_logp)
    prev = np.concatenate([[False], blank_only[:-1]])
    keep = ~(blank_only & prev)
    idx = np.flatnonzero(keep)
    return logp[idx], idx


def path_words(path: Sequence[int], labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Words of a frame-level CTC path (one token id per frame) with (first frame, last frame + 1): repeats
    collapsed, blanks ("") dropped, " " between words. Greedy decoding and the C++ backend read paths so."""
    words: list[tuple[str, int, int]] = []
    cur, start, end, prev = "", -1, -1, -1
    for t, i in enumerate(path):
        ch = labels[i] if 0 <= i < len(labels) else ""
        if i != prev:
            if ch == " ":
                if cur:
                    words.append((cur, start, end))
                cur = ""
            elif ch:
                if not cur:
                    start = t
                cur += ch
                end = t + 1
        elif ch and ch != " ":
            end = t + 1
        prev = i
    if cur:
        words.append((cur, start, end))
    return words


def greedy_decode(logp: np.ndarray, labels: Sequence[str]) -> Hypothesis:
    """Best path: argmax per frame, repeats collapsed, blanks dropped; word frames from the CTC path."""
    ids = np.argmax(logp, axis=1) if len(logp) else np.zeros(0, dtype=np.int64)
    words = tuple(Word(*w) for w in path_words(ids.tolist(), labels))
    score = float(logp[np.arange(len(ids)), ids].sum()) if len(ids) else 0.0
    return Hypothesis(" ".join(w.word for w in words), words, score, score)


# -- the pool worker (module level: pickled by name) ----------------------------------------------------
# Decoders registered before the pool forks; the KenLM model lives in pyctcdecode's class-level container,
# which the forked workers inherit, so no worker loads the LM again.
_REGISTRY: dict[str, object] = {}


def _to_pyctc_logp(logits: np.ndarray) -> np.ndarray:
    """The conversion pyctcdecode's decode_beams applies (probabilities -> clipped log; logits -> clipped
    log-softmax), done once here so blank runs can be cut and every backend sees the same log-probs."""
    import math

    if len(logits) == 0:
        return logits.astype(np.float32)
    if math.isclose(logits.sum(axis=1).mean(), 1):
        return np.log(np.clip(logits, MIN_TOKEN_CLIP_P, 1))
    return log_softmax(logits)


def _beam_search(key: str, params: tuple, logp: np.ndarray, index: np.ndarray | None) -> tuple:
    """Best beam over converted log-probs `logp` (see `_to_pyctc_logp`) with the registered search `key`:
    (text, ((word, start, end), ...), acoustic score, combined score)."""
    decoder = _REGISTRY[key]
    if not hasattr(decoder, "decode_beams"):  # the C++ search (lrl.decode.flashlight)
        return decoder.search(params, logp, index)
    alpha, beta, unk, boundary, beam_width, prune_logp, min_logp, _beam_size_token = params
    decoder.reset_params(alpha=float(alpha), beta=float(beta), unk_score_offset=float(unk), lm_score_boundary=bool(boundary))
    beams = decoder.decode_beams(logp, beam_width=int(beam_width), beam_prune_logp=float(prune_logp),
                                 token_min_logp=float(min_logp), prune_history=True)  # as decode(): best beam only
    text, _, word_frames, logit_score, lm_score = beams[0]
    words = []
    for word, (s, e) in word_frames:
        if index is not None and len(index):
            s, e = int(index[s]), int(index[max(e - 1, s)]) + 1
        words.append((word, int(s), int(e)))
    return text, tuple(words), float(logit_score), float(lm_score)


def _pool_task(args: tuple) -> tuple:
    pos, key, params, logp, index = args
    return pos, _beam_search(key, params, logp, index)


# -- the decoder --------------------------------------------------------------------------------
class CTCDecoder:
    """Greedy and KenLM beam-search decoding over a fixed label list (token-id order).

    `lm` is a directory from `lrl lm build` (or any pyctcdecode `language_model/`), or None for beam
    search without an LM. Use as a context manager (or call `close()`) to end the process pool."""

    def __init__(self, labels: Sequence[str], lm: str | Path | None = None, config: DecoderConfig | None = None):
        self.labels = list(labels)
        self.config = config or DecoderConfig()
        self.lm_path = Path(lm) if lm is not None else None
        self.blank_id = self.labels.index("") if "" in self.labels else len(self.labels) - 1
        self._decoder = None
        self._key: str | None = None
        self._pool = None

    @classmethod
    def from_vocab(cls, vocab: Vocab, lm: str | Path | None = None, config: DecoderConfig | None = None) -> CTCDecoder:
        from lrl.decode.lm import labels_for_vocab

        dec = cls(labels_for_vocab(vocab), lm, config)
        dec._vocab = vocab
        return dec

    @classmethod
    def load(cls, model_dir: str | Path, lm: str | Path | None = None, **overrides) -> CTCDecoder:
        """The decoder of a model directory: its vocabulary, `decoder.json` settings and LM (`lm` overrides
        the LM: MODEL/language_model/, else the path recorded in decoder.json, else none)."""
        from lrl.decode.lm import LM_DIR, find_lm

        model_dir = Path(model_dir)
        vocab = Vocab.load(model_dir)
        saved = read_decoder_json(model_dir)
        if lm is None:
            if (model_dir / LM_DIR).is_dir():
                lm = model_dir / LM_DIR
            elif saved.get("lm") and Path(saved["lm"]).exists():
                lm = saved["lm"]
        if lm is not None and _tuned_for_another_lm(saved, lm):
            logger.warning(
                "%s holds alpha/beta tuned on another LM (%s), not on %s: decoding with that LM's own settings "
                "(attrs.json, else the defaults). Run `lrl lm tune %s DATA --lm %s` to tune them for it.",
                model_dir / DECODER_FILE, saved.get("lm_source") or saved.get("lm"), lm, model_dir, lm)
            saved = {k: v for k, v in saved.items() if k not in TUNED_KEYS}
        attrs = {}
        if lm is not None:  # pyctcdecode's attrs.json, unless decoder.json says otherwise
            a = find_lm(lm).attrs
            attrs = {k: a[k] for k in ("alpha", "beta", "unk_score_offset", "score_boundary") if k in a}
        cfg = DecoderConfig.from_dict({**attrs, **saved, **overrides})
        return cls.from_vocab(vocab, lm, cfg)

    # -- set-up ---------------------------------------------------------------------------------------
    @property
    def has_lm(self) -> bool:
        return self.lm_path is not None

    @property
    def backend(self) -> str:
        """The beam search in use: "flashlight" (C++) or "pyctcdecode" (config.backend with "auto" resolved:
        flashlight for a character LM; for a word LM with training words (lexicon.txt) when flashlight-text is
        installed; pyctcdecode otherwise. Over the LM's unigrams alone flashlight's closed-vocabulary word search
        lost 14 WER points to pyctcdecode in bench/decode.py; with the training words it wins, see there)."""
        b = self.config.backend
        if b == "auto":
            if self.lm_path is None:
                return "pyctcdecode"
            from lrl.decode.flashlight import flashlight_available
            from lrl.decode.lm import find_lm, lm_unit, read_unigrams

            files = find_lm(self.lm_path)
            if lm_unit(read_unigrams(files)) == "char":
                return "flashlight"
            return "flashlight" if files.lexicon is not None and flashlight_available() else "pyctcdecode"
        return b

    def _build(self):
        if self._decoder is not None:
            return self._decoder
        c = self.config
        model_path, unigrams, unit, lexicon = None, None, "word", []
        if self.lm_path is not None:
            from lrl.decode.lm import find_lm, lm_unit, read_lexicon, read_unigrams

            files = find_lm(self.lm_path)
            model_path, unigrams = str(files.model), read_unigrams(files)
            unit = lm_unit(unigrams)
            lexicon = read_lexicon(files) if unit == "word" else []
            self._check_alphabet([] if unit == "char" else unigrams or [], files.lm_dir)
        backend = self.backend
        if backend == "flashlight":
            from lrl.decode.flashlight import FlashlightSearch

            words = [*(unigrams or ()), *lexicon] if model_path else None  # the LM's words first, then training words
            self._decoder = FlashlightSearch(self.labels, self.blank_id, model_path, words, unit)
        else:
            if unit == "char":
                raise ValueError(
                    f"{self.lm_path} is a character LM, which pyctcdecode cannot decode (it scores words): use "
                    "backend='flashlight' (pip install 'lrl[fast]') or a word LM")
            try:
                from pyctcdecode import build_ctcdecoder
            except ImportError as e:
                raise ImportError(
                    f"beam-search decoding needs pyctcdecode and kenlm: pip install pyctcdecode kenlm ({e})") from e
            self._decoder = build_ctcdecoder(
                self.labels, kenlm_model_path=model_path, unigrams=unigrams, alpha=float(c.alpha), beta=float(c.beta),
                unk_score_offset=float(c.unk_score_offset), lm_score_boundary=bool(c.score_boundary),
            )
        logger.debug("beam search: %s (%s LM)", backend, unit if model_path else "no")
        self._key = os.urandom(8).hex()
        _REGISTRY[self._key] = self._decoder
        return self._decoder

    def _check_alphabet(self, unigrams: Sequence[str], lm_dir: Path) -> None:
        """Warn when the LM was built for another alphabet or normaliser (transformers #17180, #18231)."""
        label_chars = set("".join(self.labels))
        lm_chars = set("".join(unigrams))
        missing = sorted(lm_chars - label_chars)
        if missing:
            share = sum(1 for w in unigrams if set(w) - label_chars) / max(len(unigrams), 1)
            logger.warning(
                "the LM's words use %d characters the model cannot emit (%s); %.1f%% of its unigrams are "
                "unreachable. Rebuild it with `lrl lm build --vocab` pointing at the model's vocabulary.",
                len(missing), " ".join(missing[:20]), 100 * share,
            )
        vocab = getattr(self, "_vocab", None)
        for d in (lm_dir, lm_dir.parent):
            if vocab is not None and (d / "normalizer.json").is_file():
                from lrl.core.text import NormalizerConfig

                if NormalizerConfig.load(d) != vocab.normalizer:
                    logger.warning(
                        "%s was written with another normaliser than the model's: LM text and model text may "
                        "differ (case, apostrophes, Unicode form). Rebuild the LM with the model's vocabulary.", d,
                    )
                break

    def _params(self, config: DecoderConfig) -> tuple:
        c = config
        return (c.alpha, c.beta, c.unk_score_offset, c.score_boundary, c.beam_width, c.beam_prune_logp, c.token_min_logp,
                c.beam_size_token)

    def _prepare(self, logp: np.ndarray, config: DecoderConfig) -> tuple[np.ndarray, np.ndarray | None]:
        logp = np.asarray(logp)
        if logp.ndim != 2 or logp.shape[1] != len(self.labels):
            raise ValueError(
                f"log-probs must have shape (frames, {len(self.labels)}) for this vocabulary, got {logp.shape}"
            )
        logp = _to_pyctc_logp(logp)
        if config.compress_blanks:
            return compress_blank_frames(logp, self.blank_id, config.token_min_logp)
        return logp, None

    def _pool_or_none(self, n: int, config: DecoderConfig):
        workers = config.workers or available_cores()
        if workers <= 1 or n < 2:
            return None
        if self._pool is None:
            import multiprocessing as mp

            self._build()  # before the fork: workers inherit the loaded LM
            self._pool = mp.get_context("fork").Pool(workers)
            self._pool_workers = workers
            logger.debug("started a decoding pool of %d processes", workers)
        return self._pool

    # -- decoding -------------------------------------------------------------------------------------
    def greedy(self, logp: np.ndarray) -> Hypothesis:
        return greedy_decode(np.asarray(logp), self.labels)

    def decode(self, logp: np.ndarray, config: DecoderConfig | None = None) -> Hypothesis:
        """Beam search (with the LM if there is one) over one utterance's (frames, vocab) logits/log-probs."""
        config = config or self.config
        self._build()
        lp, index = self._prepare(logp, config)
        if len(lp) == 0:
            return Hypothesis("")
        return _to_hyp(_beam_search(self._key, self._params(config), lp, index))

    def decode_batch(self, logps: Sequence[np.ndarray], config: DecoderConfig | None = None) -> list[Hypothesis]:
        """Decode many utterances over the decoder's one process pool (started on first use, reused after);
        longest first for load balance, results in input order."""
        config = config or self.config
        self._build()
        prepared = [self._prepare(lp, config) for lp in logps]
        out: list[Hypothesis | None] = [Hypothesis("") if len(p[0]) == 0 else None for p in prepared]
        todo = sorted((i for i, p in enumerate(prepared) if len(p[0])), key=lambda i: -len(prepared[i][0]))
        params = self._params(config)
        pool = self._pool_or_none(len(todo), config)
        if pool is None:
            for i in todo:
                out[i] = _to_hyp(_beam_search(self._key, params, *prepared[i]))
        else:
            tasks = ((i, self._key, params, prepared[i][0], prepared[i][1]) for i in todo)
            for i, res in pool.imap_unordered(_pool_task, tasks, chunksize=1):
                out[i] = _to_hyp(res)
        return out  # type: ignore[return-value]

    def map_pool(self, fn, items: Sequence, workers: int = 0) -> list:
        """Run a module-level `fn(item)` over the decoder's pool (used by tuning: each worker decodes with the
        inherited LM). Falls back to a loop with one worker."""
        pool = self._pool_or_none(len(items), replace(self.config, workers=workers or self.config.workers))
        if pool is None:
            return [fn(it) for it in items]
        return pool.map(fn, items, chunksize=1)

    @property
    def key(self) -> str:
        self._build()
        return self._key  # type: ignore[return-value]

    def with_config(self, **changes) -> DecoderConfig:
        return replace(self.config, **changes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> CTCDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._pool is not None:
                self._pool.terminate()
            if self._key is not None:
                _REGISTRY.pop(self._key, None)
                if hasattr(self._decoder, "cleanup"):  # pyctcdecode's LM container entry
                    self._decoder.cleanup()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

    # -- saving -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path, vocab: Vocab | None = None) -> Path:
        """Write alphabet.json + language_model/ (attrs.json with this config's alpha/beta) into `directory`,
        the layout `BeamSearchDecoderCTC.load_from_dir` and `Wav2Vec2ProcessorWithLM.from_pretrained` read."""
        from lrl.decode.lm import install_lm, write_alphabet

        vocab = vocab or getattr(self, "_vocab", None)
        if vocab is None:
            raise ValueError("save() needs the Vocab the labels came from (build the decoder with from_vocab)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.lm_path is None:
            write_alphabet(directory, vocab)
        else:
            install_lm(self.lm_path, directory, vocab, self.config.alpha, self.config.beta, self.config.unk_score_offset)
            self.lm_path = directory
        return directory


def _to_hyp(res: tuple) -> Hypothesis:
    text, words, logit_score, lm_score = res
    return Hypothesis(text, tuple(Word(*w) for w in words), logit_score, lm_score)


# -- decoder.json -------------------------------------------------------------------------------------
TUNED_KEYS = ("alpha", "beta", "beam_width", "unk_score_offset", "score_boundary")  # what `lrl lm tune` fits to an LM


def lm_identity(lm: str | Path) -> str:
    """sha256 of an LM's content: its KenLM file and its sorted unigram set. A copy installed into a model
    directory (`install_lm`: the same file, unigrams rewritten sorted) has the identity of its source."""
    import hashlib

    from lrl.decode.lm import find_lm, read_unigrams

    files = find_lm(lm)
    h = hashlib.sha256()
    with open(files.model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(b"\0unigrams\0" + "\n".join(sorted(set(read_unigrams(files) or []))).encode("utf-8"))
    if files.lexicon is not None:  # the words the C++ search spells change what alpha/beta fit
        h.update(files.lexicon.read_bytes())
    return h.hexdigest()


def _tuned_for_another_lm(saved: dict, lm: str | Path) -> bool:
    """Whether decoder.json's tuned values belong to an LM other than `lm`: by `lm_identity` when recorded,
    else (a decoder.json from before it was recorded) by the LM's path."""
    if not any(k in saved for k in TUNED_KEYS) or not (saved.get("lm") or saved.get("lm_identity")):
        return False
    if saved.get("lm_identity"):
        return lm_identity(lm) != saved["lm_identity"]
    known = {Path(p).resolve() for p in (saved.get("lm"), saved.get("lm_source")) if p}
    return Path(lm).resolve() not in known


def read_decoder_json(model_dir: str | Path) -> dict:
    path = Path(model_dir) / DECODER_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LrlError(f"{path} is not valid JSON ({e}): delete it or rerun `lrl lm tune`") from e


def write_decoder_json(model_dir: str | Path, config: DecoderConfig, **extra) -> Path:
    """Record the decoder settings (and e.g. lm path, dev WER before/after) in MODEL/decoder.json."""
    keep = ("alpha", "beta", "beam_width", "unk_score_offset", "score_boundary", "beam_prune_logp", "token_min_logp",
            "beam_size_token")
    data = {k: v for k, v in asdict(config).items() if k in keep}
    data.update(extra)
    path = Path(model_dir) / DECODER_FILE
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
