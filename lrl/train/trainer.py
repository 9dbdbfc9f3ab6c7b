"""CTC fine-tuning of Wav2Vec2 checkpoints on a prepared dataset with the Hugging Face Trainer: one config
per run (TOML/YAML + overrides), dynamic batches, layer-wise LR, the freeze schedule, greedy dev WER/CER,
best checkpoint by WER, early stopping, resume; the output directory is a loadable ASR model with its
processor, normaliser, resolved config, metrics CSV, TensorBoard logs, curves and a model card.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lrl.core.constants import SAMPLE_RATE
from lrl.core.cpu import set_torch_threads
from lrl.core.io import LrlError, atomic_write_text
from lrl.train import featcache
from lrl.train.batching import BatchingConfig
from lrl.train.config import (
    CONFIG_FILE,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    load_config,
    parse_overrides,
    save_config,
)
from lrl.train.schedule import LayerwiseLrConfig

__all__ = [  # the config names are re-exported: `from lrl.train.trainer import TrainConfig, load_config` keeps working
    "CONFIG_FILE", "CTCCollator", "DataConfig", "EvalConfig", "ModelConfig", "OptimConfig", "TrainConfig",
    "TrainResult", "load_config", "make_compute_metrics", "parse_overrides", "save_config", "train",
]
logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
CURVES_FILE = "training_curves.png"
BLANK_WER = 0.999  # a dev WER at or above this with (almost) empty predictions = the all-blank plateau
# Longest dev/test clip scored inside training. Dev/test keep clips above the training max_duration (lrl.data.prepare
# EVAL_SPLITS); eval batches are eval_batch_size clips with attention memory growing with the square of the
# length (8 clips of 60 s: 3000 frames, ~4.6 GB of fp32 scores per layer for 16 heads). Longer ones are left
# out here, with a warning; `lrl evaluate` scores them in chunks.
EVAL_MAX_SECONDS = 60.0
# [UNK] as one character when scoring, as `lrl evaluate` writes it (U+2047) in hypotheses; in references it
# stands for a character the vocabulary lacks (U+FFFD), so it never matches and counts as one error.
HYP_UNK, REF_UNK = "\u2047", "\ufffd"


# -- data --------------------------------------------------------------------------------------------
def load_dataset_dir(path: str | Path):
    """(DatasetDict, Vocab) of a prepared dataset directory (`lrl data prepare`)."""
    from lrl.data.prepare import load_prepared

    return load_prepared(path)


class CTCCollator:
    """Pads a list of {"audio", "text"} rows into input_values (per-clip zero-mean unit-variance, as the
    Wav2Vec2 feature extractor does), attention_mask and labels (-100 = ignored). Give an augmenter to
    the training collator only; each dataloader worker and rank draws from its own stream."""

    def __init__(self, vocab, augmenter=None) -> None:
        self.t2i = vocab.token_to_id
        self.unk = self.t2i["[UNK]"]
        self.delim = self.t2i["|"]
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

        ids = [[self.delim if ch == " " else self.t2i.get(ch, self.unk) for ch in str(r["text"])] for r in rows]
        m = max(1, max(len(t) for t in ids))
        labels = np.full((len(ids), m), -100, dtype=np.int64)
        for i, t in enumerate(ids):
            labels[i, : len(t)] = t
        return torch.from_numpy(labels)


# -- metrics -------------------------------------------------------------------------------------------
def make_compute_metrics(tokenizer):
    """compute_metrics for the Trainer: greedy CTC decoding (argmax ids come from
    `preprocess_logits_for_metrics`), WER and CER with jiwer on the normalised text."""
    import jiwer

    pad = tokenizer.pad_token_id

    def compute_metrics(pred) -> dict:
        ids = np.asarray(pred.predictions)
        ids = np.where(ids < 0, pad, ids)
        labels = np.asarray(pred.label_ids)
        labels = np.where(labels < 0, pad, labels)
        unk = tokenizer.unk_token
        hyps = [h.replace(unk, HYP_UNK) for h in tokenizer.batch_decode(ids)]
        refs = [r.replace(unk, REF_UNK) for r in tokenizer.batch_decode(labels, group_tokens=False)]
        pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
        if not pairs:
            return {"wer": 1.0, "cer": 1.0, "blank_rate": 1.0}
        refs, hyps = [p[0] for p in pairs], [p[1] for p in pairs]
        blank = sum(not h.strip() for h in hyps) / len(hyps)
        return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "blank_rate": blank}

    return compute_metrics


def _argmax_logits(logits, labels):
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def warn_if_collapsed(metrics: dict, step: int, cfg: TrainConfig) -> bool:
    """Warn (and return True) when predictions collapsed to all-blank: WER ~1.0 and mostly empty output."""
    wer = metrics.get("eval_wer", metrics.get("wer"))
    blank = metrics.get("eval_blank_rate", metrics.get("blank_rate", 0.0))
    if wer is None or wer < BLANK_WER or blank < 0.9:
        return False
    logger.warning(
        "step %d: dev WER %.3f with %.0f%% empty predictions: the model outputs only blanks. Usual causes: "
        "the LR is too low or too high (lr=%s; try 3e-5..3e-4 for pretrained checkpoints, ~1e-3 for tiny ones), "
        "warmup not finished (warmup_steps=%s) or too short, too few updates so far, or a vocabulary/case "
        "mismatch between the transcripts and the tokenizer (check `lrl vocab audit`).",
        step, wer, 100 * blank, cfg.optim.lr, cfg.optim.warmup_steps,
    )
    return True


# -- the Trainer ---------------------------------------------------------------------------------------
def _make_trainer_class():
    import torch
    from transformers import Trainer

    from lrl.train.batching import DynamicBatchSampler
    from lrl.train.schedule import layerwise_param_groups, make_lr_lambda

    class CTCTrainer(Trainer):
        """Trainer with lrl's dynamic batches, layer-wise LR groups, LR schedules and skipping of
        non-finite losses (counted, logged as `nonfinite_skipped`)."""

        def __init__(self, *args, lrl_config: TrainConfig, durations, **kwargs):
            super().__init__(*args, **kwargs)
            self.lrl_config = lrl_config
            self.durations = durations
            self.nonfinite_skipped = 0
            self.batch_sampler = None

        def get_train_dataloader(self):
            from torch.utils.data import DataLoader

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
            )
            loader = self.accelerator.prepare(loader)
            # the sampler already gives each rank its share: make accelerate's shard wrapper a passthrough
            bs = getattr(loader, "batch_sampler", None)
            if bs is not None and getattr(bs, "batch_sampler", None) is self.batch_sampler:
                bs.num_processes, bs.process_index = 1, 0
            return loader

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
            if self.lr_scheduler is None:
                o = self.lrl_config.optim
                fn = make_lr_lambda(o.schedule, num_training_steps, o.warmup_steps, o.phase_ratio)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, fn)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            if model.training and not torch.isfinite(loss.detach()).all():
                self.nonfinite_skipped += 1
                logger.warning("non-finite loss at step %d: batch skipped (%d so far)", self.state.global_step, self.nonfinite_skipped)
                # an exact zero that still reaches every trainable parameter (DDP needs the same backward on all ranks)
                loss = sum((p * 0).sum() for p in model.parameters() if p.requires_grad)
                return (loss, out[1]) if return_outputs else loss
            return out

        def log(self, logs: dict, *args, **kwargs):
            if "loss" in logs:
                logs["nonfinite_skipped"] = self.nonfinite_skipped
                top = f"layer.{self.model.config.num_hidden_layers - 1}"
                lrs = [g["lr"] for g in self.optimizer.param_groups if g.get("name") == top]
                if lrs:  # report the top layer's LR (the configured peak), not the first group's
                    logs["learning_rate"] = lrs[0]
            super().log(logs, *args, **kwargs)

    return CTCTrainer


def _make_callbacks(cfg: TrainConfig, out: Path, spent_seconds: float = 0.0):
    from transformers import TrainerCallback

    class RunLogCallback(TrainerCallback):
        """metrics.csv rows and the all-blank warning."""

        def __init__(self) -> None:
            self.path = out / METRICS_FILE
            self.fields = ["step", "epoch", "loss", "learning_rate", "grad_norm", "eval_loss", "eval_wer", "eval_cer",
                           "eval_blank_rate", "nonfinite_skipped", "elapsed_s"]
            self.t0 = time.perf_counter()
            self.collapsed = 0
            self.done = False  # after training, the final dev/test evaluations go to the card, not the curve

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.done = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or self.done:
                return
            if not any(k in logs for k in self.fields[2:]):
                return  # e.g. the end-of-training summary
            row = {"step": state.global_step, **{k: logs.get(k, "") for k in self.fields[1:]}}
            row["elapsed_s"] = round(time.perf_counter() - self.t0, 2)
            if row["epoch"] == "":
                row["epoch"] = state.epoch
            new = not self.path.exists()
            with self.path.open("a", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                if new:
                    w.writeheader()
                w.writerow(row)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and state.is_world_process_zero and "eval_wer" in metrics:
                self.collapsed += warn_if_collapsed(metrics, state.global_step, cfg)

    callbacks = [RunLogCallback()]
    if cfg.max_minutes:
        callbacks.append(TimeBudgetCallback(cfg.max_minutes, spent_seconds))
    return callbacks


def TimeBudgetCallback(minutes: float, spent_seconds: float = 0.0):  # noqa: N802 - a factory standing in for the class
    """A callback that stops training after `minutes` of wall-clock time and re-fits the LR schedule's
    horizon (`total` of lrl.train.schedule's cosine/linear factors) to the updates the budget allows, from the
    measured time per update, so a budgeted run still warms up, peaks and decays. `spent_seconds` (work
    done before training, such as building the conv feature cache) comes out of the budget."""
    from transformers import TrainerCallback

    class _Cb(TrainerCallback):
        def __init__(self) -> None:
            self.budget = max(0.0, 60.0 * minutes - spent_seconds)
            self.t0 = time.perf_counter()
            self.step0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.perf_counter(), state.global_step

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            elapsed = time.perf_counter() - self.t0
            done = state.global_step - self.step0
            if done >= 5 and lr_scheduler is not None:
                fits = state.global_step + int(max(0.0, self.budget - elapsed) * done / elapsed)
                for fn in {id(f): f for f in getattr(lr_scheduler, "lr_lambdas", [])}.values():
                    if hasattr(fn, "total") and hasattr(fn, "warmup"):
                        fn.total = max(fn.warmup + 1, min(state.max_steps, fits))
            if elapsed >= self.budget:
                logger.info("time budget of %g min spent after %d updates: stopping", minutes, state.global_step)
                control.should_training_stop = True
                control.should_save = True
            return control

    return _Cb()


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


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint-N of `out` that was completely written (trainer_state.json is saved last).
    Partial ones (a run killed while saving) are removed with a warning."""
    import shutil

    ckpts = sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                   key=lambda p: int(p.name[11:]), reverse=True)
    for p in ckpts:
        if (p / "trainer_state.json").is_file():
            return str(p)
        if int(os.environ.get("RANK", "0")) == 0:
            logger.warning("%s was not completely written (the run stopped while saving): removing it", p)
            shutil.rmtree(p, ignore_errors=True)
    return None


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
    import torch

    blocker = featcache.cache_blocker(cfg.freeze.freeze_feature_encoder, cfg.freeze.unfreeze_conv_at,
                                      cfg.data.augment, world, epochs, model_config.feat_extract_norm,
                                      torch.cuda.device_count())
    need = featcache.estimate_bytes(model_config, int(total * SAMPLE_RATE))
    if blocker is None and need > cfg.data.cache_max_gb * 2**30:
        blocker = f"it would take {need / 2**30:.1f} GiB (data.cache_max_gb={cfg.data.cache_max_gb:g})"
    return blocker


