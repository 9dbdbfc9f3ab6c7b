"""The frozen conv front end's output, computed once per training clip and reused every epoch.

While the feature encoder is frozen and the waveform is not augmented, its output for a clip never
changes (with the layer-normed front end of XLS-R/MMS; group norm depends on the batch's padding), yet on small models it is a large share of every step (38% for `tiny_config("small")` on CPU,
bench/train.py). SpecAugment acts after it (on the projected features), so masking is unchanged; the
conv stack has no dropout, so training mode gives the same features as evaluation mode.
The cached features reach the model through `cached_front_end`, which swaps the model's feature encoder
for a pass-through module for the duration of training (a plain `nn.Module` attribute swap, restored after).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from lrl.core.batching import pack_batches

logger = logging.getLogger(__name__)

BUILD_SECONDS = 60.0  # seconds of padded audio per batch while the cache is built (forward only, no grads)
MIN_EPOCHS = 1.5  # a run planned for fewer epochs skips the cache: building it costs about one epoch's conv work


@dataclass
class FeatureCache:
    """Per training row: the conv features (channels x frames, float32) and the clip's sample count."""

    feats: list[np.ndarray]
    samples: np.ndarray  # int64, samples of each clip at the model's rate (the attention mask's length)
    build_seconds: float  # wall time the build took

    @property
    def nbytes(self) -> int:
        return int(sum(f.nbytes for f in self.feats))


def cache_blocker(freeze_feature_encoder: bool, unfreeze_conv_at: int, augment: str, world_size: int,
                  planned_epochs: float | None, feat_extract_norm: str = "layer", n_gpu: int = 0) -> str | None:
    """Why the front end's output cannot (or should not) be cached in this run, or None when it can."""
    if feat_extract_norm != "layer":
        # group norm (wav2vec2-base) normalises each channel over the padded batch: a clip's features
        # depend on the batch it is in, so cached ones would differ from the ones training computes
        return f"the conv front end uses feat_extract_norm={feat_extract_norm!r}, which depends on batch padding"
    if freeze_feature_encoder is False:
        return "the feature encoder trains (freeze.freeze_feature_encoder=false)"
    if unfreeze_conv_at >= 0:
        return f"the conv layers unfreeze at update {unfreeze_conv_at} (freeze.unfreeze_conv_at)"
    if augment != "none":
        return f"waveform augmentation ({augment!r}) changes the input every epoch"
    if world_size > 1:
        return f"{world_size} processes would each build the whole cache"
    if n_gpu > 1:
        return f"DataParallel over {n_gpu} GPUs replicates the module the cache bypasses"
    if planned_epochs is not None and planned_epochs < MIN_EPOCHS:
        return f"the run is planned for {planned_epochs:.1f} epochs; the cache pays off from about {MIN_EPOCHS:g}"
    return None


def estimate_bytes(model_config, total_samples: int) -> int:
    """Memory the cache takes: conv channels x output frames x 4 bytes."""
    ratio = int(np.prod(model_config.conv_stride))
    return int(model_config.conv_dim[-1]) * (int(total_samples) // ratio) * 4


def build_feature_cache(model, dataset, durations: list[float], collate, max_seconds: float = BUILD_SECONDS) -> FeatureCache:
    """Run the model's conv front end once over `dataset` (rows with "audio"; `collate` is the training
    collator without augmentation, so inputs are normalised exactly as in training) in length-sorted
    batches of <= `max_seconds` padded audio (`lrl.core.batching.pack_batches`), keeping each clip's valid frames."""
    import torch

    from lrl.core.hf_transformers import conv_output_lengths

    t0 = time.perf_counter()
    fe = model.wav2vec2.feature_extractor
    device = next(model.parameters()).device
    feats: list[np.ndarray | None] = [None] * len(durations)
    samples = np.zeros(len(durations), dtype=np.int64)
    for batch in pack_batches(durations, max_seconds):
        enc = collate([dataset[i] for i in batch])
        lengths = enc["attention_mask"].sum(-1)
        frames = conv_output_lengths(lengths, model.config, add_adapter=False)  # the conv stack's own
        with torch.no_grad():
            out = fe(enc["input_values"].to(device)).float().cpu()
        for b, i in enumerate(batch):
            feats[i] = out[b, :, : int(frames[b])].numpy().copy()
            samples[i] = int(lengths[b])
    cache = FeatureCache(feats, samples, time.perf_counter() - t0)  # type: ignore[arg-type]
    logger.info("cached the conv front end's output for %d clips (%.0f MB) in %.1f s", len(feats),
                cache.nbytes / 2**20, cache.build_seconds)
    return cache


class CachedFeatureCollator:
    """Pads cached conv features into input_values (batch x channels x frames) with a sample-level
    attention_mask, so the model derives the same frame lengths and masks as from the waveforms; labels
    come from `base` (a CTCCollator). Rows carry "row" (index into the cache) and "text"."""

    def __init__(self, cache: FeatureCache, base) -> None:
        self.cache = cache
        self.base = base

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        idx = [int(r["row"]) for r in rows]
        feats = [self.cache.feats[i] for i in idx]
        channels, frames = feats[0].shape[0], max(f.shape[1] for f in feats)
        inputs = np.zeros((len(idx), channels, frames), dtype=np.float32)
        for b, f in enumerate(feats):
            inputs[b, :, : f.shape[1]] = f
        n = self.cache.samples[idx]
        mask = np.arange(int(n.max()))[None, :] < n[:, None]
        return {"input_values": torch.from_numpy(inputs), "attention_mask": torch.from_numpy(mask.astype(np.int64)),
                "labels": self.base.labels(rows)}


def _pass_through(encoder):
    """A module standing in for `encoder` (a Wav2Vec2FeatureEncoder): 3-D inputs (cached features,
    batch x channels x frames) pass unchanged, 2-D waveforms (evaluation batches) run through `encoder`.
    It registers the encoder's `conv_layers` under the same name, so parameter names, state_dict keys
    (checkpoints saved meanwhile) and per-layer code see the model unchanged."""
    import torch

    class CachedFrontEnd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_layers = encoder.conv_layers
            self.encoder = (encoder,)  # a tuple, not a submodule: its parameters are listed once, as conv_layers

        def forward(self, input_values):
            return input_values if input_values.dim() == 3 else self.encoder[0](input_values)

    return CachedFrontEnd()


@contextmanager
def cached_front_end(model):
    """While inside, `model.wav2vec2.feature_extractor` is a pass-through for cached features (3-D
    inputs) that runs the real conv stack on 2-D waveforms (evaluation batches); the real module is put
    back on exit."""
    encoder = model.wav2vec2.feature_extractor
    model.wav2vec2.feature_extractor = _pass_through(encoder)
    try:
        yield
    finally:
        model.wav2vec2.feature_extractor = encoder
