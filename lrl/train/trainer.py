"""CTC fine-tuning of Wav2Vec2 checkpoints on a prepared dataset with the Hugging Face Trainer: `train()` runs
one config (TOML/YAML + overrides) with dynamic batches, layer-wise LR, the freeze schedule, greedy dev
WER/CER, best checkpoint by WER, early stopping and resume, and leaves a loadable ASR model directory;
`CTCTrainer` is the Trainer subclass it drives. Imported only when training (torch, transformers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from lrl.core.constants import SAMPLE_RATE
from lrl.core.cpu import set_torch_threads
from lrl.core.io import LrlError
from lrl.data.shards import refuse_shard
from lrl.train import featcache
from lrl.train.accel import apply_to_model, plan_accel
from lrl.train.batching import BatchingConfig, DynamicBatchSampler
from lrl.train.callbacks import make_callbacks
from lrl.train.collate import CTCCollator
from lrl.train.config import CONFIG_FILE, TrainConfig, save_config
from lrl.train.freezing import FreezeScheduleCallback
from lrl.train.hf_trainer import prepare_sharded_loader
from lrl.train.metrics import argmax_logits, make_compute_metrics
from lrl.train.optim import LayerwiseLrConfig, layerwise_param_groups, make_lr_lambda
from lrl.train.report import CURVES_FILE, METRICS_FILE, plot_curves, write_model_card
from lrl.train.run_dir import (
    MAX_NONFINITE_IN_A_ROW,
    check_finite_weights,
    check_resume,
    last_complete_checkpoint,
    run_lock,
)

__all__ = ["CTCTrainer", "TrainResult", "train"]
logger = logging.getLogger(__name__)

# Longest dev/test clip scored inside training. Dev/test keep clips above the training max_duration (lrl.data.prepare
# EVAL_SPLITS); eval batches are eval_batch_size clips with attention memory growing with the square of the
# length (8 clips of 60 s: 3000 frames, ~4.6 GB of fp32 scores per layer for 16 heads). Longer ones are left
# out here, with a warning; `lrl evaluate` scores them in chunks.
EVAL_MAX_SECONDS = 60.0


def load_dataset_dir(path: str | Path):
    """(DatasetDict, Vocab) of a prepared dataset directory (`lrl data prepare`)."""
    from lrl.data.prepare import load_prepared

    return load_prepared(path)


# -- the Trainer ---------------------------------------------------------------------------------------
class CTCTrainer(Trainer):
    """Trainer with lrl's dynamic batches, layer-wise LR groups, LR schedules, an evaluation collator of its
    own (no augmentation, no conv cache) and skipping of non-finite losses (counted, logged as
    `nonfinite_skipped`; MAX_NONFINITE_IN_A_ROW of them in a row stop the run with an error)."""

    def __init__(self, *args, lrl_config: TrainConfig, durations, eval_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lrl_config = lrl_config
        self.durations = durations
        self.eval_collator = eval_collator  # None = data_collator for evaluation too
        self.nonfinite_skipped = 0
        self.nonfinite_in_a_row = 0
        self.finite_losses = 0  # training batches with a finite loss: none at all means nothing was learned
        self.batch_sampler = None

    def get_train_dataloader(self):
        self.batch_sampler = DynamicBatchSampler(
            self.durations, self.lrl_config.batching, self.args.world_size, self.args.process_index
        )
        logger.info(
            "dynamic batches: %d per rank per epoch, <= %.1f s of padded audio each, padding efficiency %.1f%%",
            len(self.batch_sampler), self.lrl_config.batching.max_seconds, 100 * self.batch_sampler.padding_efficiency,
        )
        loader = DataLoader(
            self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_num_workers > 0 and self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor if self.args.dataloader_num_workers > 0 else None,
        )
        return prepare_sharded_loader(self.accelerator, loader)  # the sampler already gives each rank its share

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation (dev during training, test at the end) with `eval_collator`: the Trainer builds every
        loader from `data_collator`, so it is swapped for the duration of this call."""
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            o = self.lrl_config.optim
            groups = layerwise_param_groups(
                self.model, LayerwiseLrConfig(o.lr, o.layer_decay, o.head_lr_mult, o.weight_decay)
            )
            self.optimizer = torch.optim.AdamW(
                groups, lr=o.lr, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """lrl's schedule (lrl.train.optim.make_lr_lambda: transformers' public warmup schedules or fairseq's
        tri-stage) over `num_training_steps` updates. Created once per Trainer, as lrl calls train() once."""
        if self.lr_scheduler is None:
            o = self.lrl_config.optim
            fn = make_lr_lambda(o.schedule, num_training_steps, o.warmup_steps, o.phase_ratio)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, fn)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = out[0] if return_outputs else out
        if model.training and not torch.isfinite(loss.detach()).all():
            self.nonfinite_skipped += 1
            self.nonfinite_in_a_row += 1
            logger.warning("non-finite loss at step %d: batch skipped (%d so far)", self.state.global_step, self.nonfinite_skipped)
            if self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                raise LrlError(
                    f"{self.nonfinite_in_a_row} training batches in a row had a non-finite loss (last at update "
                    f"{self.state.global_step}): the data holds NaN/Inf audio or the LR diverges; check the clips "
                    "(`lrl data prepare` skips non-finite ones), lower the LR, and resume from a checkpoint or start again"
                )
            # an exact zero that still reaches every trainable parameter (DDP needs the same backward on all ranks)
            loss = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
            return (loss, out[1]) if return_outputs else loss
        if model.training:
            self.nonfinite_in_a_row = 0
            self.finite_losses += 1
        return out

    def log(self, logs: dict, *args, **kwargs):
        if "loss" in logs:
            logs["nonfinite_skipped"] = self.nonfinite_skipped
            top = f"layer.{self.model.config.num_hidden_layers - 1}"
            lrs = [g["lr"] for g in self.optimizer.param_groups if g.get("name") == top]
            if lrs:  # report the top layer's LR (the configured peak), not the first group's
                logs["learning_rate"] = lrs[0]
        super().log(logs, *args, **kwargs)


