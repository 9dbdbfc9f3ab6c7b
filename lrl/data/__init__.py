"""Layer 1: turning raw corpora into prepared datasets and vocabularies (vocab, prepare, data cards,
synthetic corpora). Imports lrl.core only."""
