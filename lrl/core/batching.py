"""Grouping clips into batches by seconds of padded audio (sort by length, add clips while clips x
longest stays under the cap): the one packing rule training, the feature cache and inference share."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def pack_batches(durations: Sequence[float], max_seconds: float, max_batch_size: int = 0, seed: int = 0) -> list[list[int]]:
    """Indices grouped into batches whose padded cost (clips x longest clip) stays <= `max_seconds`.
    Clips are sorted by duration (ties broken randomly by `seed`), so neighbours have similar lengths.
    A clip longer than the cap gets a batch of its own (counted in a warning)."""
    d = np.asarray(durations, dtype=np.float64)
    if d.size == 0:
        return []
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(d.size), d))  # by duration, random among equals
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    too_long = 0
    for i in order.tolist():
        li = float(d[i])
        new_longest = max(longest, li)
        full = max_batch_size and len(cur) >= max_batch_size
        if cur and (new_longest * (len(cur) + 1) > max_seconds or full):
            batches.append(cur)
            cur, new_longest = [], li
        if not cur and li > max_seconds:
            too_long += 1
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    if too_long:
        logger.warning(
            "%d clip(s) are longer than max_seconds=%.1f and form batches of one; raise the cap or filter them",
            too_long, max_seconds,
        )
    return batches


def padding_efficiency(durations: Sequence[float], batches: Sequence[Sequence[int]]) -> float:
    """Share of the padded batch tensors that is real audio (1.0 = no padding)."""
    d = np.asarray(durations, dtype=np.float64)
    real = sum(float(d[b].sum()) for b in batches)
    padded = sum(float(d[b].max()) * len(b) for b in batches)
    return real / padded if padded else 1.0
