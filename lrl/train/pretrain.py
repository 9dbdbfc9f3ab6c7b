"""Continued wav2vec 2.0 self-supervised pretraining (`lrl pretrain`) on unlabeled target-language audio:
crops from prepared datasets or audio folders, transformers' own span masking and negative sampling, the
model's contrastive + diversity loss, a decaying Gumbel temperature, per-step CSV/TensorBoard metrics,
codebook-collapse and no-decay warnings, resumable checkpoints, and a directory `Wav2Vec2ForCTC` can load.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from lrl.core.constants import (
    AUDIO_SUFFIXES,  # the same audio files `lrl data prepare` picks up in a folder
    SAMPLE_RATE,
)
from lrl.core.hf_datasets import is_saved_dataset
from lrl.core.hf_transformers import (
    compute_mask_indices,
    conv_output_lengths,
    frame_attention_mask,
    sample_negative_indices,
)
from lrl.core.io import LrlError, atomic_write_text, iter_files
from lrl.train.batching import check_seed
from lrl.train.run_dir import (
    MAX_NONFINITE_IN_A_ROW,
    STATE_FILE,
    check_finite_weights,
    complete_checkpoints,
    prune_checkpoints,
    run_lock,
)

logger = logging.getLogger(__name__)

LOG_COLUMNS = (
    "step", "loss", "contrastive", "diversity", "perplexity", "temperature", "masked_share", "lr",
    "grad_norm", "seconds",
)
# SpecAugment fields the pretraining loop overrides; saved checkpoints keep the model's own values, so a
# fine-tuning run does not inherit pretraining's 65% masking as its SpecAugment.
_SPEC_AUGMENT_FIELDS = ("apply_spec_augment", "mask_feature_prob")
_RECIPE_GUMBEL_DECAY = 0.999995  # wav2vec 2.0: 2.0 -> 0.5 over ~277k updates


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of one pretraining run. Loss and masking defaults are the wav2vec 2.0 recipe (Baevski et
    al. 2020, HF's run_wav2vec2_pretraining_no_trainer.py); optimisation defaults suit continued pretraining."""

    max_steps: int = 1000  # optimizer updates (each one takes `grad_accum` micro-batches)
    max_minutes: float = 0.0  # stop after this much wall-clock time, start-up included (0 = no limit);
    # the LR and Gumbel schedules still span max_steps
    batch_size: int = 8  # crops per micro-batch
    grad_accum: int = 1  # micro-batches whose gradients are summed per update
    learning_rate: float = 5e-5  # peak LR; low because the start is a trained checkpoint (from scratch: ~5e-4)
    warmup_steps: int = 100  # updates of linear warmup from 0, then linear decay to 0 at max_steps
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.98)  # wav2vec 2.0's Adam betas
    adam_eps: float = 1e-6  # Adam epsilon
    max_grad_norm: float = 10.0  # clip the global gradient norm of each update to this (0 = no clipping)
    mask_time_prob: float = 0.65  # share of frames that start a masked span (before overlaps)
    mask_time_length: int = 10  # frames per masked span (10 x 20 ms = 200 ms)
    min_masks: int = 2  # at least this many spans per crop, so every crop has targets and distractors
    num_negatives: int = 100  # distractors sampled from the same crop's masked frames
    logit_temperature: float = 0.1  # kappa: cosine similarities are divided by this
    diversity_weight: float = 0.1  # alpha: weight of the codebook diversity loss
    max_gumbel_temperature: float = 2.0  # Gumbel-softmax temperature at step 0
    min_gumbel_temperature: float = 0.5  # floor of the temperature
    gumbel_decay: float = _RECIPE_GUMBEL_DECAY  # per-update factor (recipe: reaches the floor after ~277k updates)
    gumbel_min_at_step: int | None = None  # if set, the decay that reaches the floor at this step (overrides)
    max_seconds: float = 15.0  # longer audio is cut into consecutive crops of at most this many seconds
    min_seconds: float = 2.0  # crops (and files) shorter than this are dropped, counted
    splits: tuple[str, ...] = ("train",)  # splits read from a prepared dataset (labels are ignored)
    freeze_feature_encoder: bool = False  # keep the conv front end fixed (faster on CPU)
    seed: int = 0  # seeds data order, masks, negatives, Gumbel noise (per step: resume is exact); 0..2**32-1
    save_every: int = 500  # updates between resumable checkpoints OUT/checkpoint-<step> (0 = none)
    keep_checkpoints: int = 2  # most recent checkpoints kept on disk
    log_every: int = 10  # updates between INFO log lines (the CSV gets every update)
    tensorboard: bool = False  # also write TensorBoard scalars to OUT/runs
    collapse_window: int = 20  # updates the collapse detector looks back over
    collapse_perplexity: float = 1.5  # warn when perplexity per codebook group stays below this (1 = one code)
    probe_crops: int = 8  # crops of a fixed probe batch scored before and after (0 = skip)

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        for name in ("max_steps", "batch_size", "grad_accum", "mask_time_length", "num_negatives", "collapse_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "min_masks", "probe_crops"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("weight_decay", "max_grad_norm", "diversity_weight", "adam_eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.mask_time_prob <= 1:
            raise ValueError(f"mask_time_prob must be in (0, 1], got {self.mask_time_prob}")
        if not self.logit_temperature > 0:
            raise ValueError(f"logit_temperature must be > 0, got {self.logit_temperature}")
        if not 0 < self.min_gumbel_temperature <= self.max_gumbel_temperature:
            raise ValueError(
                "min_gumbel_temperature must be in (0, max_gumbel_temperature="
                f"{self.max_gumbel_temperature}], got {self.min_gumbel_temperature}"
            )
        if not 0 < self.gumbel_decay <= 1:
            raise ValueError(f"gumbel_decay must be in (0, 1], got {self.gumbel_decay}")
        if self.gumbel_min_at_step is not None:
            if self.gumbel_min_at_step < 1:
                raise ValueError(f"gumbel_min_at_step must be >= 1 (or None), got {self.gumbel_min_at_step}")
            if self.gumbel_decay != _RECIPE_GUMBEL_DECAY:
                raise ValueError(
                    f"give gumbel_decay ({self.gumbel_decay}) or gumbel_min_at_step ({self.gumbel_min_at_step}), "
                    "not both: the second sets the decay"
                )
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"min_seconds must be in (0, max_seconds={self.max_seconds}], got {self.min_seconds}"
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not self.splits:
            raise ValueError("splits must name at least one split, e.g. ('train',)")
        if not self.collapse_perplexity >= 1:
            raise ValueError(f"collapse_perplexity must be >= 1 (per group), got {self.collapse_perplexity}")

    @property
    def decay(self) -> float:
        """The per-update Gumbel temperature factor actually used."""
        if self.gumbel_min_at_step is not None:
            return (self.min_gumbel_temperature / self.max_gumbel_temperature) ** (1.0 / self.gumbel_min_at_step)
        return self.gumbel_decay


def gumbel_temperature(step: int, config: PretrainConfig) -> float:
    """Gumbel-softmax temperature used for update `step` (0-based): max(T_max * decay**step, T_min)."""
    return max(config.max_gumbel_temperature * config.decay**step, config.min_gumbel_temperature)


def check_temperature_decay(config: PretrainConfig) -> str | None:
    """A warning text when the temperature barely leaves its maximum within the run (SpeechBrain #1503):
    less than a tenth of the way from T_max to T_min by the last update. None when the schedule is fine."""
    t_max, t_min = config.max_gumbel_temperature, config.min_gumbel_temperature
    if t_max == t_min:
        return None
    t_end = gumbel_temperature(config.max_steps - 1, config)
    if (t_max - t_end) >= 0.1 * (t_max - t_min):
        return None
    reach = "never" if config.decay >= 1 else f"at step {math.ceil(math.log(t_min / t_max) / math.log(config.decay))}"
    return (
        f"the Gumbel temperature only decays from {t_max:g} to {t_end:.4g} over {config.max_steps} updates "
        f"(decay {config.decay:g} per update reaches {t_min:g} {reach}); the quantizer stays soft and "
        f"noisy all run. Set gumbel_min_at_step (--gumbel-min-at-step, e.g. {max(1, int(0.8 * config.max_steps))}) "
        "or a smaller gumbel_decay"
    )


def detect_collapse(perplexities: Sequence[float], num_groups: int, window: int, threshold: float) -> bool:
    """True when the codevector perplexity per group stayed below `threshold` for the last `window`
    updates: the quantizer uses (almost) one codevector per group (transformers #14387)."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if len(perplexities) < window:
        return False
    return all(p / num_groups < threshold for p in perplexities[-window:])


# ---------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------
@dataclass
class InputStats:
    """Where the crops came from and what was dropped, with reasons."""

    files: int = 0  # audio files read
    dataset_rows: int = 0  # rows read from prepared datasets
    unreadable: int = 0  # files that could not be decoded (skipped)
    too_short: int = 0  # files/rows shorter than min_seconds (dropped)
    short_tails: int = 0  # trailing pieces under min_seconds cut off long audio (dropped)
    crops: int = 0  # crops kept
    seconds: float = 0.0  # audio in the kept crops
    unreadable_examples: list[str] = field(default_factory=list)  # the first few unreadable files, with why


def _dataset_audio(path: Path, splits: tuple[str, ...]) -> list[np.ndarray]:
    """The `audio` column (float32, 16 kHz: the prepared-dataset contract) of the chosen splits."""
    from datasets import Dataset, DatasetDict, load_from_disk

    if (path / "vocab").is_dir():
        from lrl.data.prepare import load_prepared

        ds, _ = load_prepared(path)
    else:  # any saved dataset with the same audio column
        ds = load_from_disk(str(path))
    if isinstance(ds, Dataset):
        ds = DatasetDict({"train": ds})
    present = [s for s in splits if s in ds]
    if not present:
        raise LrlError(f"{path}: none of the splits {list(splits)} is in the dataset (it has {list(ds)}); pass --split")
    out = []
    for split in present:
        feature = ds[split].features.get("audio")
        if feature is None or type(feature).__name__ not in ("List", "Sequence", "LargeList"):
            raise LrlError(
                f"{path} [{split}]: expected an `audio` column of float32 samples at 16 kHz (what `lrl data "
                f"prepare` writes), found {feature!r}; prepare the corpus with `lrl data prepare` first"
            )
        for row in ds[split].with_format("numpy", columns=["audio"]):
            out.append(np.asarray(row["audio"], dtype=np.float32))
    logger.info("%s: %d rows from split(s) %s (labels ignored)", path, len(out), ", ".join(present))
    return out


def collect_crops(sources: Sequence[str | Path], config: PretrainConfig) -> tuple[list[np.ndarray], InputStats]:
    """16 kHz float32 crops of `config.min_seconds`..`config.max_seconds` from prepared datasets, audio
    folders (searched recursively) and audio files. Long audio is cut into consecutive crops; short
    pieces are dropped and unreadable files skipped, all counted in the returned `InputStats`."""
    from lrl.core.audio import AudioError, load_audio

    stats = InputStats()
    max_len, min_len = int(config.max_seconds * SAMPLE_RATE), int(config.min_seconds * SAMPLE_RATE)
    crops: list[np.ndarray] = []

    def add(wav: np.ndarray) -> None:
        if len(wav) < min_len:
            stats.too_short += 1
            return
        for start in range(0, len(wav), max_len):
            piece = wav[start:start + max_len]
            if len(piece) < min_len:
                stats.short_tails += 1
                continue
            crops.append(piece)

    for src in sources:
        src = Path(src)
        if is_saved_dataset(src):
            for wav in _dataset_audio(src, config.splits):
                stats.dataset_rows += 1
                add(wav)
            continue
        if src.is_dir():
            files = list(iter_files(src, AUDIO_SUFFIXES))
            if not files:
                raise LrlError(f"{src}: no audio files ({', '.join(AUDIO_SUFFIXES)}) and not a prepared dataset")
        elif src.is_file():
            files = [src]
        else:
            raise LrlError(f"{src}: no such file or directory; expected audio files, folders or a prepared dataset")
        for path in files:
            try:
                wav = load_audio(path, SAMPLE_RATE)
            except AudioError as e:  # skip the file, count it, name the first few
                stats.unreadable += 1
                if len(stats.unreadable_examples) < 3:
                    stats.unreadable_examples.append(f"{path}: {type(e).__name__}: {e}")
                continue
            stats.files += 1
            add(wav)
    stats.crops = len(crops)
    stats.seconds = sum(len(c) for c in crops) / SAMPLE_RATE
    if stats.unreadable:
        logger.warning(
            "skipped %d unreadable audio file(s), e.g. %s", stats.unreadable, "; ".join(stats.unreadable_examples)
        )
    logger.info(
        "%d crops (%.1f min) from %d files and %d dataset rows; dropped %d shorter than %.1f s and %d short tails",
        stats.crops, stats.seconds / 60, stats.files, stats.dataset_rows, stats.too_short, config.min_seconds,
        stats.short_tails,
    )
    if not crops:
        raise LrlError(
            f"no usable audio: {stats.files} files/{stats.dataset_rows} rows read, {stats.too_short} shorter than "
            f"min_seconds={config.min_seconds}, {stats.unreadable} unreadable; lower --min-seconds or add audio"
        )
    return crops, stats


# ---------------------------------------------------------------------------------------------------
# model, batches
# ---------------------------------------------------------------------------------------------------
FreshSize = Literal["tiny-test", "tiny-small"]  # `lrl pretrain --fresh`: a random tiny model of that size
_FRESH = {"tiny-test": "test", "tiny-small": "small"}  # FreshSize -> lrl.models.checkpoints.TinySize


def _load_model(model: str | Path | None, fresh: str | None, config: PretrainConfig, allow_pickle: bool = False):
    """(Wav2Vec2ForPreTraining, Wav2Vec2FeatureExtractor) from a checkpoint or a fresh tiny config.
    Safetensors weights only unless `allow_pickle` (pickles can run code when loaded)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    from lrl.core.audio import default_feature_extractor
    from lrl.models.checkpoints import tiny_config

    if (model is None) == (fresh is None):
        raise ValueError("give exactly one of --model CKPT (a hub id or directory) or --fresh tiny-test|tiny-small")
    if fresh is not None:
        if fresh not in get_args(FreshSize):
            raise ValueError(f"--fresh must be one of {list(get_args(FreshSize))}, got {fresh!r}")
        torch.manual_seed(config.seed)
        net = Wav2Vec2ForPreTraining(tiny_config(_FRESH[fresh]))
        fe = default_feature_extractor()
        logger.info("fresh %s model, %.2fM parameters", fresh, sum(p.numel() for p in net.parameters()) / 1e6)
        return net, fe
    from lrl.models.checkpoints import check_local_weights, resolve_checkpoint

    model = resolve_checkpoint(model)
    local = Path(model)
    if local.is_dir():
        check_local_weights(local, allow_pickle)
    try:
        cfg = Wav2Vec2Config.from_pretrained(str(model))
        if cfg.mask_time_prob <= 0:  # no masked_spec_embed would be built, and pretraining needs it
            logger.info("%s has mask_time_prob=0; set to 0.05 so the model has its mask embedding", model)
            cfg.mask_time_prob = 0.05
        net, info = Wav2Vec2ForPreTraining.from_pretrained(
            str(model), config=cfg, use_safetensors=None if allow_pickle else True, output_loading_info=True,
            trust_remote_code=False, dtype=torch.float32,
        )
    except OSError as e:
        hint = "" if allow_pickle else "; only safetensors weights are loaded unless --allow-pickle"
        raise LrlError(
            f"cannot load a Wav2Vec2 checkpoint from {str(model)!r} ({e}). Expected a hub id or a directory "
            f"with config.json + model.safetensors{hint}"
        ) from e
    fresh_heads = sorted({k.split(".")[0] for k in info.get("missing_keys", [])})
    if fresh_heads:
        logger.warning(
            "%s lacks %s (a fine-tuned, not a pretraining, checkpoint?): they start random, so the early "
            "contrastive loss is high", model, ", ".join(fresh_heads),
        )
    if not (net.config.do_stable_layer_norm and net.config.feat_extract_norm == "layer"):
        raise LrlError(
            f"{model}: pretraining needs the layer-norm layout (do_stable_layer_norm=True, feat_extract_norm='layer', "
            f"as XLS-R, MMS and *-lv60 models have); got do_stable_layer_norm={net.config.do_stable_layer_norm}, "
            f"feat_extract_norm={net.config.feat_extract_norm!r}: group norm mixes padding into the features"
        )
    try:
        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(model))
    except OSError:
        logger.info("%s has no preprocessor_config.json: using 16 kHz, normalised, with attention masks", model)
        fe = default_feature_extractor()
    if fe.sampling_rate != SAMPLE_RATE:
        raise LrlError(f"{model}: feature extractor expects {fe.sampling_rate} Hz; lrl feeds {SAMPLE_RATE} Hz audio")
    return net, fe


