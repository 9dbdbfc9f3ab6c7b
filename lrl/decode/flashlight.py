"""The C++ beam search: flashlight-text's CTC decoders with its bundled KenLM (the search behind torchaudio's
`ctc_decoder`). A word LM decodes through `LexiconDecoder` over a lexicon spelled from the LM's unigrams and
the training words of its lexicon.txt (those outside the LM score as KenLM's <unk>); a character LM (`lrl lm build --unit char`) through `LexiconFreeDecoder`. lrl's alpha/beta map onto its LM
weight and word score so that both backends rank beams by the same formula as pyctcdecode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lrl.decode.decoder import path_words

logger = logging.getLogger(__name__)

INSTALL_HINT = "the C++ decoder needs flashlight-text: pip install 'lrl[fast]' (or pip install flashlight-text)"
LOG10_TO_LN = math.log(10)  # KenLM scores are log10; pyctcdecode (and lrl's alpha) weigh them in natural log
CHAR_BOUNDARY = "|"  # the word boundary token of character LMs (wav2vec2's word delimiter)
END_LOGP = -1e4  # every token but the delimiter in the closing frame (finite: flashlight adds scores)


def flashlight_available() -> bool:
    try:
        import flashlight.lib.text.decoder  # noqa: F401
    except ImportError:
        return False
    return True


def _import():
    try:
        from flashlight.lib.text import decoder, dictionary
        from flashlight.lib.text.decoder.kenlm import KenLM
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return decoder, dictionary, KenLM


def _token_names(labels: Sequence[str]) -> list[str]:
    """pyctcdecode labels -> the token names a character LM is written in ('' blank, ' ' -> '|')."""
    return ["<blank>" if t == "" else CHAR_BOUNDARY if t == " " else t for t in labels]


class FlashlightSearch:
    """One loaded KenLM (+ lexicon trie for a word LM) and the search over it; `search()` takes pyctcdecode-
    converted log-probs and lrl's parameter tuple, and returns (text, word frames, acoustic score, total)."""

    def __init__(self, labels: Sequence[str], blank_id: int, model: str | Path | None,
                 unigrams: Sequence[str] | None = None, unit: str = "word"):
        fl, fld, KenLM = _import()
        self._fl = fl
        self.labels = list(labels)
        self.blank_id = blank_id
        self.unit = unit if model is not None else "none"
        if " " not in self.labels:
            raise ValueError("the C++ decoder needs a word delimiter ('|' in the vocabulary) among the labels")
        self.sil_id = self.labels.index(" ")
        tokens = fld.Dictionary(_token_names(self.labels))
        if model is None:
            self._lm = fl.ZeroLM()
        elif unit == "char":
            self._lm = KenLM(str(model), tokens)
        else:
            words = [w for w in dict.fromkeys(unigrams or ()) if w and all(c in self.labels for c in w)]
            if not words:
                raise ValueError(f"{model}: no LM word is spelled in this vocabulary; cannot build a lexicon")
            self._words = ["<unk>", *words]
            word_dict = fld.Dictionary(self._words)
            self._lm = KenLM(str(model), word_dict)
            start = self._lm.start(False)
            index = {t: i for i, t in enumerate(self.labels)}
            self._trie = fl.Trie(len(self.labels), self.sil_id)
            for i, w in enumerate(words, start=1):
                _, score = self._lm.score(start, i)
                self._trie.insert([index[c] for c in w] + [self.sil_id], i, score)
            self._trie.smear(fl.SmearingMode.MAX)
            logger.debug("flashlight lexicon: %d words", len(words))
        self._decoders: dict[tuple, object] = {}

    def _decoder(self, params: tuple):
        alpha, beta, unk, _boundary, beam_width, prune_logp, _min_logp, beam_size_token = params
        key = (alpha, beta, unk, beam_width, prune_logp, beam_size_token)
        dec = self._decoders.get(key)
        if dec is not None:
            return dec
        fl = self._fl
        n = min(int(beam_size_token), len(self.labels)) or len(self.labels)
        weight = float(alpha) * LOG10_TO_LN
        if self.unit == "word":
            opts = fl.LexiconDecoderOptions(
                beam_size=int(beam_width), beam_size_token=n, beam_threshold=-float(prune_logp), lm_weight=weight,
                word_score=float(beta), unk_score=float(unk) * weight, sil_score=0.0, log_add=True,
                criterion_type=fl.CriterionType.CTC)
            dec = fl.LexiconDecoder(opts, self._trie, self._lm, self.sil_id, self.blank_id, 0, [], False)
        else:  # a character LM (or none): open vocabulary; beta is a bonus per word boundary
            opts = fl.LexiconFreeDecoderOptions(
                beam_size=int(beam_width), beam_size_token=n, beam_threshold=-float(prune_logp),
                lm_weight=weight if self.unit == "char" else 0.0, sil_score=float(beta), log_add=True,
                criterion_type=fl.CriterionType.CTC)
            dec = fl.LexiconFreeDecoder(opts, self._lm, self.sil_id, self.blank_id, [])
        if len(self._decoders) > 64:  # a tuning grid: keep memory bounded
            self._decoders.clear()
        self._decoders[key] = dec
        return dec

    def search(self, params: tuple, logp: np.ndarray, index: np.ndarray | None) -> tuple:
        """Best hypothesis over (frames, labels) log-probs; `index` maps kept frames to original ones."""
        em = np.asarray(logp, dtype=np.float32)
        # One closing frame where only the word delimiter is possible (log 1 = 0): the lexicon spells each
        # word with a trailing delimiter, and this lets the last word end without changing any score.
        end = np.full((1, em.shape[1]), END_LOGP, np.float32)
        end[0, self.sil_id] = 0.0
        em = np.ascontiguousarray(np.concatenate([em, end]))
        T, N = em.shape
        res = self._decoder(params).decode(em.ctypes.data, T, N)[0]
        path = list(res.tokens)[1:T]  # flashlight pads the path with one token on each side; drop the end frame
        words = path_words(path, self.labels)
        text = " ".join(w for w, _, _ in words)
        if index is not None and len(index):
            words = [(w, int(index[s]), int(index[e - 1]) + 1) for w, s, e in words]
        return text, tuple(words), float(res.emittingModelScore), float(res.score)
