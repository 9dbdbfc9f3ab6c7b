"""lrl's CTC decoder: greedy decoding, and beam search with a KenLM n-gram through pyctcdecode (lrl owns
this wrapper because `Wav2Vec2ProcessorWithLM` goes away in transformers v6). Batch decoding reuses one
forked process pool; runs of frames where only the blank can be expanded are cut to one frame first (exact:
they add the same score to every beam). `save()` writes a directory `Wav2Vec2ProcessorWithLM` loads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from lrl.core.io import LrlError, atomic_write_text
from lrl.data.vocab import Vocab
from lrl.decode.constants import (
    DEFAULT_ALPHA,
    DEFAULT_BEAM_WIDTH,
    DEFAULT_BETA,
    DEFAULT_MIN_TOKEN_LOGP,
    DEFAULT_PRUNE_LOGP,
    DEFAULT_UNK_SCORE_OFFSET,
    MIN_TOKEN_CLIP_P,
)

logger = logging.getLogger(__name__)

DECODER_FILE = "decoder.json"  # lrl's record of the tuned decoder beside a model


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
    workers: int = 0  # processes for batch decoding; 0 = all available cores, 1 = in this process
    compress_blanks: bool = True  # cut runs of blank-only frames to one before the beam search (exact)

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


def greedy_decode(logp: np.ndarray, labels: Sequence[str]) -> Hypothesis:
    """Best path: argmax per frame, repeats collapsed, blanks dropped; word frames from the CTC path."""
    ids = np.argmax(logp, axis=1) if len(logp) else np.zeros(0, dtype=np.int64)
    words: list[Word] = []
    cur, start, end, prev = "", -1, -1, -1
    for t, i in enumerate(ids.tolist()):
        if i != prev:
            ch = labels[i]
            if ch == " ":
                if cur:
                    words.append(Word(cur, start, end))
                cur = ""
            elif ch:
                if not cur:
                    start = t
                cur += ch
                end = t + 1
        elif labels[i] and labels[i] != " ":
            end = t + 1
        prev = i
    if cur:
        words.append(Word(cur, start, end))
    score = float(logp[np.arange(len(ids)), ids].sum()) if len(ids) else 0.0
    return Hypothesis(" ".join(w.word for w in words), tuple(words), score, score)


# -- the pool worker (module level: pickled by name) ----------------------------------------------------
# Decoders registered before the pool forks; the KenLM model lives in pyctcdecode's class-level container,
# which the forked workers inherit, so no worker loads the LM again.
_REGISTRY: dict[str, object] = {}


class _NoHotwords:
    """pyctcdecode's HotwordScorer for an empty hotword list, without its empty-trie lookups (same scores: 0)."""

    def __contains__(self, item: str) -> bool:
        return False

    def score(self, text: str) -> float:
        return 0.0

    def score_partial_token(self, token: str) -> float:
        return 0.0


_NO_HOTWORDS = _NoHotwords()


class _PrefixSet:
    """Stands in for pyctcdecode's unigram CharTrie: `has_node(p)` is non-zero exactly when `p` is a prefix
    of (or equal to) a unigram, which is all pyctcdecode asks of it; a set lookup instead of a trie walk."""

    def __init__(self, words) -> None:
        self._prefixes = {w[:i] for w in words for i in range(1, len(w) + 1)}

    def has_node(self, key: str) -> int:
        return 1 if key in self._prefixes else 0


def _fast_get_lm_beams(self, beams, hotword_scorer, cached_lm_scores, cached_partial_token_scores, is_eos=False):
    """pyctcdecode 0.5.0's `BeamSearchDecoderCTC._get_lm_beams` for an LM and no hotwords, with the same
    arithmetic in the same order (identical scores) but without per-beam helper calls; installed per
    decoder instance only when pyctcdecode is 0.5.0 and lrl enters the search with `_NoHotwords`."""
    if hotword_scorer is not _NO_HOTWORDS:
        return type(self)._get_lm_beams(self, beams, hotword_scorer, cached_lm_scores, cached_partial_token_scores, is_eos)
    language_model = self._language_model
    if language_model is None:
        return type(self)._get_lm_beams(self, beams, hotword_scorer, cached_lm_scores, cached_partial_token_scores, is_eos)
    lm_score_fn = language_model.score
    partial_fn = language_model.score_partial_token
    new_beams = []
    append = new_beams.append
    for text, next_word, word_part, last_char, frame_list, frames, logit_score in beams:
        new_text = text if not next_word else (next_word if not text else text + " " + next_word)
        cache_key = (new_text, is_eos)
        cached = cached_lm_scores.get(cache_key)
        if cached is None:
            _, prev_raw_lm_score, start_state = cached_lm_scores[(text, False)]
            score, end_state = lm_score_fn(start_state, next_word, is_last_word=is_eos)
            raw_lm_score = prev_raw_lm_score + score
            cached = (raw_lm_score + 0.0, raw_lm_score, end_state)  # + the (zero) hotword score, as pyctcdecode
            cached_lm_scores[cache_key] = cached
        lm_score = cached[0]
        if word_part:
            partial = cached_partial_token_scores.get(word_part)
            if partial is None:
                partial = cached_partial_token_scores[word_part] = partial_fn(word_part)
            lm_score += partial
        append((new_text, "", word_part, last_char, frame_list, frames, logit_score, logit_score + lm_score))
    return new_beams