def _apply_pretraining_config(net, config: PretrainConfig) -> dict:
    """Set the loss settings on the model config; returns the SpecAugment values to restore when saving."""
    saved = {k: getattr(net.config, k) for k in _SPEC_AUGMENT_FIELDS}
    net.config.apply_spec_augment = True  # otherwise the model ignores the masks we pass
    net.config.mask_feature_prob = 0.0  # pretraining masks time only
    net.config.num_negatives = config.num_negatives
    net.config.contrastive_logits_temperature = config.logit_temperature
    net.config.diversity_loss_weight = config.diversity_weight
    return saved


def _save_model(net, fe, out: Path, spec_augment: dict) -> None:
    """save_pretrained with the model's own SpecAugment settings (not pretraining's overrides)."""
    current = {k: getattr(net.config, k) for k in spec_augment}
    for k, v in spec_augment.items():
        setattr(net.config, k, v)
    try:
        net.save_pretrained(out)
        fe.save_pretrained(out)
    finally:
        for k, v in current.items():
            setattr(net.config, k, v)


def _micro_indices(n_crops: int, batch_size: int, micro: int, seed: int) -> np.ndarray:
    """Crop indices of micro-batch number `micro`: a fresh permutation per epoch, a function of (seed, micro)
    only, so a resumed run sees exactly the batches the uninterrupted one would have."""
    per_epoch = max(1, math.ceil(n_crops / batch_size))
    epoch, pos = divmod(micro, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_crops)
    return order[pos * batch_size:(pos + 1) * batch_size]


