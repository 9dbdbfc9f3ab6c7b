"""Layer 2: CTC decoding (greedy, beam search with pyctcdecode) and KenLM n-gram models. Imports
lrl.core and lrl.data."""
