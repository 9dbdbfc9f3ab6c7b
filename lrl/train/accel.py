"""The accelerator side of a training run, decided in one place: the precision "auto" resolves to, the dataloader's
workers and pinned memory, and the model's attention kernel and torch.compile. The CTC loss needs nothing here:
transformers' ForCTCLoss takes log_softmax in float32 before `ctc_loss`, so under fp16/bf16 autocast the loss is
fp32 (tests/test_scale.py holds that)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

__all__ = ["AccelPlan", "apply_to_model", "plan_accel", "resolve_precision"]
logger = logging.getLogger(__name__)

# Dataloader workers "auto" gives a GPU run: audio decoding + padding of a 30-60 s batch takes ~10-50 ms of one core,
# a large model's update on a GPU 0.2-1 s; 4 workers keep the GPU fed without taking every core of a shared node.
GPU_WORKERS = 4


@dataclass(frozen=True)
class AccelPlan:
    """What a run does on this machine (written to train_config.yaml under resolved.accelerator)."""

    device: str  # "cuda" or "cpu"
    precision: str  # fp32, fp16 or bf16 (autocast; weights and optimizer state stay fp32)
    num_workers: int  # dataloader worker processes
    pin_memory: bool  # page-locked host batches (faster, asynchronous copies to the GPU)
    attn_implementation: str  # the Transformer's attention kernel (sdpa or eager)
    compile: bool  # the model's forward goes through torch.compile

    def training_args(self) -> dict:
        """The TrainingArguments keys this plan sets."""
        return dict(
            fp16=self.precision == "fp16", bf16=self.precision == "bf16",
            dataloader_num_workers=self.num_workers, dataloader_pin_memory=self.pin_memory,
            dataloader_persistent_workers=self.num_workers > 0,  # no worker start-up (and dataset copy) every epoch
            dataloader_prefetch_factor=2 if self.num_workers > 0 else None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_precision(precision: str, cuda: bool, bf16_supported: bool) -> str:
    """"auto" = bf16 on a GPU that has it (Ampere and later: fp32's range, so no loss scaling and no fp16 overflow
    in attention or the conv front end), fp32 anywhere else (fp16 only when asked for: it needs loss scaling and
    overflows more easily; bf16 on a CPU without bf16 hardware is slower than fp32). An explicit value is kept,
    with a warning where it cannot help."""
    if precision == "auto":
        return "bf16" if cuda and bf16_supported else "fp32"
    if precision == "bf16" and cuda and not bf16_supported:
        logger.warning("precision=bf16 but this GPU has no bf16 support (it is emulated, slowly): use fp16 or fp32")
    if precision == "fp16" and not cuda:
        logger.warning("precision=fp16 without a GPU: CPU autocast in fp16 is slow; use fp32 (or precision=auto)")
    return precision


def plan_accel(cfg, cuda: bool | None = None, bf16_supported: bool | None = None, cpus: int | None = None) -> AccelPlan:
    """The plan for TrainConfig `cfg` on this machine (or the one described by `cuda`, `bf16_supported`, `cpus`)."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_bf16_supported())
    cpus = cpus or os.cpu_count() or 1
    workers = cfg.data.num_workers
    if workers == "auto":  # on a CPU the cores train: workers would compete with the model for them
        workers = min(GPU_WORKERS, max(1, cpus // 2)) if cuda else 0
    return AccelPlan(
        device="cuda" if cuda else "cpu", precision=resolve_precision(cfg.precision, cuda, bf16_supported),
        num_workers=int(workers), pin_memory=bool(cuda), attn_implementation=cfg.model.attn_implementation,
        compile=cfg.model.compile,
    )


def apply_to_model(model, plan: AccelPlan) -> None:
    """Compile the model's forward in place when the plan says so (`nn.Module.compile`: the state dict keeps its
    names, so checkpoints and `save_pretrained` are unchanged). dynamic=True: lrl's batches vary in length, and a
    graph per length would recompile at every new one."""
    if plan.compile:
        model.compile(dynamic=True)
        logger.info("torch.compile: on (dynamic shapes); the first updates include compilation")
