"""Trainer callbacks of a fine-tuning run: the metrics.csv log with the all-blank warning, and the
wall-clock budget (`max_minutes`) that stops the run and re-fits the LR schedule's horizon to the updates
the budget allows. Imported only when training (transformers at module level).
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from lrl.train.config import TrainConfig
from lrl.train.metrics import warn_if_collapsed
from lrl.train.report import METRICS_FILE

logger = logging.getLogger(__name__)

LOG_FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "eval_loss", "eval_wer", "eval_cer",
              "eval_blank_rate", "nonfinite_skipped", "elapsed_s")  # the columns of metrics.csv


def make_callbacks(cfg: TrainConfig, out: Path, spent_seconds: float = 0.0) -> list[TrainerCallback]:
    """The run's log callback, plus the time budget when `cfg.max_minutes` is set; `spent_seconds` of
    work before training (the conv feature cache) come out of the budget."""
    callbacks: list[TrainerCallback] = [RunLogCallback(cfg, out)]
    if cfg.max_minutes:
        callbacks.append(TimeBudgetCallback(cfg.max_minutes, spent_seconds))
    return callbacks


class RunLogCallback(TrainerCallback):
    """metrics.csv rows and the all-blank warning."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        self.cfg = cfg
        self.path = Path(out) / METRICS_FILE
        self.fields = list(LOG_FIELDS)
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
            self.collapsed += warn_if_collapsed(metrics, state.global_step, self.cfg)


class TimeBudgetCallback(TrainerCallback):
    """Stops training after `minutes` of wall-clock time and re-fits the LR schedule's horizon (`total` of
    lrl.train.optim.WarmupSchedule: cosine, linear) to the updates the budget allows, from the measured time
    per update, so a budgeted run still warms up, peaks and decays. `spent_seconds` (work done before
    training, such as building the conv feature cache) comes out of the budget."""

    def __init__(self, minutes: float, spent_seconds: float = 0.0) -> None:
        self.minutes = minutes
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
            logger.info("time budget of %g min spent after %d updates: stopping", self.minutes, state.global_step)
            control.should_training_stop = True
            control.should_save = True
        return control
