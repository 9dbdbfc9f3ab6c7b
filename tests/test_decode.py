"""The beam-search backends (lrl.decode.decoder + lrl.decode.flashlight): the C++ backend and stock
pyctcdecode agree on planted cases, and character LMs build, load and decode. That a tuned model directory
still loads in transformers' `pipeline` with its LM is checked in tests/test_evaluate.py (the `lm tune` test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ctc_helpers import make_logp

from lrl.data.vocab import build_vocab
from lrl.decode.decoder import CTCDecoder, DecoderConfig
from lrl.decode.flashlight import flashlight_available
from lrl.decode.lm import LMBuildConfig, build_lm, char_tokens, find_lm, lm_unit, read_unigrams

TINY_ARPA = Path(__file__).parent / "data" / "tiny.arpa"  # the cat sat / the bat sat; "the cat" is likely
needs_flashlight = pytest.mark.skipif(not flashlight_available(), reason="flashlight-text not installed (lrl[fast])")


@pytest.fixture
def cat_vocab():
    return build_vocab(["the cat sat", "the bat sat", "on the mat"]).vocab


def test_backend_validation_and_auto():
    with pytest.raises(ValueError, match="backend must be one of"):
        DecoderConfig(backend="ctcdecode")
    assert CTCDecoder(["", " ", "a"], TINY_ARPA, DecoderConfig()).backend == "pyctcdecode"  # word LM: open vocabulary
    assert CTCDecoder(["", " ", "a"], None, DecoderConfig(backend="pyctcdecode")).backend == "pyctcdecode"


@needs_flashlight
@pytest.mark.parametrize("confusion, alpha, want", [
    ({"b": 0.55, "c": 0.4}, 0.5, "the cat sat"),  # the LM overrules slightly wrong acoustics
    ({"b": 0.55, "c": 0.4}, 0.0, "the bat sat"),  # without LM weight the acoustics decide
    ({"b": 0.95, "c": 0.001}, 0.5, "the bat sat"),  # clear acoustics beat the LM
])
def test_flashlight_and_pyctcdecode_agree_on_planted_cases(cat_vocab, confusion, alpha, want):
    ids = cat_vocab.token_to_id
    logp = make_logp(cat_vocab, "the cat sat", {4: {ids[k]: p for k, p in confusion.items()}})
    hyps = {}
    for backend in ("flashlight", "pyctcdecode"):
        with CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(alpha=alpha, backend=backend, workers=1)) as d:
            hyps[backend] = d.decode(logp)
    fl, pc = hyps["flashlight"], hyps["pyctcdecode"]
    assert fl.text == pc.text == want
    assert fl.words == pc.words  # word frames for `lrl transcribe`'s timestamps
    # the same ranking formula (alpha on the LM's natural log, beta per word); flashlight log-adds every
    # alignment of the text, pyctcdecode the beams it kept: here the extra alignments weigh ~0.005 nats
    assert fl.lm_score == pytest.approx(pc.lm_score, abs=0.02)
    assert fl.logit_score == pytest.approx(pc.logit_score, abs=0.02)


@needs_flashlight
def test_flashlight_batch_pool_matches_serial_and_maps_blank_cut_frames(cat_vocab, rng):
    ids = cat_vocab.token_to_id
    logps = [make_logp(cat_vocab, t, {4: {ids["b"]: 0.5, ids["c"]: 0.45}}, frames_per_char=3)
             for t in ["the cat sat"] * 3]
    logps += [make_logp(cat_vocab, "on the mat"), np.zeros((0, len(cat_vocab)), np.float32)]
    cut = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(backend="flashlight", workers=2))
    plain = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(backend="flashlight", workers=1,
                                                                       compress_blanks=False))
    with cut, plain:
        pooled = cut.decode_batch(logps)
        serial = [plain.decode(lp) if len(lp) else None for lp in logps]
    assert [h.text for h in pooled][:3] == ["the cat sat"] * 3 and pooled[-1].text == ""
    for a, b in zip(pooled[:-1], serial[:-1], strict=True):
        assert a.text == b.text and a.words == b.words  # frames mapped back through the blank cut


@needs_flashlight
def test_char_lm_round_trip_build_load_decode(tmp_path):
    """`lrl lm build --unit char`: corpus of characters with | between words, recognised as a char LM on
    load, decoded lexicon-free (open vocabulary: a word never seen whole is still spelled)."""
    pytest.importorskip("kenlm")
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n" * 5 + "the bat sat\non the mat\n", encoding="utf-8")
    vocab_res = build_vocab(["the cat sat", "the bat sat", "on the mat", "the cot"])
    vocab_res.vocab.save(tmp_path / "vocab")
    vocab = vocab_res.vocab
    try:
        build_lm([text], tmp_path / "vocab", tmp_path / "lm", LMBuildConfig(order=5, unit="char"))
    except Exception as e:  # noqa: BLE001 - lmplz missing is an environment matter
        pytest.skip(f"lmplz unavailable: {e}")
    assert (tmp_path / "lm" / "corpus.txt").read_text(encoding="utf-8").splitlines()[0] == "t h e | c a t | s a t"
    files = find_lm(tmp_path / "lm")
    assert lm_unit(read_unigrams(files)) == "char"
    ids = vocab.token_to_id
    logp = make_logp(vocab, "the cat sat", {4: {ids["b"]: 0.5, ids["c"]: 0.45}})
    with CTCDecoder.from_vocab(vocab, tmp_path / "lm", DecoderConfig(alpha=2.0, beta=0.0, workers=1,
                                                                      backend="flashlight")) as dec:
        assert dec.greedy(logp).text == "the bat sat"
        hyp = dec.decode(logp)
        assert hyp.text == "the cat sat"
        assert [w.word for w in hyp.words] == ["the", "cat", "sat"]
        assert dec.decode(make_logp(vocab, "the cot")).text == "the cot"  # "cot" is in no LM sentence
    assert CTCDecoder.from_vocab(vocab, tmp_path / "lm").backend == "flashlight"  # auto: char LM -> C++
    with pytest.raises(ValueError, match="character LM, which pyctcdecode cannot decode"):
        CTCDecoder.from_vocab(vocab, tmp_path / "lm", DecoderConfig(backend="pyctcdecode")).decode(logp)


def test_char_tokens_and_lm_unit():
    assert char_tokens("ab  cd") == "a b | c d"
    assert lm_unit(["a", "b", "|"]) == "char"
    assert lm_unit(["a", "cat", "sat"]) == "word"
    assert lm_unit(None) == "word"
