"""SpecAugment settings: Wav2Vec2's own masking (`Wav2Vec2Config.mask_*`), with presets by amount of
labelled data, validated against the shortest clip; and the conv front end's frame arithmetic
(samples <-> encoder frames) that the check needs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from lrl.augment.wave import _check_p
from lrl.core.hf_transformers import conv_output_lengths

logger = logging.getLogger(__name__)

SpecPreset = Literal["none", "hf-default", "10min", "low-resource", "medium"]
SPEC_PRESETS: tuple[str, ...] = get_args(SpecPreset)


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Wav2Vec2's own masking of the feature-encoder output: time spans get the learned mask embedding,
    feature (channel) spans get zeros. Applied by the model in train mode only."""

    mask_time_prob: float = 0.05  # ~upper bound of the share of frames masked, [0, 1]
    mask_time_length: int = 10  # frames per time mask (20 ms a frame with the standard front end)
    mask_time_min_masks: int = 2  # at least this many time masks per clip
    mask_feature_prob: float = 0.0  # ~upper bound of the share of hidden channels zeroed, [0, 1]
    mask_feature_length: int = 10  # channels per feature mask
    mask_feature_min_masks: int = 0  # at least this many feature masks
    name: str = field(default="custom", compare=False)  # preset name, for logs

    def __post_init__(self) -> None:
        _check_p(self.mask_time_prob, "mask_time_prob")
        _check_p(self.mask_feature_prob, "mask_feature_prob")
        for n in ("mask_time_length", "mask_feature_length"):
            if int(getattr(self, n)) < 1:
                raise ValueError(f"{n} must be an integer >= 1, got {getattr(self, n)!r}")
        for n in ("mask_time_min_masks", "mask_feature_min_masks"):
            if int(getattr(self, n)) < 0:
                raise ValueError(f"{n} must be an integer >= 0, got {getattr(self, n)!r}")

    @classmethod
    def preset(cls, name: str) -> SpecAugmentConfig:
        """`hf-default` (HF Wav2Vec2Config defaults, large data); fairseq's XLS-R/wav2vec 2.0 fine-tuning
        recipes: `10min` (vox_10m), `low-resource` (vox_1h / vox_10h), `medium` (vox_100h); `none`."""
        table = {
            "none": dict(mask_time_prob=0.0, mask_feature_prob=0.0),
            "hf-default": dict(),
            "10min": dict(mask_time_prob=0.65, mask_feature_prob=0.25, mask_feature_length=64),
            "low-resource": dict(mask_time_prob=0.75, mask_feature_prob=0.25, mask_feature_length=64),
            "medium": dict(mask_time_prob=0.5, mask_feature_prob=0.5, mask_feature_length=64),
        }
        if name not in table:
            raise ValueError(f"SpecAugment preset must be one of {list(SPEC_PRESETS)}, got {name!r}")
        return cls(**table[name], name=name)

    @classmethod
    def for_hours(cls, hours: float) -> SpecAugmentConfig:
        """The preset for this many hours of labelled training audio."""
        if hours < 0:
            raise ValueError(f"hours must be >= 0, got {hours}")
        return cls.preset("10min" if hours < 0.5 else "low-resource" if hours < 30 else "medium")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpecAugmentConfig:
        """`{"preset": "low-resource", "mask_time_prob": 0.5}`: a preset (default hf-default) with overrides."""
        names = {f.name for f in dataclasses.fields(cls)} - {"name"}
        bad = sorted(set(d) - names - {"preset"})
        if bad:
            raise ValueError(f"specaugment: unknown key(s) {bad}; allowed: 'preset', {sorted(names)}")
        base = cls.preset(str(d.get("preset", "hf-default")))
        overrides = {k: v for k, v in d.items() if k != "preset"}
        return dataclasses.replace(base, **overrides, name=f"{base.name}+custom") if overrides else base

    def to_model_kwargs(self) -> dict[str, float | int]:
        """The Wav2Vec2Config fields: `Wav2Vec2ForCTC.from_pretrained(ckpt, **kwargs)` or `config.update(kwargs)`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}

    def validate(self, min_frames: int, *, num_features: int | None = None, strict: bool = False) -> SpecAugmentConfig:
        """Check the settings against the shortest clip (`min_frames` encoder frames) and the hidden size.
        A mask longer than the sequence crashes the forward pass (transformers #14524); min_masks x length
        beyond the clip blanks it (#15424). Limits: one mask and the minimum masks together cover at most
        half of the shortest clip. Returns a clamped copy (with a logged warning), or raises ValueError
        if `strict`."""
        if int(min_frames) < 1:
            raise ValueError(
                f"min_frames must be >= 1, got {min_frames}: the shortest clip is shorter than one encoder frame; "
                "drop such clips in data preparation (a minimum duration)"
            )
        problems, changes = [], {}
        axes = [("time", int(min_frames), "frames in the shortest clip")]
        if num_features is not None:
            axes.append(("feature", int(num_features), "hidden channels"))
        for axis, size, what in axes:
            if getattr(self, f"mask_{axis}_prob") == 0:  # the model skips this axis entirely
                continue
            length, min_masks = getattr(self, f"mask_{axis}_length"), getattr(self, f"mask_{axis}_min_masks")
            limit = max(1, size // 2)
            if length > limit:
                problems.append(f"mask_{axis}_length={length} > {limit} (half of {size} {what})")
                length = changes[f"mask_{axis}_length"] = limit
            if min_masks * length > limit:
                problems.append(f"mask_{axis}_min_masks={min_masks} x length {length} > {limit} (half of {size} {what})")
                changes[f"mask_{axis}_min_masks"] = limit // length
        if not problems:
            return self
        if strict:
            raise ValueError(
                "SpecAugment settings do not fit the data: " + "; ".join(problems)
                + ". Lower them, or drop the shortest clips (a minimum duration in data preparation)."
            )
        logger.warning("SpecAugment clamped to fit the data (%s): %s", "; ".join(problems),
                       ", ".join(f"{k}={v}" for k, v in changes.items()))
        return dataclasses.replace(self, **changes)

    def validate_for(self, model_config, min_samples: int, *, strict: bool = False) -> SpecAugmentConfig:
        """`validate` for a Wav2Vec2Config and the shortest clip's length in samples."""
        return self.validate(feature_frames(min_samples, model_config), num_features=model_config.hidden_size,
                             strict=strict)


def feature_frames(num_samples: int, model_config) -> int:
    """Encoder frames for a clip of `num_samples` (the conv front end, without an adapter); 0 when the
    clip is shorter than one frame."""
    return max(0, int(conv_output_lengths(int(num_samples), model_config, add_adapter=False)))


def min_samples_for_frames(frames: int, model_config) -> int:
    """The shortest input (samples) that gives `frames` encoder frames."""
    n = int(frames)
    for kernel, stride in reversed(list(zip(model_config.conv_kernel, model_config.conv_stride, strict=True))):
        n = (n - 1) * stride + kernel
    return n