def make_batch(net, fe, crops: Sequence[np.ndarray], config: PretrainConfig, seed: Sequence[int]) -> dict:
    """Padded, normalised inputs plus transformers' own time masks and negatives (lrl.core.hf_transformers)
    drawn from a NumPy state seeded with `seed` (the global state is restored afterwards)."""
    import torch

    inputs = fe(
        list(crops), sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    batch_size, n_samples = inputs["input_values"].shape
    n_frames = int(conv_output_lengths(n_samples, net.config))
    frame_mask = frame_attention_mask(n_frames, inputs["attention_mask"], net.config, add_adapter=False)
    state = np.random.get_state()
    try:
        np.random.seed([int(s) for s in seed])
        mask = compute_mask_indices(
            (batch_size, n_frames), config.mask_time_prob, config.mask_time_length,
            attention_mask=frame_mask, min_masks=config.min_masks,
        )
        negatives = sample_negative_indices((batch_size, n_frames), config.num_negatives, mask_time_indices=mask)
    finally:
        np.random.set_state(state)
    return {
        "input_values": inputs["input_values"],
        "attention_mask": inputs["attention_mask"],
        "mask_time_indices": torch.tensor(mask, dtype=torch.bool),
        "sampled_negative_indices": torch.tensor(negatives, dtype=torch.long),
        "frames": int(frame_mask.sum()),
    }


def _forward(net, batch: dict):
    return net(
        batch["input_values"], attention_mask=batch["attention_mask"],
        mask_time_indices=batch["mask_time_indices"], sampled_negative_indices=batch["sampled_negative_indices"],
    )


def probe_metrics(net, batch: dict) -> dict[str, float]:
    """Contrastive loss per masked frame and codevector perplexity on a fixed batch (fixed masks and
    negatives) in eval mode: no dropout, no Gumbel noise (the quantizer takes its argmax), so values before
    and after training compare. Read the two together: distractors that quantize to the target's own code
    are masked out, so a collapsed codebook (perplexity ~ groups) also lowers the loss."""
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = _forward(net, batch)
    finally:
        net.train(was_training)
    n_masked = int(batch["mask_time_indices"].sum())
    return {"contrastive": float(out.contrastive_loss) / n_masked, "perplexity": float(out.codevector_perplexity)}


def probe_loss(net, batch: dict) -> float:
    """The contrastive loss of `probe_metrics`."""
    return probe_metrics(net, batch)["contrastive"]


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainResult:
    """What a run did, for the CLI summary and tests."""

    out: Path  # the output directory (final model + logs)
    start_step: int  # first update of this invocation (> 0 when resumed)
    steps: int  # updates completed in total
    inputs: InputStats  # crops and what was dropped
    first_contrastive: float  # mean contrastive loss per masked frame over this run's first updates (<= 10)
    last_contrastive: float  # the same over its last updates (<= 10)
    probe_before: float | None  # fixed-batch contrastive loss at the very start (of the first invocation)
    probe_after: float | None  # the same after the last update
    final_temperature: float  # Gumbel temperature of the last update
    final_perplexity: float  # codevector perplexity of the last update
    collapse_warned: bool  # the collapse detector fired during this invocation
    seconds: float  # wall time of this invocation


def _find_checkpoint(out: Path, resume: bool | str | Path) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is not True:
        ckpt = Path(resume)
        if not (ckpt / STATE_FILE).is_file():
            raise LrlError(f"{ckpt}: not a pretraining checkpoint (no trainer_state.json)")
        return ckpt
    found = complete_checkpoints(out)
    if not found:
        raise LrlError(f"--resume: no checkpoint-<step> with trainer_state.json under {out}; start without --resume")
    return found[-1][1]


def _save_checkpoint(out: Path, step: int, net, fe, spec_augment: dict, optimizer, scheduler, state: dict, keep: int) -> Path:
    """OUT/checkpoint-<step>: model, optimizer, scheduler and trainer_state.json, written to a temporary
    directory first and renamed, so a crash never leaves a half checkpoint that --resume would pick."""
    import torch

    final = out / f"checkpoint-{step}"
    check_finite_weights(net, str(final))
    tmp = out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _save_model(net, fe, tmp, spec_augment)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    prune_checkpoints(out, keep)
    logger.info("saved %s", final)
    return final


def _read_log(path: Path, before_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) < before_step]


