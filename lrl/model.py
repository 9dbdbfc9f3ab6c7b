"""Wav2Vec2 checkpoints: tiny randomly initialised ones with the XLS-R structure (for tests, demos and
CPU experiments), written exactly as a hub checkpoint is, so the real loading code is what reads them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

TinySize = Literal["test", "small"]

# "small": the 2.5M-parameter shape that trained best from scratch on this CPU (ENV-NOTES): a 4-layer
# conv front end with total stride 320 (20 ms frames at 16 kHz, like XLS-R's 7 layers), pre-LayerNorm
# ("stable") Transformer as in XLS-R/MMS. "test": the same structure, as small as it gets, for unit tests.
_TINY = {
    "test": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 32, 32, 32), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        codevector_dim=32, proj_codevector_dim=32, num_codevectors_per_group=32, num_codevector_groups=2,
    ),
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
        conv_dim=(64, 128, 128, 128), conv_kernel=(10, 8, 4, 4), conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=16,
        codevector_dim=128, proj_codevector_dim=128, num_codevectors_per_group=160, num_codevector_groups=2,
    ),
}


def tiny_config(size: TinySize = "test", **overrides):
    """A `Wav2Vec2Config` with the XLS-R layout (stable layer norm, layer-normed conv front end)."""
    from transformers import Wav2Vec2Config

    if size not in _TINY:
        raise ValueError(f"size must be one of {sorted(_TINY)}, got {size!r}")
    kw = dict(
        feat_extract_norm="layer", do_stable_layer_norm=True, feat_extract_activation="gelu", conv_bias=True,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0,
        num_negatives=100, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1,
    )
    kw.update(_TINY[size])
    kw.update(overrides)
    return Wav2Vec2Config(**kw)


def init_tiny(out: str | Path, size: TinySize = "test", seed: int = 0, **overrides) -> Path:
    """Write a randomly initialised `Wav2Vec2ForPreTraining` checkpoint (safetensors + config +
    feature-extractor config) to `out`, the way XLS-R and MMS pretraining checkpoints ship."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    torch.manual_seed(seed)
    model = Wav2Vec2ForPreTraining(tiny_config(size, **overrides))
    out = Path(out)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    logger.info("wrote a %s Wav2Vec2ForPreTraining (%.2fM parameters) to %s", size, n / 1e6, out)
    return out
