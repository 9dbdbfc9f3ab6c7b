"""What trains when: the freeze/unfreeze schedule of a CTC fine-tuning run (fairseq's
freeze_finetune_updates, then progressive top-down unfreezing of the Transformer, then optionally the conv
front end), applied to the model's requires_grad flags by a Trainer callback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lrl.core.hf_transformers import set_front_end_trainable
from lrl.train.optim import BOTTOM, HEAD, param_unit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreezeConfig:
    """What is frozen when. Steps count optimizer updates; the head is always trained."""

    freeze_feature_encoder: bool | str = "auto"  # keep the conv front end frozen (until `unfreeze_conv_at`); "auto" =
    # the training recipe's (lrl.train.recipes: frozen for every trained start, trained for a random one); unresolved = frozen
    freeze_encoder_steps: int = 0  # the whole Transformer frozen for this many updates (fairseq freeze_finetune_updates)
    unfreeze_layers: int = 0  # then unfreeze this many layers top-down every `unfreeze_every` updates; 0 = all at once
    unfreeze_every: int = 0  # updates between unfreezing steps (with unfreeze_layers > 0)
    unfreeze_conv_at: int = -1  # update at which the conv layers start unfreezing, top first; -1 = never
    unfreeze_conv_every: int = 0  # updates between conv layers unfreezing; 0 = all at once
    adapters: bool = False  # MMS adapter mode: only adapter layers and the head ever train

    def __post_init__(self) -> None:
        for f in ("freeze_encoder_steps", "unfreeze_layers", "unfreeze_every", "unfreeze_conv_every"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0 (updates), got {getattr(self, f)}")
        if self.unfreeze_layers > 0 and self.unfreeze_every <= 0:
            raise ValueError(
                f"unfreeze_every must be > 0 when unfreeze_layers > 0 (got unfreeze_layers={self.unfreeze_layers}, "
                f"unfreeze_every={self.unfreeze_every})"
            )
        if self.unfreeze_conv_at < -1:
            raise ValueError(f"unfreeze_conv_at must be >= 0, or -1 for never, got {self.unfreeze_conv_at}")
        if self.freeze_feature_encoder not in (True, False, "auto"):
            raise ValueError(f"freeze_feature_encoder must be true, false or 'auto', got {self.freeze_feature_encoder!r}")

    def trainable_units(self, step: int, num_layers: int, num_conv: int) -> frozenset[str]:
        """The units that train during update number `step` (0-based: the first update is step 0)."""
        units = {HEAD}
        if self.adapters:
            return frozenset(units | {"adapters"})
        if step >= self.freeze_encoder_steps:
            if self.unfreeze_layers > 0:
                n = min(num_layers, self.unfreeze_layers * (1 + (step - self.freeze_encoder_steps) // self.unfreeze_every))
            else:
                n = num_layers
            units |= {f"layer.{num_layers - 1 - i}" for i in range(n)}
            if n == num_layers:
                units.add(BOTTOM)
        if self.freeze_feature_encoder is False:
            units |= {f"conv.{i}" for i in range(num_conv)}
        elif self.unfreeze_conv_at >= 0 and step >= self.unfreeze_conv_at:
            every = self.unfreeze_conv_every
            n = num_conv if every == 0 else min(num_conv, 1 + (step - self.unfreeze_conv_at) // every)
            units |= {f"conv.{num_conv - 1 - i}" for i in range(n)}
        return frozenset(units)


def apply_freeze(model, units: frozenset[str]) -> tuple[int, int]:
    """Set requires_grad so exactly `units` train; returns (trainable, total) parameter counts."""
    cfg = model.config
    trainable = total = 0
    for name, p in model.named_parameters():
        unit = param_unit(name, cfg.num_hidden_layers, cfg.do_stable_layer_norm)
        if "adapters" in units:
            on = unit == HEAD or ".adapter_layer." in name
        else:
            on = unit in units and ".adapter_layer." not in name
        p.requires_grad_(on)
        total += p.numel()
        trainable += p.numel() if on else 0
    set_front_end_trainable(model, any(u.startswith("conv.") for u in units))  # HF's own flag for the frozen front end
    return trainable, total


def _no_event(*args, **kwargs) -> None:
    return None


class FreezeScheduleCallback:
    """A Trainer callback: applies a FreezeConfig at the start of training (also after a resume) and
    before every update, logging each change with trainable-parameter counts; drops gradients of frozen
    parameters before the optimizer step (so weight decay never touches them, also under DDP).
    It duck-types `transformers.TrainerCallback` (other events are no-ops), so importing this module
    does not import transformers."""

    def __init__(self, model, config: FreezeConfig) -> None:
        self.model = model
        self.config = config
        self.units: frozenset[str] | None = None
        self.history: list[tuple[int, int, int]] = []  # (step, trainable, total) at every change
        self.num_conv = len(model.wav2vec2.feature_extractor.conv_layers)

    def apply(self, step: int) -> None:
        units = self.config.trainable_units(step, self.model.config.num_hidden_layers, self.num_conv)
        if units == self.units:
            return
        trainable, total = apply_freeze(self.model, units)
        self.units = units
        self.history.append((step, trainable, total))
        layers = sorted((u for u in units if u.startswith("layer.")), key=lambda u: int(u.split(".")[1]))
        convs = sorted(u for u in units if u.startswith("conv."))
        logger.info(
            "step %d: %s parameters trainable of %s (%.1f%%): head%s%s%s%s", step, f"{trainable:,}", f"{total:,}",
            100 * trainable / max(total, 1), ", adapters" if "adapters" in units else "",
            f", layers {layers[0][6:]}-{layers[-1][6:]}" if layers else "", ", bottom" if BOTTOM in units else "",
            f", conv {' '.join(c[5:] for c in convs)}" if convs else "",
        )

    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return _no_event
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        for p in self.model.parameters():
            if not p.requires_grad:
                p.grad = None
