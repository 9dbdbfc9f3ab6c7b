"""How sure a CTC model is of one transcript: the candidate per-utterance confidences (`confidences`: mean
max frame posterior over all frames or over the non-blank frames of the greedy path, the length-normalised
beam score, agreement between greedy and LM output), keeping the confident ones (`select`: a threshold
and/or a top share, each drop with its reason), and `spearman`, how well a confidence ranks utterances by
their true CER (what `bench/selftrain.py` measured to pick the default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

Confidence = Literal["token_posterior", "posterior", "beam", "agreement"]
CONFIDENCES: tuple[Confidence, ...] = get_args(Confidence)
# The default, by measurement (bench/selftrain.py, yo-cv: xl-tiny fine-tuned on 25% of train, its transcripts of
# the other 394 train clips; Spearman correlation with each utterance's true CER, more negative = better):
#   greedy, 200 updates:               token_posterior -0.39, posterior +0.10 (blank frames swamp it), beam +0.08
#   word 3-gram, 500 updates:          token_posterior -0.34, agreement -0.32, posterior +0.11, beam +0.10
#   word 3-gram / char 6-gram, 1500:   token_posterior -0.36 / -0.42, agreement -0.50 / -0.58
#   char 6-gram again (oracle run):    token_posterior -0.42, agreement -0.51, posterior +0.09, beam +0.05
# Which one ranks best depends on the model and its LM: `lrl pseudo-label --confidence auto --rank-on DATA`
# measures it on the user's labelled data (lrl.evaluate.pseudo.rank_confidences) and keeps by the best.
# token_posterior works with or without an LM; with an LM and a stronger model `agreement` (greedy vs LM output)
# ranked better, but it is coarse (every utterance whose two outputs agree ties at 1.0). bench/RESULTS.md `selftrain`.
DEFAULT_CONFIDENCE: Confidence = "token_posterior"


def char_error_rate(ref: str, hyp: str) -> float:
    """Levenshtein distance over characters / len(ref) (1.0 when ref is empty and hyp is not)."""
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


def confidences(logp: np.ndarray, greedy_text: str, lm_text: str | None = None, lm_score: float | None = None,
                blank_id: int = 0) -> dict[str, float]:
    """Every candidate confidence of one utterance (higher = surer), from its log-probs (frames, vocab):
    posterior = mean over frames of the top posterior; token_posterior = the same over the frames whose top
    token is not the blank (the characters the greedy path writes; all frames when there are none); beam =
    the beam's combined score / frames (the greedy path's log-score without an LM); agreement =
    1 - CER(LM output, greedy output), clipped at 0 (1.0 without an LM)."""
    if len(logp) == 0:
        return {c: -math.inf if c == "beam" else 0.0 for c in CONFIDENCES}
    top = logp.max(axis=1)
    arg = logp.argmax(axis=1)
    post = np.exp(top)
    tok = post[arg != blank_id]
    score = float(top.sum()) if lm_score is None else float(lm_score)
    agreement = 1.0 if lm_text is None else max(0.0, 1.0 - char_error_rate(lm_text, greedy_text))
    return {"token_posterior": float(tok.mean() if len(tok) else post.mean()), "posterior": float(post.mean()),
            "beam": score / len(logp), "agreement": agreement}


@dataclass(frozen=True)
class Selection:
    """Which utterances are kept, and for each dropped one why (low_confidence: under `min_confidence`;
    not_in_top_share: over it but outside the `keep_share` most confident; empty_transcript)."""

    kept: list[bool]
    reasons: list[str]  # "" for kept ones


def select(scores: list[float], texts: list[str], keep_share: float = 1.0, min_confidence: float = -math.inf) -> Selection:
    """Keep the utterances with a non-empty transcript and a confidence >= `min_confidence`, then of those the
    `keep_share` most confident (of all scored utterances, rounded up; ties broken by input order)."""
    if not 0 < keep_share <= 1:
        raise ValueError(f"keep_share must be in (0, 1], got {keep_share}")
    reasons = ["" for _ in scores]
    for i, (s, t) in enumerate(zip(scores, texts, strict=True)):
        if not t.strip():
            reasons[i] = "empty_transcript"
        elif not s >= min_confidence:
            reasons[i] = "low_confidence"
    n_top = math.ceil(keep_share * len(scores))
    order = sorted((i for i, r in enumerate(reasons) if not r), key=lambda i: (-scores[i], i))
    for i in order[n_top:]:
        reasons[i] = "not_in_top_share"
    return Selection([not r for r in reasons], reasons)


def best_confidence(spearman_by: dict[str, float]) -> Confidence | None:
    """The confidence that ranks utterances best by true CER: the most negative Spearman correlation, of
    those below 0 (a confidence that does not fall as CER rises ranks nothing). None when none qualifies."""
    ok = {c: v for c, v in spearman_by.items() if c in CONFIDENCES and math.isfinite(v) and v < 0}
    return min(ok, key=lambda c: (ok[c], CONFIDENCES.index(c))) if ok else None


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    if len(x) < 3:
        return math.nan

    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # ties share their mean rank
            m = v == val
            r[m] = r[m].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