def _fast_decode_logits(self, logits, beam_width, beam_prune_logp, token_min_logp, prune_history, hotword_scorer,
                        lm_start_state=None):
    """pyctcdecode 0.5.0's `BeamSearchDecoderCTC._decode_logits` for a character (non-BPE) alphabet and no
    hotwords, with beam extension and `_merge_beams` fused into one pass over the same candidates in the
    same order (as there: the last-seen beam's fields at the first-seen position, scores summed with
    pyctcdecode's own `_sum_log_scores`), Python
    floats instead of numpy scalars (the same float64 values). Anything else goes to the original."""
    if self._is_bpe or hotword_scorer is not _NO_HOTWORDS or lm_start_state is not None:
        return type(self)._decode_logits(self, logits, beam_width, beam_prune_logp, token_min_logp, prune_history,
                                         hotword_scorer, lm_start_state)
    from pyctcdecode.decoder import (
        NULL_FRAMES,
        _merge_beams,
        _normalize_whitespace,
        _prune_history,
        _sort_and_trim_beams,
        _sum_log_scores,
    )

    language_model = self._language_model
    start_state = None if language_model is None else language_model.get_start_state()
    cached_lm_scores = {("", False): (0.0, 0.0, start_state)}
    cached_p_lm_scores: dict = {}
    idx2vocab = self._idx2vocab
    lm_order = 1 if language_model is None else language_model.order
    beams = [("", "", "", None, [], NULL_FRAMES, 0.0)]
    for frame_idx, logit_col in enumerate(logits):
        max_idx = logit_col.argmax()
        idx_list = set(np.where(logit_col >= token_min_logp)[0]) | {max_idx}
        col = logit_col.tolist()
        end = frame_idx + 1
        merged: dict = {}
        for idx_char in idx_list:
            p_char = col[idx_char]
            char = idx2vocab[idx_char]
            blank, space = char == "", char == " "
            for text, next_word, word_part, last_char, text_frames, part_frames, logit_score in beams:
                if blank or last_char == char:
                    nb = (text, next_word, word_part, char, text_frames,
                          part_frames if blank else (part_frames[0], end), logit_score + p_char)
                elif space:
                    nb = (text, word_part, "", char, text_frames if word_part == "" else text_frames + [part_frames],
                          NULL_FRAMES, logit_score + p_char)
                    next_word = word_part
                    word_part = ""
                else:
                    word_part = word_part + char
                    nb = (text, next_word, word_part, char, text_frames,
                          (frame_idx, end) if part_frames[0] < 0 else (part_frames[0], end), logit_score + p_char)
                key = (text if not next_word else (next_word if not text else text + " " + next_word), word_part, char)
                prev = merged.get(key)
                merged[key] = nb if prev is None else nb[:6] + (_sum_log_scores(prev[6], nb[6]),)
        scored_beams = self._get_lm_beams(list(merged.values()), hotword_scorer, cached_lm_scores, cached_p_lm_scores)
        max_score = max([b[-1] for b in scored_beams])
        scored_beams = [b for b in scored_beams if b[-1] >= max_score + beam_prune_logp]
        trimmed_beams = _sort_and_trim_beams(scored_beams, beam_width)
        beams = _prune_history(trimmed_beams, lm_order=lm_order) if prune_history else [b[:-1] for b in trimmed_beams]

    # final LM scoring and sorting: pyctcdecode's own code
    new_beams = []
    for text, _, word_part, _, frame_list, frames, logit_score in beams:
        new_token_times = frame_list if word_part == "" else frame_list + [frames]
        new_beams.append((text, word_part, "", None, new_token_times, (-1, -1), logit_score))
    new_beams = _merge_beams(new_beams)
    scored_beams = self._get_lm_beams(new_beams, hotword_scorer, cached_lm_scores, cached_p_lm_scores, is_eos=True)
    max_score = max([b[-1] for b in scored_beams])
    scored_beams = [b for b in scored_beams if b[-1] >= max_score + beam_prune_logp]
    trimmed_beams = _sort_and_trim_beams(scored_beams, beam_width)
    return [
        (
            _normalize_whitespace(text),
            cached_lm_scores[(text, True)][-1] if (text, True) in cached_lm_scores else None,
            list(zip(text.split(), text_frames, strict=False)),  # as pyctcdecode
            logit_score,
            combined_score,
        )
        for text, _, _, _, text_frames, _, logit_score, combined_score in trimmed_beams
    ]