# -- running -------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    global_step: int
    metrics: dict  # final dev (eval_*) and test (test_*) metrics
    best_checkpoint: str | None
    nonfinite_skipped: int


def _spec_augment_kwargs(cfg: TrainConfig, train_hours: float, min_samples: int) -> dict:
    """Wav2Vec2Config masking fields of the chosen SpecAugment preset, clamped to the shortest clip."""
    if cfg.model.spec_augment == "checkpoint":
        return {}
    from lrl.augment.specaugment import SpecAugmentConfig
    from lrl.models.checkpoints import read_checkpoint_config

    if cfg.model.spec_augment == "auto":
        spec = SpecAugmentConfig.for_hours(train_hours)
    else:
        spec = SpecAugmentConfig.preset(cfg.model.spec_augment)
    model_config = read_checkpoint_config(cfg.model.checkpoint)
    spec = spec.validate_for(model_config, min_samples)
    logger.info("SpecAugment %s: %s", spec.name, spec.to_model_kwargs())
    return spec.to_model_kwargs()


def _make_augmenter(cfg: TrainConfig):
    if cfg.data.augment == "none":
        return None
    from lrl.augment.wave import WaveAugmentConfig, WaveAugmenter

    return WaveAugmenter(WaveAugmentConfig.preset(cfg.data.augment), seed=cfg.seed)


def _by_duration(ds, name: str = "dev"):
    """The split sorted by duration (evaluation batches then need little padding), without clips longer than
    EVAL_MAX_SECONDS (counted in a warning)."""
    d = np.asarray(ds["duration"], dtype=np.float64)
    n_long = int((d > EVAL_MAX_SECONDS).sum())
    if n_long:
        logger.warning("%s: %d of %d clips are longer than %g s and are left out of the evaluation inside training "
                       "(memory); `lrl evaluate` scores every clip, long ones in chunks", name, n_long, len(d), EVAL_MAX_SECONDS)
    return ds.select([i for i in np.argsort(d, kind="stable").tolist() if d[i] <= EVAL_MAX_SECONDS])


