"""The beam-search backends (lrl.decode.decoder + lrl.decode.flashlight): the C++ backend and stock
pyctcdecode agree on planted cases, character LMs build, load and decode, a word LM's lexicon of training
words opens the C++ word search to them, and tuning uses the speed. That a tuned model directory
still loads in transformers' `pipeline` with its LM is checked in tests/test_evaluate.py (the `lm tune` test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctc_helpers import make_logp

from lrl.data.vocab import build_vocab
from lrl.decode.decoder import CTCDecoder, DecoderConfig, lm_identity
from lrl.decode.flashlight import flashlight_available
from lrl.decode.lm import (
    LMBuildConfig,
    build_lm,
    char_tokens,
    find_lm,
    install_lm,
    lm_unit,
    read_lexicon,
    read_unigrams,
)
from lrl.evaluate.tuning import TuneConfig, tune_grid

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


def _build_or_skip(*args, **kwargs):
    pytest.importorskip("kenlm")
    try:
        return build_lm(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - lmplz missing is an environment matter
        pytest.skip(f"lmplz unavailable: {e}")


@pytest.fixture
def dog_setup(tmp_path):
    """An LM text without "dog" and training transcripts with it."""
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n" * 5 + "the bat sat\non the mat\n", encoding="utf-8")
    train = tmp_path / "train.txt"
    train.write_text("the dog sat\non the mat\n", encoding="utf-8")
    vocab = build_vocab(["the cat sat", "the bat sat", "on the mat", "the dog sat"]).vocab
    vocab.save(tmp_path / "vocab")
    return tmp_path, text, train, vocab


@needs_flashlight
def test_word_lm_lexicon_lets_the_cpp_search_spell_training_words(dog_setup):
    """`lrl lm build --lexicon TRAIN`: the training words go to language_model/lexicon.txt; the C++ word search
    spells them (scored as KenLM's <unk>), which it cannot over the LM's unigrams alone; auto then picks C++."""
    tmp, text, train, vocab = dog_setup
    _build_or_skip([text], tmp / "vocab", tmp / "closed", LMBuildConfig(order=2))
    _build_or_skip([text], tmp / "vocab", tmp / "lex", LMBuildConfig(order=2), lexicon=[train])
    files = find_lm(tmp / "lex")
    assert files.lexicon is not None and read_lexicon(files) == ["dog", "mat", "on", "sat", "the"]
    assert find_lm(tmp / "closed").lexicon is None
    assert "dog" not in read_unigrams(files)
    logp = make_logp(vocab, "the dog sat")
    texts = {}
    for name, lm in (("closed", tmp / "closed"), ("lex", tmp / "lex")):
        with CTCDecoder.from_vocab(vocab, lm, DecoderConfig(backend="flashlight", workers=1)) as dec:
            texts[name] = dec.decode(logp).text
    assert texts["lex"] == "the dog sat"
    assert "dog" not in texts["closed"].split()  # closed vocabulary: the LM's unigrams only
    with CTCDecoder.from_vocab(vocab, tmp / "closed", DecoderConfig(backend="pyctcdecode", workers=1)) as dec:
        assert dec.decode(logp).text == "the dog sat"  # pyctcdecode spells it with unk_score_offset
    assert CTCDecoder.from_vocab(vocab, tmp / "lex").backend == "flashlight"  # auto: word LM + lexicon -> C++
    assert CTCDecoder.from_vocab(vocab, tmp / "closed").backend == "pyctcdecode"  # auto: no lexicon -> open vocabulary
    assert lm_identity(tmp / "lex") != lm_identity(tmp / "closed")  # tuned values are not shared between them


def test_install_lm_copies_the_lexicon_and_marks_only_word_lms_for_transformers(dog_setup):
    """A character LM is installed for lrl's decoder, but the processor configs are not marked as
    Wav2Vec2ProcessorWithLM (pyctcdecode would read '|' as a word); a word LM's lexicon travels with it."""
    tmp, text, train, vocab = dog_setup
    _build_or_skip([text], tmp / "vocab", tmp / "char", LMBuildConfig(order=4, unit="char"))
    _build_or_skip([text], tmp / "vocab", tmp / "word", LMBuildConfig(order=2), lexicon=[train])
    for name in ("char", "word"):
        model = tmp / f"model-{name}"
        model.mkdir()
        (model / "preprocessor_config.json").write_text('{"sampling_rate": 16000}', encoding="utf-8")
        install_lm(tmp / name, model, vocab, 0.7, 1.0)
        marked = "processor_class" in json.loads((model / "preprocessor_config.json").read_text(encoding="utf-8"))
        assert marked == (name == "word")
        assert (model / "language_model" / "lexicon.txt").is_file() == (name == "word")
        assert find_lm(model).attrs["alpha"] == 0.7
    assert lm_identity(tmp / "model-word") == lm_identity(tmp / "word")


@needs_flashlight
def test_tuning_with_the_cpp_backend_refines_more_and_picks_among_lms(cat_vocab):
    """refine_rounds=0 (auto): 3 rounds of halving steps with the C++ backend, 1 with pyctcdecode."""
    ids = cat_vocab.token_to_id
    logps = [make_logp(cat_vocab, "the cat sat", {4: {ids["b"]: 0.9, ids["c"]: 0.08}}) for _ in range(2)]
    refs = ["the cat sat"] * 2
    cfg = TuneConfig(alphas=(0.0, 1.0, 2.0), betas=(0.0, 2.0), beam_widths=(8,), workers=1)
    res = {}
    for backend in ("flashlight", "pyctcdecode"):
        res[backend] = tune_grid(CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(backend=backend)),
                                 logps, refs, cfg)
    fast, slow = res["flashlight"], res["pyctcdecode"]
    assert fast.backend == "flashlight" and slow.backend == "pyctcdecode"
    steps = {round(abs(p.alpha - fast.best.alpha), 4) for p in fast.fine} - {0.0}
    assert min(steps) == pytest.approx(1.0 / 8)  # three halvings of the coarse alpha step
    assert min({round(abs(p.alpha - slow.best.alpha), 4) for p in slow.fine} - {0.0}) == pytest.approx(0.5)
    assert fast.best.wer == 0.0 and slow.best.wer == 0.0
    with pytest.raises(ValueError, match="refine_rounds must be >= 0"):
        TuneConfig(refine_rounds=-1)


