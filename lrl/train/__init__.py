"""Layer 3: CTC fine-tuning and continued pretraining: run config, dynamic batches, feature cache,
optimizer groups and schedules, freezing, the Trainer, the start builder. Imports lrl.core,
lrl.data, lrl.augment, lrl.models."""
