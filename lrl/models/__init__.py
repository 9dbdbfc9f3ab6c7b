"""Layer 2: Wav2Vec2 checkpoints: tiny random inits, loading any checkpoint as Wav2Vec2ForCTC, head
transfer, and the registry of starts shipped in lrl/assets. Imports lrl.core only."""
