"""The one place lrl reaches into accelerate (as the HF Trainer drives it): a training DataLoader whose
batch sampler already gives each rank its own batches goes through `accelerator.prepare` (device
placement, the end-of-epoch signal gradient accumulation syncs on) without being sharded a second time.

Why the public API is not enough (checked against accelerate 1.15 with transformers 5.24):
`Accelerator.prepare` / `prepare_data_loader` wrap the loader's batch sampler in
`accelerate.data_loader.BatchSamplerShard(num_processes=world, process_index=rank)` whenever more than one
process runs, and neither takes an option for "already sharded" (`split_batches`, `dispatch_batches` and
`even_batches` change how, not whether, batches are split). lrl.train.batching.DynamicBatchSampler already
hands each rank an equal share of the packed batches; sharded again, every rank would train on only
1/world of its share (an epoch would see 1/world of the data). Calling the module-level `accelerate.data_loader.prepare_data_loader`
with num_processes=1 instead would skip the Accelerator's own bookkeeping of its loaders. So the wrapper
stays and its `num_processes` / `process_index` are set to 1 / 0, which makes it pass every batch through.
On one process accelerate does not wrap the sampler and nothing is changed. tests/test_train.py holds the
attribute names against the installed accelerate.
"""

from __future__ import annotations


def prepare_sharded_loader(accelerator, loader):
    """`accelerator.prepare(loader)` for a loader whose batch sampler already shards by rank: accelerate's
    shard wrapper around it (multi-process runs) becomes a passthrough."""
    from accelerate.data_loader import BatchSamplerShard

    prepared = accelerator.prepare(loader)
    bs = getattr(prepared, "batch_sampler", None)
    if isinstance(bs, BatchSamplerShard) and bs.batch_sampler is loader.batch_sampler:
        bs.num_processes, bs.process_index = 1, 0
    return prepared
