"""Layer 0, the ground floor: atomic file IO and tables, audio decoding, text normalisation, pictures
of audio, and the constants every stage shares. Imports no other part of lrl."""
