"""Dev/test scores inside training: greedy CTC decoding of the argmax ids, WER and CER with jiwer on the
normalised text ([UNK] counted as one character), the share of empty predictions, and the warning for a
model that outputs only blanks.
"""

from __future__ import annotations

import logging

import numpy as np

from lrl.train.config import TrainConfig

logger = logging.getLogger(__name__)

BLANK_WER = 0.999  # a dev WER at or above this with (almost) empty predictions = the all-blank plateau
# [UNK] as one character when scoring, as `lrl evaluate` writes it (U+2047) in hypotheses; in references it
# stands for a character the vocabulary lacks (U+FFFD), so it never matches and counts as one error.
HYP_UNK, REF_UNK = "\u2047", "\ufffd"


def make_compute_metrics(tokenizer):
    """compute_metrics for the Trainer: greedy CTC decoding (argmax ids come from
    `preprocess_logits_for_metrics`), WER and CER with jiwer on the normalised text."""
    import jiwer

    pad = tokenizer.pad_token_id

    def compute_metrics(pred) -> dict:
        ids = np.asarray(pred.predictions)
        ids = np.where(ids < 0, pad, ids)
        labels = np.asarray(pred.label_ids)
        labels = np.where(labels < 0, pad, labels)
        unk = tokenizer.unk_token
        hyps = [h.replace(unk, HYP_UNK) for h in tokenizer.batch_decode(ids)]
        refs = [r.replace(unk, REF_UNK) for r in tokenizer.batch_decode(labels, group_tokens=False)]
        pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
        if not pairs:
            return {"wer": 1.0, "cer": 1.0, "blank_rate": 1.0}
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        blank = sum(not h.strip() for h in hyps) / len(hyps)
        return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "blank_rate": blank}

    return compute_metrics


def argmax_logits(logits, labels):
    """preprocess_logits_for_metrics: keep only the argmax ids (the metrics decode greedily; saves memory)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def warn_if_collapsed(metrics: dict, step: int, cfg: TrainConfig) -> bool:
    """Warn (and return True) when predictions collapsed to all-blank: WER ~1.0 and mostly empty output."""
    wer = metrics.get("eval_wer", metrics.get("wer"))
    blank = metrics.get("eval_blank_rate", metrics.get("blank_rate", 0.0))
    if wer is None or wer < BLANK_WER or blank < 0.9:
        return False
    logger.warning(
        "step %d: dev WER %.3f with %.0f%% empty predictions: the model outputs only blanks. Usual causes: "
        "the LR is too low or too high (lr=%s; try 3e-5..3e-4 for pretrained checkpoints, ~1e-3 for tiny ones), "
        "warmup not finished (warmup_steps=%s) or too short, too few updates so far, or a vocabulary/case "
        "mismatch between the transcripts and the tokenizer (check `lrl vocab audit`).",
        step, wer, 100 * blank, cfg.optim.lr, cfg.optim.warmup_steps,
    )
    return True