def _to_pyctc_logp(logits: np.ndarray) -> np.ndarray:
    """Exactly the conversion pyctcdecode's decode_beams applies (probabilities -> log; logits -> clipped
    log-softmax), done once here so the beam search can be entered directly."""
    import math

    from pyctcdecode.decoder import _log_softmax

    if len(logits) == 0:
        return logits.astype(np.float32)
    if math.isclose(logits.sum(axis=1).mean(), 1):
        return np.log(np.clip(logits, MIN_TOKEN_CLIP_P, 1))
    return np.clip(_log_softmax(logits, axis=1), np.log(MIN_TOKEN_CLIP_P), 0)


def _beam_search(key: str, params: tuple, logp: np.ndarray, index: np.ndarray | None) -> tuple:
    """Best beam of pyctcdecode's search over converted log-probs `logp` (see `_to_pyctc_logp`)."""
    decoder = _REGISTRY[key]
    alpha, beta, unk, boundary, beam_width, prune_logp, min_logp = params
    decoder.reset_params(alpha=float(alpha), beta=float(beta), unk_score_offset=float(unk), lm_score_boundary=bool(boundary))
    kw = dict(beam_width=int(beam_width), beam_prune_logp=float(prune_logp), token_min_logp=float(min_logp),
              prune_history=True)  # as pyctcdecode's decode(): only the best beam is used
    if hasattr(decoder, "_decode_logits"):  # pyctcdecode 0.5: skip decode_beams' second conversion
        beams = decoder._decode_logits(logp, hotword_scorer=_NO_HOTWORDS, **kw)
    else:
        beams = decoder.decode_beams(logp, **kw)
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

    def _build(self):
        if self._decoder is not None:
            return self._decoder
        try:
            from pyctcdecode import build_ctcdecoder
        except ImportError as e:
            raise ImportError(f"beam-search decoding needs pyctcdecode and kenlm: pip install pyctcdecode kenlm ({e})") from e
        c = self.config
        model_path, unigrams = None, None
        if self.lm_path is not None:
            from lrl.decode.lm import find_lm, read_unigrams

            files = find_lm(self.lm_path)
            model_path, unigrams = str(files.model), read_unigrams(files)
            self._check_alphabet(unigrams or [], files.lm_dir)
        self._decoder = build_ctcdecoder(
            self.labels, kenlm_model_path=model_path, unigrams=unigrams, alpha=float(c.alpha), beta=float(c.beta),
            unk_score_offset=float(c.unk_score_offset), lm_score_boundary=bool(c.score_boundary),
        )
        lm_obj = self._decoder._language_model
        if lm_obj is not None and getattr(lm_obj, "_char_trie", None) is not None and hasattr(lm_obj, "_unigram_set"):
            lm_obj._char_trie = _PrefixSet(lm_obj._unigram_set)
        if _pyctcdecode_version() == "0.5.0":  # the version _fast_get_lm_beams mirrors
            import types

            self._decoder._get_lm_beams = types.MethodType(_fast_get_lm_beams, self._decoder)
            self._decoder._decode_logits = types.MethodType(_fast_decode_logits, self._decoder)
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
        return (c.alpha, c.beta, c.unk_score_offset, c.score_boundary, c.beam_width, c.beam_prune_logp, c.token_min_logp)

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
                if self._decoder is not None:
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


def _pyctcdecode_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyctcdecode")
    except PackageNotFoundError:
        return ""


def _to_hyp(res: tuple) -> Hypothesis:
    text, words, logit_score, lm_score = res
    return Hypothesis(text, tuple(Word(*w) for w in words), logit_score, lm_score)


# -- decoder.json -------------------------------------------------------------------------------------
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
    keep = ("alpha", "beta", "beam_width", "unk_score_offset", "score_boundary", "beam_prune_logp", "token_min_logp")
    data = {k: v for k, v in asdict(config).items() if k in keep}
    data.update(extra)
    path = Path(model_dir) / DECODER_FILE
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path
