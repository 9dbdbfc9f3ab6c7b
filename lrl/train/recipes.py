"""Training recipes: the measured settings lrl fills in for the config keys left at "auto" (peak LR,
warm-up, conv front end frozen or not, SpecAugment preset), chosen from what is being fine-tuned (a small
trained start, an XLS-R/MMS-sized checkpoint, MMS adapters) and how much labelled audio there is.
Explicit settings always win; the run's resolved config names the recipe and the reason."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

AUTO = "auto"  # the value of a config key the recipe fills in
RecipeName = Literal["auto", "small-start", "scratch", "large", "adapter", "hf-example"]
RECIPE_NAMES: tuple[str, ...] = get_args(RecipeName)
# A start with fewer parameters than this is "small": lrl's shipped xl-tiny (2.5M) and the tiny test
# models are far below, XLS-R 300M / 1B and MMS-1b far above.
LARGE_PARAMS = 50e6
WARMUP_SHARE = 0.1  # a recipe's warm-up never takes more than this share of the planned updates


@dataclass(frozen=True)
class Recipe:
    """The values of the "auto" keys; `why` is the evidence, written into the resolved config."""

    lr: float  # peak LR of the top Transformer layer (optim.lr)
    warmup_steps: int  # linear warm-up updates (optim.warmup_steps), capped at WARMUP_SHARE of the run
    freeze_feature_encoder: bool  # keep the conv front end frozen (freeze.freeze_feature_encoder)
    spec_augment: str  # SpecAugment preset (model.spec_augment); "by-hours" = SpecAugmentConfig.for_hours
    why: str  # where the numbers come from


RECIPES: dict[str, Recipe] = {
    # bench/lowres arm c (xl-tiny + head transfer, yo-cv, 2050 updates): 42.8% test CER, against 61.2%
    # with HF's example settings (arm e) and 77.7% with lr 1e-4 / warm-up 500 at 2000 updates.
    "small-start": Recipe(5e-4, 30, True, "hf-default", "bench/lowres arm c: a small trained start, high LR, short warm-up"),
    # a random or self-supervised-only tiny model on CPU (../shared/ENV-NOTES.md 2-core runs, bench/lowres a, b):
    # updates beat batch size, a high peak LR with a short warm-up, and the conv front end trained too.
    "scratch": Recipe(1.5e-3, 30, False, "hf-default", "ENV-NOTES / bench/lowres arm a: a random tiny model"),
    # XLS-R / MMS-sized checkpoints: HF's XLS-R fine-tuning recipe (run_speech_recognition_ctc.py README,
    # the XLS-R blog: lr 3e-4, 500 warm-up updates, conv front end frozen), masking by hours of data.
    "large": Recipe(3e-4, 500, True, "by-hours", "HF's XLS-R fine-tuning recipe (lr 3e-4, warm-up 500)"),
    # MMS adapter mode (only adapters + head train): the MMS adapter fine-tuning blog's lr 1e-3, warm-up 100.
    "adapter": Recipe(1e-3, 100, True, "by-hours", "HF's MMS adapter fine-tuning recipe (lr 1e-3, warm-up 100)"),
    # run_speech_recognition_ctc.py's example settings, kept by name for comparison (bench/lowres arm e)
    "hf-example": Recipe(3e-4, 500, True, "hf-default", "HF run_speech_recognition_ctc.py example settings"),
}


def count_parameters(model_config) -> int:
    """Parameters of a Wav2Vec2 config's encoder, from its shape (no weights needed): the Transformer
    layers (attention 4h^2 + feed-forward 2hf) dominate; the conv front end and head are small."""
    h, f, n = model_config.hidden_size, model_config.intermediate_size, model_config.num_hidden_layers
    dims = list(model_config.conv_dim)
    conv = sum(c_in * c_out * k for c_in, c_out, k in zip([1, *dims[:-1]], dims, model_config.conv_kernel, strict=True))
    return int(n * (4 * h * h + 2 * h * f) + conv)


def choose_recipe(model_config, train_hours: float, adapter: bool) -> tuple[str, str]:
    """(recipe name, reason) for `recipe = "auto"`: MMS adapters -> adapter; an XLS-R/MMS-sized start ->
    large; anything smaller -> small-start (a trained start; `scratch` is picked by name only, since a
    random start cannot be told from a trained one by its config)."""
    n = count_parameters(model_config)
    size = f"{n / 1e6:.1f}M parameters"
    data = f"{train_hours:.2f} h labelled"
    if adapter:
        return "adapter", f"MMS adapter mode (model.adapter_lang); {size}; {data}"
    if n >= LARGE_PARAMS:
        return "large", f"the start has {size} (>= {LARGE_PARAMS / 1e6:.0f}M: XLS-R/MMS-sized); {data}"
    return "small-start", f"the start has {size} (< {LARGE_PARAMS / 1e6:.0f}M: a small start); {data}"


def resolve_recipe(cfg, model_config, train_hours: float, planned_updates: int | None):
    """`cfg` (a TrainConfig) with every "auto" key filled from its recipe, and a note for the resolved
    config: {"recipe": name, "why": ..., "set": {key: value}, "explicit": [keys the user set]}."""
    from lrl.augment.specaugment import SpecAugmentConfig

    name, reason = (cfg.recipe, "chosen by name") if cfg.recipe != AUTO else choose_recipe(
        model_config, train_hours, bool(cfg.model.adapter_lang))
    r = RECIPES[name]
    warmup = r.warmup_steps
    if planned_updates:
        warmup = min(warmup, max(1, int(WARMUP_SHARE * planned_updates)))
    spec = SpecAugmentConfig.for_hours(train_hours).name if r.spec_augment == "by-hours" else r.spec_augment
    wanted = {"optim.lr": r.lr, "optim.warmup_steps": warmup,
              "freeze.freeze_feature_encoder": r.freeze_feature_encoder, "model.spec_augment": spec}
    filled, explicit = {}, []
    for key, value in wanted.items():
        section, field = key.split(".")
        if getattr(getattr(cfg, section), field) == AUTO:
            filled[key] = value
        else:
            explicit.append(key)
    sections = {}
    for key, value in filled.items():
        section, field = key.split(".")
        sections.setdefault(section, {})[field] = value
    replaced = {s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    out = dataclasses.replace(cfg, recipe=name, **replaced)
    note = {"recipe": name, "why": f"{reason}; {r.why}", "set": filled, "explicit": explicit}
    return out, note