def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune `cfg.model.checkpoint` with CTC on `cfg.data.path`; write everything to `cfg.output_dir`."""
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    from lrl.models.checkpoints import load_for_ctc, transfer_head
    from lrl.train.schedule import FreezeScheduleCallback

    if not cfg.data.path:
        raise LrlError("no dataset: set data.path (--data DIR) to a directory written by `lrl data prepare`")
    if not cfg.model.checkpoint:
        raise LrlError("no starting checkpoint: set model.checkpoint (--checkpoint HUB_ID_OR_DIR); `lrl train init-tiny` writes a small one")
    if not cfg.output_dir:
        raise LrlError("no output directory: set output_dir (--out DIR)")
    out = Path(cfg.output_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))

    resume_from = None
    if out.is_dir() and any(out.glob("checkpoint-*")):
        if not cfg.resume:
            raise LrlError(f"{out} already holds checkpoints: pass --resume to continue that run, or choose another --out")
        resume_from = last_complete_checkpoint(out)
        logger.info("resuming from %s", resume_from)
    elif cfg.resume:
        logger.info("--resume: no checkpoint in %s yet, starting from the beginning", out)

    dsd, vocab = load_dataset_dir(cfg.data.path)
    for split in (cfg.data.train_split,):
        if split not in dsd:
            raise LrlError(f"{cfg.data.path} has no {split!r} split (it has {sorted(dsd)}): set data.train_split")
    train_ds = dsd[cfg.data.train_split]
    if len(train_ds) == 0:
        raise LrlError(f"the {cfg.data.train_split!r} split of {cfg.data.path} is empty")
    durations = [float(d) for d in train_ds["duration"]]
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
        adapter_attn_dim=cfg.model.adapter_attn_dim if cfg.model.adapter_lang else None, **overrides,
    )
    if cfg.model.init_head_from:
        transfer_head(model, vocab.tokens, cfg.model.init_head_from, cfg.model.allow_pickle)
    if cfg.model.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
            rows = dsd[cfg.data.train_split].select_columns(["text"])
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
        dataloader_num_workers=cfg.data.num_workers,
        remove_unused_columns=False,
        label_names=["labels"],
        fp16=cfg.precision == "fp16",
        bf16=cfg.precision == "bf16",
        disable_tqdm=False,
    )
    callbacks = [freeze_cb, *_make_callbacks(cfg, out, cache.build_seconds if cache is not None else 0.0)]
    if has_eval and cfg.eval.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.eval.early_stopping_patience))
    Trainer = _make_trainer_class()
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=processor, compute_metrics=make_compute_metrics(tokenizer) if has_eval else None,
        preprocess_logits_for_metrics=_argmax_logits, callbacks=callbacks, lrl_config=cfg, durations=durations,
    )
    # evaluation (dev during training, test at the end even without a dev split) needs neither augmentation
    # nor the conv cache: Trainer uses data_collator for both, so swap it per call
    _orig_eval_loader = trainer.get_eval_dataloader

    def _eval_loader(eval_dataset=None):
        trainer.data_collator = eval_collator
        try:
            return _orig_eval_loader(eval_dataset)
        finally:
            trainer.data_collator = collator

    trainer.get_eval_dataloader = _eval_loader
    if args.process_index == 0:
        save_config(cfg, out, {"vocab_size": len(tokenizer), "train_clips": len(durations),
                               "train_hours": round(sum(durations) / 3600, 4), "world_size": world,
                               "feature_cache": cache_note, "recipe": recipe_note,
                               "threads": f"{threads}: {threads_note}",
                               "spec_augment": {k: v for k, v in overrides.items() if k.startswith("mask_")}})
    with featcache.cached_front_end(model) if cache is not None else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=resume_from)

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

    path = out / f"adapter.{lang}.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in model._get_adapters().items()}, str(path))
    logger.info("wrote %s", path)
    return path


# -- reports --------------------------------------------------------------------------------------------
def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_curves(metrics_csv: Path, png: Path) -> Path | None:
    """training_curves.png: train loss (left) and dev WER/CER (right) against updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_metrics(metrics_csv)
    if not rows:
        return None

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    x, y = series("loss")
    a.plot(x, y, label="train loss")
    x, y = series("eval_loss")
    if x:
        a.plot(x, y, "o-", label="dev loss")
    a.set_xlabel("update")
    a.set_ylabel("CTC loss")
    a.set_yscale("log")
    a.legend()
    for key, label in (("eval_wer", "dev WER"), ("eval_cer", "dev CER")):
        x, y = series(key)
        if x:
            b.plot(x, y, "o-", label=label)
    b.set_xlabel("update")
    b.set_ylim(0, max(1.05, b.get_ylim()[1]))
    b.set_ylabel("error rate")
    b.legend()
    fig.suptitle(metrics_csv.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_model_card(out: Path, cfg: TrainConfig, metrics: dict, state, freeze_history, nonfinite: int) -> Path:
    """README.md: what was trained on what, the eval table, how to use it."""
    lines = [
        f"# {out.name}",
        "",
        f"Wav2Vec2 CTC model fine-tuned with `lrl train` from `{cfg.model.checkpoint}` on `{cfg.data.path}` "
        f"({state.global_step} updates, best checkpoint by dev WER: `{state.best_model_checkpoint or 'n/a'}`).",
        "",
        "| split | WER | CER | loss |",
        "|---|---|---|---|",
    ]
    for prefix, split in (("eval", cfg.data.eval_split), ("test", cfg.data.test_split)):
        if f"{prefix}_wer" in metrics:
            lines.append(f"| {split} | {metrics[f'{prefix}_wer']:.4f} | {metrics[f'{prefix}_cer']:.4f} | "
                         f"{metrics.get(f'{prefix}_loss', float('nan')):.4f} |")
    lines += [
        "",
        "Greedy decoding (no language model), WER/CER with jiwer on text normalised by `normalizer.json`.",
        "",
        "## Training",
        "",
        f"- LR {cfg.optim.lr:g} ({cfg.optim.schedule}, warmup {cfg.optim.warmup_steps}), layer decay "
        f"{cfg.optim.layer_decay:g}, head x{cfg.optim.head_lr_mult:g}; dynamic batches of <= {cfg.batching.max_seconds:g} s of audio",
        "- freeze schedule (step: trainable / total parameters): "
        + ", ".join(f"{s}: {t:,}/{n:,}" for s, t, n in freeze_history),
        f"- non-finite losses skipped: {nonfinite}",
        f"- full config: `{CONFIG_FILE}`; curves: `{CURVES_FILE}`; log: `{METRICS_FILE}`, TensorBoard in `runs/`",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'asr = pipeline("automatic-speech-recognition", model="{out}")',
        'print(asr(audio_16khz_float32_numpy)["text"])',
        "```",
        "",
    ]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def estimate_steps_per_epoch(durations, batching: BatchingConfig, world: int = 1) -> int:
    from lrl.core.batching import pack_batches

    return math.ceil(len(pack_batches(durations, batching.max_seconds, batching.max_batch_size, batching.seed)) / world)
