"""Training on labelled data plus an extra set (`data.extra_path`, e.g. `lrl pseudo-label` output) without
the extra set crowding the labelled one out: `mix_extra` encodes the extra texts with the labelled run's
vocabulary (rows with characters outside it are dropped and counted), takes at most `data.extra_weight` x
the labelled train hours of it (most confident rows first when it has a `confidence` column, else a seeded
shuffle) and appends those rows to the train split, once, before batching. The result is one plain dataset,
so dynamic batches, resume and the conv feature cache work as on any train split.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lrl.core.io import LrlError

logger = logging.getLogger(__name__)

MIX_COLUMNS = ("audio", "text", "duration")  # what training reads of both sets


def mix_extra(train_ds, vocab, extra_path: str | Path, weight: float, seed: int = 0, split: str = "train"):
    """(labelled train rows + the chosen extra rows, note for train_config.yaml `resolved.extra_data`)."""
    import datasets

    from lrl.data.prepare import load_prepared

    dd, extra_vocab = load_prepared(extra_path)
    if split not in dd:
        raise LrlError(f"{extra_path} has no {split!r} split (it has {sorted(dd)}): --extra-data takes a dataset "
                       "written by `lrl pseudo-label` or `lrl data prepare`")
    extra = dd[split]
    if extra_vocab.normalizer != vocab.normalizer:
        logger.warning("%s was normalised differently from the labelled data (its vocab/normalizer.json): its texts "
                       "are used as they are", extra_path)
    texts = [str(t) for t in extra["text"]]
    ok = [bool(t.strip()) and not vocab.oov_chars(t) for t in texts]
    oov = sum(1 for t, k in zip(texts, ok, strict=True) if not k and t.strip())
    empty = sum(1 for t in texts if not t.strip())
    if oov:
        logger.warning("%d of %d rows of %s hold characters outside the labelled vocabulary and are dropped",
                       oov, len(texts), extra_path)
    durations = np.asarray(extra["duration"], dtype=np.float64)
    idx = [i for i, k in enumerate(ok) if k]
    if "confidence" in extra.column_names:
        conf = np.asarray(extra["confidence"], dtype=np.float64)
        idx.sort(key=lambda i: (-conf[i], i))
        order = "most confident first"
    else:
        idx = [idx[i] for i in np.random.default_rng(seed).permutation(len(idx))]
        order = f"seeded shuffle (seed {seed})"
    labelled_s = float(np.sum(np.asarray(train_ds["duration"], dtype=np.float64)))
    cap = weight * labelled_s
    chosen, total = [], 0.0
    for i in idx:
        if total + durations[i] > cap:
            continue
        chosen.append(i)
        total += float(durations[i])
    chosen.sort()
    note = {"path": str(extra_path), "weight": weight, "rule": f"extra rows up to weight x labelled hours, {order}",
            "labelled_clips": len(train_ds), "labelled_hours": round(labelled_s / 3600, 4), "extra_rows": len(texts),
            "extra_dropped_oov": oov, "extra_dropped_empty": empty, "extra_over_cap": len(idx) - len(chosen),
            "extra_used": len(chosen), "extra_hours": round(total / 3600, 4)}
    logger.info("extra data %s: %d of %d rows (%.2f h, cap %.2f h = %g x labelled)", extra_path, len(chosen),
                len(texts), total / 3600, cap / 3600, weight)
    if not chosen:
        logger.warning("no rows of %s used (%s)", extra_path, note)
        return train_ds, note
    cols = list(MIX_COLUMNS)
    mixed = datasets.concatenate_datasets([train_ds.select_columns(cols),
                                           extra.select(chosen).select_columns(cols).cast(train_ds.select_columns(cols).features)])
    return mixed, note
