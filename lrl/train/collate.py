"""Batches for CTC training and evaluation: a list of {"audio", "text"} rows becomes padded, per-clip
normalised input_values, their attention_mask and padded label ids (Vocab.encode; -100 = ignored by the
CTC loss), with optional waveform augmentation for the training batches.
"""

from __future__ import annotations

import numpy as np

from lrl.core.constants import SAMPLE_RATE

IGNORE_LABEL = -100  # label id the CTC loss of Wav2Vec2ForCTC skips (padding)


class CTCCollator:
    """Pads a list of {"audio", "text"} rows into input_values (per-clip zero-mean unit-variance, as the
    Wav2Vec2 feature extractor does), attention_mask and labels (-100 = ignored). Give an augmenter to
    the training collator only; each dataloader worker and rank draws from its own stream."""

    def __init__(self, vocab, augmenter=None) -> None:
        self.vocab = vocab  # lrl.data.vocab.Vocab: its `encode` maps spaces to `|` and unknown characters to [UNK]
        self.augmenter = augmenter  # lrl.augment.wave.WaveAugmenter: its stream follows (seed, rank, worker, call)

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        clips = []
        for r in rows:
            x = np.asarray(r["audio"], dtype=np.float32)
            if self.augmenter is not None:
                x = np.asarray(self.augmenter(x, SAMPLE_RATE), dtype=np.float32)
            clips.append((x - x.mean()) / np.sqrt(x.var() + 1e-7))
        n = max(len(c) for c in clips)
        inputs = np.zeros((len(clips), n), dtype=np.float32)
        mask = np.zeros((len(clips), n), dtype=np.int64)
        for i, c in enumerate(clips):
            inputs[i, : len(c)] = c
            mask[i, : len(c)] = 1
        return {"input_values": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(mask),
                "labels": self.labels(rows)}

    def labels(self, rows: list[dict]):
        """The rows' transcripts as padded label ids (-100 = ignored by the CTC loss)."""
        import torch

        ids = [self.vocab.encode(str(r["text"])) for r in rows]
        m = max(1, max(len(t) for t in ids))
        labels = np.full((len(ids), m), IGNORE_LABEL, dtype=np.int64)
        for i, t in enumerate(ids):
            labels[i, : len(t)] = t
        return torch.from_numpy(labels)
