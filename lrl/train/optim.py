"""How fast each part learns: which unit a Wav2Vec2ForCTC parameter belongs to, layer-wise learning-rate
AdamW groups (no weight decay on norms and biases), and the LR factor of each schedule: transformers'
public warmup + cosine / linear / constant schedules (read so the first update already learns) and
fairseq's tri-stage, which transformers does not have.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Literal

HEAD = "head"
BOTTOM = "bottom"  # feature projection, positional conv embedding, masked_spec_embed
_NO_DECAY = re.compile(r"(bias$|norm|layernorm|layer_norm|masked_spec_embed)")

LrSchedule = Literal["cosine", "tri_stage", "linear", "constant"]
# lrl's schedule -> transformers.SchedulerType name (get_scheduler)
_HF_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


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
@functools.lru_cache(maxsize=16)
def _hf_factor(name: str, warmup: int, total: int):
    """The step -> factor function of transformers' public schedule `name` (its LambdaLR's lr_lambdas),
    built once per (name, warmup, total) on a one-parameter optimizer."""
    import torch
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    return get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=total).lr_lambdas[0]


class WarmupSchedule:
    """LR factor of transformers' warmup + cosine (to 0), linear (to 0) or constant schedule over `total`
    updates, read one step later with warmup and horizon one step longer. transformers' warmup is
    step / warmup, so the first update trains at LR 0; lrl's is (step + 1) / (warmup + 1), which is
    transformers' at step + 1 with warmup + 1 and total + 1, equal after the warmup too. Past `total` the
    factor stays at its end (transformers' cosine would rise again). `warmup` and `total` are plain numbers:
    TimeBudgetCallback re-fits `total`, and a checkpoint's scheduler.pt restores it."""

    def __init__(self, kind: LrSchedule, warmup: int, total: int) -> None:
        if kind not in _HF_SCHEDULES:
            raise ValueError(f"WarmupSchedule kind must be one of {sorted(_HF_SCHEDULES)}, got {kind!r}")
        self.kind, self.warmup, self.total = kind, warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        step = min(step, max(self.total, self.warmup + 1))
        return _hf_factor(_HF_SCHEDULES[self.kind], self.warmup + 1, self.total + 1)(step + 1)


class TriStage:
    """fairseq's tri-stage LR factor: linear warmup from `init_scale` to 1, hold, exponential decay to
    `final_scale` (phases as shares of `total`, as fairseq's `phase_ratio`), then constant. Kept because
    transformers' nearest public schedule, get_wsd_schedule (warmup-stable-decay), decays linearly, by
    cosine or by 1-sqrt, never exponentially, and starts its warmup at its floor `min_lr_ratio`, while
    tri-stage starts at `init_scale` (0.01) and ends at `final_scale` (0.05)."""

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
    """The LR factor function (update -> share of the peak LR) of schedule `kind` over `total_steps`
    optimizer updates, for torch's LambdaLR."""
    if kind == "tri_stage":
        return TriStage(total_steps, phase_ratio)
    if kind in _HF_SCHEDULES:
        return WarmupSchedule(kind, warmup_steps, total_steps)
    raise ValueError(f"lr_schedule must be cosine, tri_stage, linear or constant, got {kind!r}")