@needs_flashlight
def test_cli_tune_over_a_word_and_a_char_lm_keeps_the_better(tmp_path, cat_vocab, rng, cli):
    """`lrl lm tune --lm WORD --lm CHAR`: each LM is tuned, the lowest dev WER wins and is installed; both are
    listed in tune-dev/lms.tsv and decoder.json. A character LM leaves the processor configs unmarked."""
    import datasets
    from test_evaluate import noise_split, save_tiny_model  # the same tiny model and noise dataset

    model = save_tiny_model(tmp_path / "model", cat_vocab)
    data = tmp_path / "data"
    datasets.DatasetDict({s: noise_split(s, rng) for s in ("dev", "test")}).save_to_disk(str(data))
    cat_vocab.save(data / "vocab")
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\nthe bat sat\non the mat\n", encoding="utf-8")
    _build_or_skip([text], data / "vocab", tmp_path / "char", LMBuildConfig(order=3, unit="char"))
    out = cli("lm", "tune", model, data, "--lm", TINY_ARPA, "--lm", tmp_path / "char", "--alphas", "0,1",
              "--betas", "0", "--beam-widths", "4", "--workers", "1", "--refine-rounds", "1")
    assert out.exit_code == 0, out.output
    assert "best of 2 LMs" in out.output
    rows = (model / "tune-dev" / "lms.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("lm\tbackend\talpha") and len(rows) == 3
    dj = json.loads((model / "decoder.json").read_text(encoding="utf-8"))
    cands = dj["lm_candidates"]
    assert {c["backend"] for c in cands} == {"pyctcdecode", "flashlight"}
    best = min(cands, key=lambda c: (round(c["wer"], 9), round(c["cer"], 9)))
    assert dj["lm_source"] == best["lm"] and dj["tuned_backend"] == best["backend"]
