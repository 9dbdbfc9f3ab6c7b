"""Batches for CTC training: dynamic batches capped by total (padded) audio seconds, built from
length-sorted clips so little padding is wasted, shuffled per epoch, and split between DDP ranks so each
rank gets the same number of batches. Plus a batch-size finder that sizes the cap to the memory at hand.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lrl.core.batching import pack_batches, padding_efficiency
from lrl.core.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

DEFAULT_MAX_SECONDS = 16.0  # ~16 s of audio per update trained best on 2-core AVX2 CPUs (../shared/ENV-NOTES.md)
MEMORY_FRACTION = 0.5  # the finder plans for this share of the available memory by default
MAX_SEED = 2**32 - 1  # the largest seed NumPy's generators take (torch takes a wider range): a run's seeds fit both


def check_seed(name: str, seed: int) -> None:
    """Raise ValueError unless `seed` (the config field `name`) is an integer NumPy and torch both accept."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer in 0..{MAX_SEED} (2**32 - 1), got {seed!r}")


@dataclass(frozen=True)
class BatchingConfig:
    """How training batches are formed."""

    max_seconds: float = DEFAULT_MAX_SECONDS  # cap on batch size x longest clip (padded seconds) per batch
    max_batch_size: int = 0  # also cap the number of clips per batch; 0 = no cap
    shuffle: bool = True  # shuffle the order of batches every epoch (contents stay length-grouped)
    seed: int = 0  # seed of the tie-breaking and the per-epoch shuffles

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (seconds of padded audio per batch), got {self.max_seconds}")
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0 (0 = no cap), got {self.max_batch_size}")
        check_seed("batching.seed", self.seed)


class DynamicBatchSampler:
    """A batch sampler (for `DataLoader(batch_sampler=...)`) over fixed length-grouped batches.

    Batches are packed once (as fairseq's `batch_by_size`), so `len()` is the same every epoch; their
    order is reshuffled by `set_epoch(epoch)` with the same seed on every rank, the costliest batches first.
    With `num_replicas` > 1 the
    batch list is padded (by repeating the first batches) to a multiple of the world size and rank r takes
    batches r, r + world, ..., so all ranks take the same number of steps."""

    def __init__(
        self,
        durations: Sequence[float],
        config: BatchingConfig | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got rank={rank}")
        self.config = config or BatchingConfig()
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.durations = np.asarray(durations, dtype=np.float64)
        self.batches = pack_batches(self.durations, self.config.max_seconds, self.config.max_batch_size, self.config.seed)
        if not self.batches:
            raise ValueError("no clips to batch: the training split is empty")
        self._per_rank = math.ceil(len(self.batches) / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._per_rank

    def __iter__(self):
        order = np.arange(len(self.batches))
        if self.config.shuffle:
            order = np.random.default_rng((self.config.seed, self.epoch)).permutation(len(self.batches))
        # the costliest batches first (one per rank), as HF's LengthGroupedSampler does: an out-of-memory
        # shows at once, and the allocator reserves the largest buffers before smaller ones fragment it
        cost = np.array([self.durations[b].max() ** 2 * len(b) for b in self.batches])  # ~ attention memory B*T^2
        top = np.argsort(-cost[order], kind="stable")[: self.num_replicas]
        order = np.concatenate([order[top], np.delete(order, top)])
        total = self._per_rank * self.num_replicas
        order = np.resize(order, total)  # repeats from the start to fill the last round
        for k in order[self.rank :: self.num_replicas].tolist():
            yield list(self.batches[k])

    @property
    def padding_efficiency(self) -> float:
        return padding_efficiency(self.durations, self.batches)


# -- batch-size finder --------------------------------------------------------------------------------
def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the total physical memory via os.sysconf."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class BatchSizeEstimate:
    """What the batch-size finder measured and chose."""

    max_seconds: float  # the chosen cap (seconds of padded audio per batch)
    fixed_bytes: int  # parameters + gradients + AdamW state
    bytes_per_second: float  # activation memory saved for backward per second of audio
    budget_bytes: int  # memory the estimate was fitted into


def _activation_bytes(model, seconds: float, batch_size: int, sample_rate: int) -> int:
    """Bytes of tensors autograd saves for backward in one forward pass (the activation memory)."""
    import torch

    from lrl.core.hf_transformers import conv_output_lengths

    n = max(1, int(seconds / batch_size * sample_rate))
    x = torch.randn(batch_size, n)
    with torch.no_grad():
        frames = int(conv_output_lengths(n, model.config))
    labels = torch.randint(1, max(2, model.config.vocab_size), (batch_size, max(1, frames // 3)))
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            seen[id(t.untyped_storage())] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_values=x, labels=labels)
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def find_max_seconds(
    model,
    budget_bytes: int | None = None,
    memory_fraction: float = MEMORY_FRACTION,
    clip_seconds: float = 4.0,
    sample_rate: int = SAMPLE_RATE,
) -> BatchSizeEstimate:
    """The largest `max_seconds` whose training step fits in `budget_bytes` (default: `memory_fraction`
    of the available memory). Measures the activation memory of two batch sizes of `clip_seconds` clips,
    fits it linearly in audio seconds, adds parameters + gradients + two AdamW moments, and solves."""
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    if budget_bytes is None:
        budget_bytes = int(available_memory_bytes() * memory_fraction)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fixed = params + 3 * trainable  # weights + grads + exp_avg + exp_avg_sq
    a1 = _activation_bytes(model, clip_seconds, 1, sample_rate)
    a2 = _activation_bytes(model, 2 * clip_seconds, 2, sample_rate)
    per_second = max((a2 - a1) / clip_seconds, a2 / (2 * clip_seconds) * 0.5, 1.0)
    if budget_bytes <= fixed:
        raise ValueError(
            f"the model alone needs ~{fixed / 2**20:.0f} MiB for weights, gradients and AdamW state but the budget is "
            f"{budget_bytes / 2**20:.0f} MiB: free memory, freeze more of the model, or use a smaller checkpoint"
        )
    seconds = (budget_bytes - fixed - max(0.0, a1 - per_second * clip_seconds)) / per_second
    logger.info(
        "batch-size finder: %.1f MiB fixed, %.2f MiB/s of audio -> max_seconds %.1f for a %.0f MiB budget",
        fixed / 2**20, per_second / 2**20, seconds, budget_bytes / 2**20,
    )
    return BatchSizeEstimate(max_seconds=round(max(seconds, clip_seconds), 1), fixed_bytes=fixed,
                             bytes_per_second=per_second, budget_bytes=budget_bytes)