def _resolve_recipe(cfg: TrainConfig, durations: list[float], world: int) -> tuple[TrainConfig, dict]:
    """Fill the config's "auto" keys from the recipe for this start and this much data (lrl.train.recipes)."""
    from lrl.models.checkpoints import read_checkpoint_config
    from lrl.train.recipes import resolve_recipe

    planned = cfg.optim.max_steps or None
    if planned is None:  # epochs: the updates one epoch packs into, times the epochs
        planned = int(cfg.optim.epochs * estimate_steps_per_epoch(durations, cfg.batching, world) / cfg.optim.grad_accum)
    cfg, note = resolve_recipe(cfg, read_checkpoint_config(cfg.model.checkpoint), sum(durations) / 3600, planned)
    logger.info("recipe %s (%s): %s", note["recipe"], note["why"],
                ", ".join(f"{k}={v}" for k, v in note["set"].items()) or "every key set explicitly")
    return cfg, note


def _feature_cache_blocker(cfg: TrainConfig, model_config, durations: list[float], world: int) -> str | None:
    """Why this run cannot use lrl.train.featcache (or should not: too short, too big), or None."""
    total = sum(durations)
    epochs = None
    if cfg.optim.max_steps > 0:  # batches the updates take, over the batches one epoch packs into
        epochs = cfg.optim.max_steps * cfg.optim.grad_accum / max(1, estimate_steps_per_epoch(durations, cfg.batching))
    elif cfg.optim.epochs:
        epochs = float(cfg.optim.epochs)
    blocker = featcache.cache_blocker(cfg.freeze.freeze_feature_encoder, cfg.freeze.unfreeze_conv_at,
                                      cfg.data.augment, world, epochs, model_config.feat_extract_norm,
                                      torch.cuda.device_count())
    need = featcache.estimate_bytes(model_config, int(total * SAMPLE_RATE))
    if blocker is None and need > cfg.data.cache_max_gb * 2**30:
        blocker = f"it would take {need / 2**30:.1f} GiB (data.cache_max_gb={cfg.data.cache_max_gb:g})"
    return blocker


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune `cfg.model.checkpoint` with CTC on `cfg.data.path`; write everything to `cfg.output_dir`."""
    if not cfg.data.path:
        raise LrlError("no dataset: set data.path (--data DIR) to a directory written by `lrl data prepare`")
    refuse_shard(cfg.data.path, "train on")  # one shard of n: 1/n of the train rows and 1/n of dev's scores
    if not cfg.model.checkpoint:
        raise LrlError("no starting checkpoint: set model.checkpoint (--checkpoint HUB_ID_OR_DIR); `lrl train init-tiny` writes a small one")
    if not cfg.output_dir:
        raise LrlError("no output directory: set output_dir (--out DIR)")
    out = Path(cfg.output_dir)
    with run_lock(out, "train run"):  # one run per output directory; a failed start leaves no empty --out
        return _train(cfg, out)


def _train(cfg: TrainConfig, out: Path) -> TrainResult:
    from lrl.models.checkpoints import load_for_ctc, transfer_head

    world = int(os.environ.get("WORLD_SIZE", "1"))

    resume_from = None
    if out.is_dir() and any(out.glob("checkpoint-*")):
        if not cfg.resume:
            raise LrlError(f"{out} already holds checkpoints: pass --resume to continue that run, or choose another --out")
        resume_from = last_complete_checkpoint(out)
        logger.info("resuming from %s", resume_from)
    elif cfg.resume:
        (logger.warning if (out / CONFIG_FILE).is_file() else logger.info)(
            "--resume: no complete checkpoint in %s yet, starting from the beginning", out)

    dsd, vocab = load_dataset_dir(cfg.data.path)
    for split in (cfg.data.train_split,):
        if split not in dsd:
            raise LrlError(f"{cfg.data.path} has no {split!r} split (it has {sorted(dsd)}): set data.train_split")
    train_ds = dsd[cfg.data.train_split]
    if len(train_ds) == 0:
        raise LrlError(f"the {cfg.data.train_split!r} split of {cfg.data.path} is empty: expected training clips; "
                       "prepare the corpus again (see its summary.json for why rows were skipped) or set data.train_split")
    mix_note = None
    if cfg.data.extra_path:  # labelled + at most extra_weight x its hours of the extra set (lrl.train.mix)
        from lrl.train.mix import mix_extra

        train_ds, mix_note = mix_extra(train_ds, vocab, cfg.data.extra_path, cfg.data.extra_weight, cfg.seed)
    train_rows = train_ds
    durations = [float(d) for d in train_ds["duration"]]
    if resume_from is not None:  # before anything is written: a refused resume leaves the run as it was
        check_resume(out, resume_from, out / CONFIG_FILE, vocab.token_to_id, {
            "model.checkpoint": cfg.model.checkpoint, "model.adapter_lang": cfg.model.adapter_lang,
            "data.path": cfg.data.path, "train_clips": len(durations)})
    cfg, recipe_note = _resolve_recipe(cfg, durations, world)
    eval_ds = None
    if cfg.data.eval_split and cfg.data.eval_split in dsd and len(dsd[cfg.data.eval_split]):
        eval_ds = _by_duration(dsd[cfg.data.eval_split], cfg.data.eval_split)
        if cfg.data.max_eval_clips and len(eval_ds) > cfg.data.max_eval_clips:
            eval_ds = eval_ds.select(range(cfg.data.max_eval_clips))
        eval_ds = eval_ds if len(eval_ds) else None
    elif cfg.data.eval_split:
        logger.warning("no %r split in %s: training without evaluation or best-checkpoint selection",
                       cfg.data.eval_split, cfg.data.path)
    cols = ["audio", "text"]
    train_ds = train_ds.select_columns(cols).with_format("numpy")
    if eval_ds is not None:
        eval_ds = eval_ds.select_columns(cols).with_format("numpy")

    processor = vocab.to_processor(SAMPLE_RATE)
    tokenizer = processor.tokenizer
    threads, threads_note = set_torch_threads(cfg.threads)  # lrl.core.cpu: 0 = from the CPUs free right now
    torch.manual_seed(cfg.seed)
    overrides = dict(layerdrop=cfg.model.layerdrop, hidden_dropout=cfg.model.hidden_dropout,
                     final_dropout=cfg.model.final_dropout)
    overrides.update(_spec_augment_kwargs(cfg, sum(durations) / 3600, int(min(durations) * SAMPLE_RATE)))
    model = load_for_ctc(
        cfg.model.checkpoint, len(tokenizer), tokenizer.pad_token_id, cfg.model.allow_pickle,
        adapter_attn_dim=cfg.model.adapter_attn_dim if cfg.model.adapter_lang else None,
        attn_implementation=cfg.model.attn_implementation, **overrides,
    )
    if cfg.model.init_head_from:
        transfer_head(model, vocab.tokens, cfg.model.init_head_from, cfg.model.allow_pickle)
    if cfg.model.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accel = plan_accel(cfg)  # precision, dataloader workers and pinning, attention kernel, torch.compile
    apply_to_model(model, accel)
    freeze_cb = FreezeScheduleCallback(model, cfg.freeze)
    collator = CTCCollator(vocab, _make_augmenter(cfg))
    eval_collator = CTCCollator(vocab)
    cache, cache_note = None, "off (data.cache_features=false)"
    if cfg.data.cache_features:
        cache_note = _feature_cache_blocker(cfg, model.config, durations, world)
        if cache_note is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"  # the Trainer moves it there anyway
            cache = featcache.build_feature_cache(model.to(device), train_ds, durations, eval_collator)
            collator = featcache.CachedFeatureCollator(cache, eval_collator)
            rows = train_rows.select_columns(["text"])
            train_ds = rows.add_column("row", np.arange(len(rows))).with_format("numpy")
            cache_note = f"{len(durations)} clips, {cache.nbytes / 2**20:.0f} MB, built in {cache.build_seconds:.1f} s"
        else:
            logger.info("conv feature cache off: %s", cache_note)

    out.mkdir(parents=True, exist_ok=True)
    has_eval = eval_ds is not None
    save_steps = cfg.eval.save_steps or cfg.eval.eval_steps
    on_cpu = not torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.optim.max_steps if cfg.optim.max_steps > 0 else -1,
        num_train_epochs=cfg.optim.epochs if cfg.optim.max_steps == 0 else 1,
        per_device_train_batch_size=1,  # unused: batches come from lrl.train.batching
        per_device_eval_batch_size=cfg.eval.eval_batch_size,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        learning_rate=cfg.optim.lr,
        max_grad_norm=cfg.optim.max_grad_norm,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval.eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.eval.save_total_limit or None,
        load_best_model_at_end=has_eval,
        metric_for_best_model="wer" if has_eval else None,
        greater_is_better=False if has_eval else None,
        logging_steps=cfg.eval.logging_steps,
        logging_first_step=True,
        report_to=["tensorboard"],
        use_cpu=on_cpu,
        ddp_backend="gloo" if (on_cpu and world > 1) else None,
        ddp_find_unused_parameters=True if world > 1 else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        **accel.training_args(),
        disable_tqdm=False,
    )
    callbacks = [freeze_cb, *make_callbacks(cfg, out, cache.build_seconds if cache is not None else 0.0)]
    if has_eval and cfg.eval.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.eval.early_stopping_patience))
    # evaluation (dev during training, test at the end even without a dev split) needs neither augmentation
    # nor the conv cache: eval_collator
    trainer = CTCTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=processor, compute_metrics=make_compute_metrics(tokenizer) if has_eval else None,
        preprocess_logits_for_metrics=argmax_logits, callbacks=callbacks, lrl_config=cfg, durations=durations,
        eval_collator=eval_collator,
    )
    if args.process_index == 0:
        save_config(cfg, out, {"vocab_size": len(tokenizer), "train_clips": len(durations),
                               "train_hours": round(sum(durations) / 3600, 4), "world_size": world,
                               "feature_cache": cache_note, "recipe": recipe_note,
                               "threads": f"{threads}: {threads_note}", "accelerator": accel.to_dict(),
                               "spec_augment": {k: v for k, v in overrides.items() if k.startswith("mask_")},
                               **({"extra_data": mix_note} if mix_note is not None else {})})
    with featcache.cached_front_end(model) if cache is not None else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=resume_from)
    if trainer.nonfinite_skipped and not trainer.finite_losses:
        raise LrlError(
            f"every training batch had a non-finite loss ({trainer.nonfinite_skipped} skipped): nothing was learned, "
            f"so no model is written to {out}; check the clips for NaN/Inf audio and lower the LR"
        )

    metrics: dict = {}
    if has_eval:
        metrics.update(trainer.evaluate())
    if cfg.data.test_split and cfg.data.test_split in dsd and len(dsd[cfg.data.test_split]):
        test_ds = _by_duration(dsd[cfg.data.test_split], cfg.data.test_split).select_columns(cols).with_format("numpy")
        if not has_eval:
            trainer.compute_metrics = make_compute_metrics(tokenizer)
        if len(test_ds):
            metrics.update(trainer.evaluate(test_ds, metric_key_prefix="test"))
    if trainer.is_world_process_zero():
        check_finite_weights(trainer.model, str(out / "model.safetensors"))
        trainer.save_model(str(out))
        vocab.normalizer.save(out)
        if cfg.model.adapter_lang:
            save_adapter(trainer.model, out, cfg.model.adapter_lang)
        plot_curves(out / METRICS_FILE, out / CURVES_FILE)
        write_model_card(out, cfg, metrics, trainer.state, freeze_cb.history, trainer.nonfinite_skipped)
    return TrainResult(out, trainer.state.global_step, metrics, trainer.state.best_model_checkpoint,
                       trainer.nonfinite_skipped)


def save_adapter(model, out: Path, lang: str) -> Path:
    """Write the adapter weights + head as adapter.<lang>.safetensors (what Wav2Vec2ForCTC.load_adapter reads)."""
    from safetensors.torch import save_file

    from lrl.core.hf_transformers import adapter_state_dict

    path = out / f"adapter.{lang}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter_state_dict(model).items()}, str(path))
    logger.info("wrote %s", path)
    return path


def estimate_steps_per_epoch(durations, batching: BatchingConfig, world: int = 1) -> int:
    from lrl.core.batching import pack_batches

    return math.ceil(len(pack_batches(durations, batching.max_seconds, batching.max_batch_size, batching.seed)) / world)
