"""What trains when, and how fast: layer-wise learning-rate optimizer groups for Wav2Vec2ForCTC (no weight
decay on norms and biases), the freeze/unfreeze schedule (fairseq's freeze_finetune_updates, then
progressive top-down unfreezing, then optionally the conv front end) as a TrainerCallback, and the
warmup + cosine and fairseq tri-stage learning-rate schedules.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

HEAD = "head"
BOTTOM = "bottom"  # feature projection, positional conv embedding, masked_spec_embed
_NO_DECAY = re.compile(r"(bias$|norm|layernorm|layer_norm|masked_spec_embed)")

LrSchedule = Literal["cosine", "tri_stage", "linear", "constant"]


# -- which unit a parameter belongs to ----------------------------------------------------------------
def param_unit(name: str, num_layers: int, stable_layer_norm: bool = True) -> str:
    """The freezing / LR unit of a Wav2Vec2ForCTC parameter: "head", "layer.<l>", "conv.<i>", "bottom"."""
    if name.startswith("lm_head."):
        return HEAD
    m = re.search(r"encoder\.layers\.(\d+)\.", name)
    if m:
        return f"layer.{int(m.group(1))}"
    m = re.search(r"feature_extractor\.conv_layers\.(\d+)\.", name)
    if m:
        return f"conv.{int(m.group(1))}"
    if re.search(r"encoder\.layer_norm\.", name):
        # pre-LN ("stable", XLS-R/MMS) applies it after the last layer; post-LN (base) before the first
        return f"layer.{num_layers - 1}" if stable_layer_norm else BOTTOM
    if re.search(r"wav2vec2\.adapter\.", name):  # the optional conv adapter between encoder and head
        return HEAD
    return BOTTOM


def unit_depth(unit: str, num_layers: int) -> int:
    """Depth for layer-wise LR: conv layers and the bottom = 0, Transformer layer l = l + 1 (top = L)."""
    if unit.startswith("layer."):
        return int(unit.split(".")[1]) + 1
    return 0


@dataclass(frozen=True)
class LayerwiseLrConfig:
    """Layer-wise learning rates: LR of depth d = lr x decay^(L - d); the head gets lr x head_lr_mult."""

    lr: float = 1e-4  # peak learning rate of the top Transformer layer
    layer_decay: float = 1.0  # per-layer factor going down (1.0 = same LR everywhere, 0.8 is typical)
    head_lr_mult: float = 1.0  # the CTC head's LR relative to `lr` (a fresh head often wants 10x)
    weight_decay: float = 0.0  # AdamW weight decay (never on biases, norms, masked_spec_embed)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not self.head_lr_mult > 0:
            raise ValueError(f"head_lr_mult must be > 0, got {self.head_lr_mult}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def layerwise_param_groups(model, config: LayerwiseLrConfig) -> list[dict]:
    """AdamW parameter groups, one per (depth, decay / no decay), holding ALL parameters (frozen ones
    too: AdamW skips parameters without a gradient, so unfreezing later needs no new optimizer).
    Each group carries `lr`, `weight_decay`, and `name` ("layer.3", "head", "bottom"...) and `depth`."""
    cfg = model.config
    L = cfg.num_hidden_layers
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in model.named_parameters():
        unit = param_unit(name, L, cfg.do_stable_layer_norm)
        if unit == HEAD:
            key, lr, depth = HEAD, config.lr * config.head_lr_mult, L + 1
        else:
            depth = unit_depth(unit, L)
            key = f"layer.{depth - 1}" if depth else BOTTOM
            lr = config.lr * config.layer_decay ** (L - depth)
        decay = not (p.ndim <= 1 or _NO_DECAY.search(name))
        g = groups.setdefault(
            (key, decay),
            {"params": [], "lr": lr, "weight_decay": config.weight_decay if decay else 0.0, "name": key, "depth": depth},
        )
        g["params"].append(p)
    return sorted(groups.values(), key=lambda g: (g["depth"], g["weight_decay"]))


# -- learning-rate schedules ------------------------------------------------------------------------
class WarmupCosine:
    """LR factor: linear warmup from 0 to 1 over `warmup` steps, then cosine down to `final_scale`."""

    def __init__(self, warmup: int, total: int, final_scale: float = 0.0) -> None:
        self.warmup, self.total, self.final_scale = warmup, max(total, 1), final_scale

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.final_scale + (1 - self.final_scale) * 0.5 * (1 + math.cos(math.pi * t))


class TriStage:
    """fairseq's tri-stage LR factor: linear warmup from `init_scale` to 1, hold, exponential decay to
    `final_scale` (phases as shares of `total`, as fairseq's `phase_ratio`), then constant."""

    def __init__(self, total: int, phase_ratio=(0.1, 0.4, 0.5), init_scale: float = 0.01, final_scale: float = 0.05):
        if abs(sum(phase_ratio) - 1.0) > 1e-6 or any(r < 0 for r in phase_ratio):
            raise ValueError(f"tri-stage phase_ratio must be 3 non-negative shares summing to 1, got {phase_ratio}")
        self.warmup = int(total * phase_ratio[0])
        self.hold = int(total * phase_ratio[1])
        self.decay = max(1, total - self.warmup - self.hold)
        self.init_scale, self.final_scale = init_scale, final_scale

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.init_scale + (1 - self.init_scale) * step / self.warmup
        step -= self.warmup
        if step < self.hold:
            return 1.0
        step -= self.hold
        if step <= self.decay:
            return math.exp(math.log(self.final_scale) * step / self.decay)
        return self.final_scale


def make_lr_lambda(kind: LrSchedule, total_steps: int, warmup_steps: int, phase_ratio=(0.1, 0.4, 0.5)):
    """The LR factor function of schedule `kind` over `total_steps` optimizer updates."""
    if kind == "cosine":
        return WarmupCosine(warmup_steps, total_steps)
    if kind == "tri_stage":
        return TriStage(total_steps, phase_ratio)
    if kind == "linear":
        return _Linear(warmup_steps, total_steps)
    if kind == "constant":
        return _Constant(warmup_steps)
    raise ValueError(f"lr_schedule must be cosine, tri_stage, linear or constant, got {kind!r}")


class _Linear(WarmupCosine):
    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


class _Constant(WarmupCosine):
    def __init__(self, warmup: int) -> None:
        super().__init__(warmup, 1)

    def __call__(self, step: int) -> float:
        return (step + 1) / (self.warmup + 1) if step < self.warmup else 1.0


# -- freezing -----------------------------------------------------------------------------------------
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
    fe = model.wav2vec2.feature_extractor
    fe._requires_grad = any(u.startswith("conv.") for u in units)  # HF's own flag for the frozen front end
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
