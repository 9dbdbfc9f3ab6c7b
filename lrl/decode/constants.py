"""pyctcdecode's decoding defaults, named once for lrl (DecoderConfig, LMBuildConfig, `lrl lm tune`).

They copy pyctcdecode/constants.py (DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_UNK_LOGP_OFFSET, DEFAULT_BEAM_WIDTH,
DEFAULT_PRUNE_LOGP, DEFAULT_MIN_TOKEN_LOGP) because importing that module runs pyctcdecode/__init__.py, which
loads the decoder, numpy and kenlm: too much for `lrl --help` and for configs that only hold numbers.
"""

DEFAULT_ALPHA = 0.5  # LM weight: the starting point `lrl lm tune` improves on
DEFAULT_BETA = 1.5  # word insertion bonus, natural-log units per word
DEFAULT_UNK_SCORE_OFFSET = -10.0  # log-score added to words outside the LM's unigrams
DEFAULT_BEAM_WIDTH = 100  # beams kept per frame
DEFAULT_PRUNE_LOGP = -10.0  # beams this far (natural log) below the best are dropped
DEFAULT_MIN_TOKEN_LOGP = -5.0  # tokens below this log-prob are not expanded (unless the frame's argmax)
MIN_TOKEN_CLIP_P = 1e-15  # pyctcdecode clips probabilities here before taking logs
# lrl's own (the C++ backend): tokens tried per frame, most probable first. All 43 of yo-cv's cost 1.7x the
# time of 16 and gave no lower WER in bench/decode.py (frames where the model is unsure spread over few tokens)
DEFAULT_BEAM_SIZE_TOKEN = 16
