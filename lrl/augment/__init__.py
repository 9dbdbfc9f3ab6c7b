"""Layer 2: training-time augmentation: waveform transforms, SpecAugment settings (the model's own
masking), previews. Imports lrl.core only."""