def run_pretraining(
    sources: Sequence[str | Path],
    out: str | Path,
    config: PretrainConfig = PretrainConfig(),
    model: str | Path | None = None,
    fresh: str | None = None,
    resume: bool | str | Path = False,
    allow_pickle: bool = False,
) -> PretrainResult:
    """Continue wav2vec 2.0 pretraining of `model` (hub id or directory; or a `fresh` tiny one) on the audio
    in `sources`; write the model to `out` so `Wav2Vec2ForCTC.from_pretrained(out)` starts fine-tuning.
    `resume=True` continues from the newest OUT/checkpoint-<step> (a path picks one), schedule included.
    `allow_pickle` also loads pytorch_model.bin checkpoints (only from sources you trust). One run per `out`
    at a time (a lock); MAX_NONFINITE_IN_A_ROW non-finite updates in a row, or none finite at all, stop the
    run with an error and no model is written."""
    with run_lock(out, "pretrain"):
        return _run_pretraining(sources, Path(out), config, model, fresh, resume, allow_pickle)


def _run_pretraining(sources, out: Path, config: PretrainConfig, model, fresh, resume, allow_pickle) -> PretrainResult:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining, get_scheduler

    t0 = time.perf_counter()
    out = Path(out)
    ckpt = _find_checkpoint(out, resume)
    if ckpt is None and out.is_dir() and (any(out.glob("checkpoint-*")) or (out / "model.safetensors").exists()):
        raise LrlError(f"{out} already holds a pretraining run: pass --resume to continue it, or choose a new --out")

    crops, stats = collect_crops(sources, config)
    state: dict = {}
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        net = Wav2Vec2ForPreTraining.from_pretrained(str(ckpt), use_safetensors=True, dtype=torch.float32)
        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(ckpt))
        changed = {
            k: (v, getattr(config, k)) for k, v in state["config"].items()
            if k not in ("max_steps", "max_minutes", "save_every", "keep_checkpoints", "log_every", "tensorboard", "probe_crops")
            and hasattr(config, k) and _jsonable(getattr(config, k)) != v
        }
        if changed:
            logger.warning("resuming with settings that differ from the checkpoint's: %s", changed)
        if state.get("crops") != len(crops):
            logger.warning(
                "the checkpoint saw %s crops, this run has %d: batches will differ from the uninterrupted run",
                state.get("crops"), len(crops),
            )
        logger.info("resuming from %s at step %d", ckpt, state["step"])
        if model is not None or fresh is not None:
            logger.warning("--resume continues %s: --model/--fresh are ignored", ckpt)
    else:
        net, fe = _load_model(model, fresh, config, allow_pickle)
    spec_augment = _apply_pretraining_config(net, config)
    if config.freeze_feature_encoder:
        net.freeze_feature_encoder()
    min_frames = int(conv_output_lengths(int(config.min_seconds * SAMPLE_RATE), net.config))
    if min_frames <= config.mask_time_length:
        raise ValueError(
            f"min_seconds={config.min_seconds} gives {min_frames} frames, not more than mask_time_length="
            f"{config.mask_time_length}: raise --min-seconds or lower --mask-length"
        )

    params = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},  # biases, norms: no decay
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps)
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.max_steps
    )
    start = 0
    if ckpt is not None:
        try:
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
        except ValueError as e:
            raise LrlError(
                f"{ckpt}: its optimizer state does not fit this model's trainable parameters ({e}); resume with the "
                "same --freeze-feature-encoder setting as the interrupted run"
            ) from e
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        start = int(state["step"])

    warning = check_temperature_decay(config)
    if warning:
        logger.warning("%s", warning)

    probe = None
    probe_before = state.get("probe_before")
    if config.probe_crops:
        idx = np.random.default_rng([config.seed, 1]).permutation(len(crops))[: config.probe_crops]
        probe = make_batch(net, fe, [crops[i] for i in idx], config, seed=(config.seed, 2**31 - 1))
        if ckpt is None:
            probe_before = probe_loss(net, probe)
            logger.info("probe contrastive loss before: %.4f", probe_before)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pretrain_config.json", json.dumps(_jsonable(asdict(config)), indent=2))
    log_path = out / "pretrain_log.csv"
    kept = _read_log(log_path, start)
    log_file = open(log_path, "w", newline="", encoding="utf-8")
    writer = csv.DictWriter(log_file, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(kept)
    tb = _tensorboard(out) if config.tensorboard else None

    num_groups = net.config.num_codevector_groups
    ppl_history = [float(r["perplexity"]) for r in kept][-config.collapse_window:]
    collapse_warned = False
    nonfinite = 0
    rows: list[dict] = []
    net.train()
    try:
        from tqdm.auto import tqdm

        bar = tqdm(range(start, config.max_steps), desc="pretrain", unit="step", disable=None)
        for step in bar:
            row = _update(net, fe, crops, step, config, optimizer, scheduler, params)
            if not math.isfinite(row["loss"]):
                nonfinite += 1
                logger.warning("step %d: non-finite loss %s, update skipped (%d in a row)", step, row["loss"], nonfinite)
                if nonfinite >= MAX_NONFINITE_IN_A_ROW:
                    raise LrlError(
                        f"{nonfinite} updates in a row had a non-finite loss (last at step {step}): lower --lr, "
                        "raise --warmup, or check the audio for silence/clipping"
                    )
            else:
                nonfinite = 0
            rows.append(row)
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            log_file.flush()
            if tb is not None:
                for k in LOG_COLUMNS[1:]:
                    tb.add_scalar(f"pretrain/{k}", row[k], step)
            ppl_history = (ppl_history + [row["perplexity"]])[-config.collapse_window:]
            if not collapse_warned and detect_collapse(
                ppl_history, num_groups, config.collapse_window, config.collapse_perplexity
            ):
                collapse_warned = True
                logger.warning(
                    "codebook collapse: the codevector perplexity stayed below %.2g per group (%d groups x %d "
                    "codes) for %d updates up to step %d: the quantizer uses ~one code per group. Raise "
                    "--diversity-weight, lower --lr, or keep the Gumbel temperature up longer (transformers #14387)",
                    config.collapse_perplexity, num_groups, net.config.num_codevectors_per_group,
                    config.collapse_window, step,
                )
            if (step + 1) % config.log_every == 0 or step == start:
                logger.info(
                    "step %d: loss %.4f contrastive %.4f diversity %.4f perplexity %.1f temperature %.4f "
                    "masked %.2f lr %.3g", step, row["loss"], row["contrastive"], row["diversity"],
                    row["perplexity"], row["temperature"], row["masked_share"], row["lr"],
                )
            done = step + 1
            if config.save_every and done % config.save_every == 0 and done < config.max_steps:
                _save_checkpoint(
                    out, done, net, fe, spec_augment, optimizer, scheduler,
                    _state(done, config, len(crops), spec_augment, probe_before), config.keep_checkpoints,
                )
            if config.max_minutes and time.perf_counter() - t0 > 60 * config.max_minutes and done < config.max_steps:
                logger.info("time budget of %g min reached after %d updates: stopping", config.max_minutes, done)
                break
    finally:
        log_file.close()
        if tb is not None:
            tb.close()

    finite = [r for r in rows if math.isfinite(r["loss"])]
    if rows and not finite:
        raise LrlError(
            f"every update of this run ({len(rows)}) had a non-finite loss: nothing was learned, so no model is "
            f"written to {out}; check the audio for NaN/Inf samples or silence, lower --lr, raise --warmup"
        )
    probe_after = probe_loss(net, probe) if probe is not None else None
    check_finite_weights(net, str(out / "model.safetensors"))
    _save_model(net, fe, out, spec_augment)
    head = finite[: min(10, len(finite))]  # skipped (non-finite) updates are in the log, not in these means
    tail = finite[-min(10, len(finite)):]
    result = PretrainResult(
        out=out, start_step=start, steps=start + len(rows), inputs=stats,
        first_contrastive=float(np.mean([r["contrastive"] for r in head])) if head else float("nan"),
        last_contrastive=float(np.mean([r["contrastive"] for r in tail])) if tail else float("nan"),
        probe_before=probe_before, probe_after=probe_after,
        final_temperature=rows[-1]["temperature"] if rows else gumbel_temperature(max(0, start - 1), config),
        final_perplexity=rows[-1]["perplexity"] if rows else float("nan"),
        collapse_warned=collapse_warned, seconds=time.perf_counter() - t0,
    )
    summary = _jsonable(asdict(result))
    atomic_write_text(out / "pretrain_summary.json", json.dumps(summary, indent=2))
    logger.info("wrote %s (%d updates, %.0f s)", out, result.steps, result.seconds)
    return result


def _update(net, fe, crops, step: int, config: PretrainConfig, optimizer, scheduler, params) -> dict:
    """One optimizer update over `grad_accum` micro-batches; the log row. A non-finite loss skips the step."""
    import torch

    t0 = time.perf_counter()
    temperature = gumbel_temperature(step, config)
    net.set_gumbel_temperature(temperature)
    lr = optimizer.param_groups[0]["lr"]
    acc = dict(loss=0.0, contrastive=0.0, diversity=0.0, perplexity=0.0, masked=0, frames=0)
    for k in range(config.grad_accum):
        micro = step * config.grad_accum + k
        idx = _micro_indices(len(crops), config.batch_size, micro, config.seed)
        batch = make_batch(net, fe, [crops[i] for i in idx], config, seed=(config.seed, micro))
        n_masked = int(batch["mask_time_indices"].sum())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 1_000_003 + micro)  # Gumbel noise and dropout
            outputs = _forward(net, batch)
            # the model sums over masked frames: normalise per frame, then average the micro-batches
            (outputs.loss / n_masked / config.grad_accum).backward()
        acc["loss"] += outputs.loss.item() / n_masked / config.grad_accum
        acc["contrastive"] += outputs.contrastive_loss.item() / n_masked / config.grad_accum
        acc["diversity"] += outputs.diversity_loss.item() / n_masked / config.grad_accum
        acc["perplexity"] += outputs.codevector_perplexity.item() / config.grad_accum
        acc["masked"] += n_masked
        acc["frames"] += batch["frames"]
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if math.isfinite(acc["loss"]) and math.isfinite(grad_norm):
        optimizer.step()
        scheduler.step()
    else:  # skipped: the schedule still advances, so step count and LR stay aligned (torch would warn)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "step": step, "loss": acc["loss"] if math.isfinite(grad_norm) else float("nan"),
        "contrastive": acc["contrastive"], "diversity": acc["diversity"], "perplexity": acc["perplexity"],
        "temperature": temperature, "masked_share": acc["masked"] / max(1, acc["frames"]), "lr": lr,
        "grad_norm": grad_norm, "seconds": time.perf_counter() - t0,
    }


def _state(step: int, config: PretrainConfig, n_crops: int, spec_augment: dict, probe_before) -> dict:
    # RNG needs no saving: data order, masks, negatives and Gumbel noise derive from (seed, micro-batch)
    return {
        "step": step, "config": _jsonable(asdict(config)), "crops": n_crops, "spec_augment": spec_augment,
        "probe_before": probe_before, "seed": config.seed,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        logger.warning("TensorBoard logging is off (%s); install `tensorboard` for it", e)
        return None
    return SummaryWriter(str(out / "runs"))
