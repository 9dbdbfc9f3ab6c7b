"""Constructed CTC log-probs for decoder tests."""

import numpy as np


def make_logp(vocab, text, confusions=None, peak=0.95, frames_per_char=2, floor=1e-4):
    """Peaky CTC log-probs for `text`: each character `frames_per_char` frames, then a blank frame.
    `confusions[pos]` = {token: prob} replaces the distribution of character `pos`."""
    ids = vocab.token_to_id
    confusions = confusions or {}

    def row(p):
        r = np.full(len(vocab), floor)
        for k, v in p.items():
            r[k] = v
        return np.log(r / r.sum())

    rows = []
    for pos, ch in enumerate(text):
        tok = ids["|"] if ch == " " else ids[ch]
        rows += [row(confusions.get(pos, {tok: peak}))] * frames_per_char + [row({0: 0.99})]
    return np.stack(rows).astype(np.float32)
