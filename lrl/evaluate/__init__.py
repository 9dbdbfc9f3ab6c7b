"""Layer 3: evaluation: acoustic-model inference and its log-prob cache, WER/CER scoring, LM weight
tuning, transcription. Imports lrl.core, lrl.data, lrl.models, lrl.decode."""
