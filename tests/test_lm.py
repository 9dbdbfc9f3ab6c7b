"""KenLM building (lrl.decode.lm) and the pyctcdecode wrapper (lrl.decode.decoder), on a hand-written ARPA and
constructed log-probs, plus an end-to-end build on the shared Yoruba LM text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctc_helpers import make_logp

from lrl.core.io import LrlError
from lrl.data.vocab import build_vocab
from lrl.decode.decoder import CTCDecoder, DecoderConfig, compress_blank_frames, greedy_decode, log_softmax
from lrl.decode.lm import LMBuildConfig, build_lm, find_lm, labels_for_vocab, prepare_text, read_unigrams

TINY_ARPA = Path(__file__).parent / "data" / "tiny.arpa"  # the cat sat / the bat sat; "the cat" is likely


@pytest.fixture
def cat_vocab():
    return build_vocab(["the cat sat", "the bat sat"]).vocab


# -- config validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(order=1), "order must be in 2..6"),
        (dict(order=7), "order must be in 2..6"),
        (dict(prune=(1, 1)), "prune must start with 0"),
        (dict(order=2, prune=(0, 1, 1)), "at most order=2"),
        (dict(prune=(0, 2, 1)), "non-decreasing"),
        (dict(binary="hash"), "binary must be"),
        (dict(binary="none", keep_arpa=False), "needs keep_arpa"),
        (dict(min_word_count=0), "min_word_count must be >= 1"),
        (dict(memory="lots"), "memory must be like"),
        (dict(oov="keep"), "oov must be"),
    ],
)
def test_lm_build_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMBuildConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beam_width=0), "beam_width must be >= 1"),
        (dict(alpha=-0.1), "alpha must be >= 0"),
        (dict(beam_prune_logp=1.0), "beam_prune_logp must be < 0"),
        (dict(token_min_logp=0.0), "token_min_logp must be < 0"),
        (dict(unk_score_offset=1.0), "unk_score_offset must be <= 0"),
        (dict(workers=-1), "workers must be >= 0"),
    ],
)
def test_decoder_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig(**kwargs)


# -- LM text -------------------------------------------------------------------------------------
def test_prepare_text_normalises_drops_oov_and_handles_overlap(cat_vocab):
    lines = ["The CAT, sat!", "the dog sat", "", "  ", "the bat sat.", "the cat sat 3 times"]
    t = prepare_text(lines, cat_vocab, exclude=["THE BAT SAT"], heldout=["the cat sat"], oov="drop")
    assert t.sentences == ["the cat sat"]  # normalised like the model text
    assert t.read == 6 and t.empty == 2 and t.excluded == 1
    assert t.oov == 2  # "dog" (d, o, g) and the digit/times line
    assert t.oov_chars["d"] == 1 and t.oov_chars["3"] == 1
    assert t.heldout_overlap == 1 and t.overlap_examples == ["the cat sat"]


def test_prepare_text_strip_marks_keeps_sentences_with_unknown_tone_marks():
    vocab = build_vocab(["ẹ ba"]).vocab  # has ẹ (U+1EB9) but no combining acute
    t_drop = prepare_text(["ẹ́ ba"], vocab, oov="drop")
    t_strip = prepare_text(["ẹ́ ba", "ẹ́ xa"], vocab)  # strip-marks is the default
    assert t_drop.sentences == [] and t_drop.oov == 1
    assert t_strip.sentences == ["ẹ ba"] and t_strip.stripped == 1 and t_strip.oov == 1
    assert t_strip.oov_chars == {"x": 1}  # only what still blocked "ẹ xa", not the mark that was stripped
    assert t_strip.stripped_marks == {"\u0301": 1}
    assert dict(t_drop.kept_by_policy) == {"strip-marks": 1}
    assert t_strip.summary()["stripped_marks"] == {"U+0301 COMBINING ACUTE ACCENT": 1}


@pytest.mark.parametrize("oov", ["drop", "strip-marks"])
def test_lm_build_warns_when_much_text_is_dropped_and_names_the_better_policy(tmp_path, caplog, oov):
    """8 of 10 sentences only miss a combining acute (ẹ́): with --oov drop the warning says how many were
    dropped, the mark by name, and that strip-marks keeps 9 of 10 ("ẹ́ xa" still holds x)."""
    vocab_dir = build_vocab(["ẹ ba", "ba ẹ"]).vocab.save(tmp_path / "vocab")
    text = tmp_path / "lm.txt"
    text.write_text("ẹ́ ba\n" * 8 + "ba ẹ\nẹ́ xa\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="lrl.decode.lm"):
        r = build_lm([text], vocab_dir, tmp_path / "lm", LMBuildConfig(order=2, oov=oov))
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    report = json.loads((tmp_path / "lm" / "lm_build.json").read_text())
    assert report["text"]["kept_by_policy"] == {"drop": 1, "strip-marks": 9}
    if oov == "drop":
        assert len(r.text.sentences) == 1 and r.text.oov == 9
        assert len(warnings) == 1 and "dropped 9 of 10 LM sentences (90.0%)" in warnings[0]
        assert "U+0301 COMBINING ACUTE ACCENT: 9" in warnings[0] and "x U+0078 LATIN SMALL LETTER X: 1" in warnings[0]
        assert "--oov strip-marks would keep 9 of 10 (now 1 kept)" in warnings[0]
    else:  # 1 of 10 dropped: above the threshold, but no policy keeps more, so none is proposed
        assert len(r.text.sentences) == 9 and r.text.stripped == 8
        assert report["text"]["stripped"] == 8 and report["config"]["oov"] == "strip-marks"
        assert len(warnings) == 1 and "No --oov policy keeps more" in warnings[0]


def test_lm_build_does_not_warn_when_little_is_dropped(tmp_path, cat_vocab_dir, caplog):
    from lrl.decode.lm import OOV_WARN_SHARE

    n = 40
    assert 1 / n <= OOV_WARN_SHARE  # one dropped sentence in 40 is "a small share"
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n" * (n - 1) + "the dog sat\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="lrl.decode.lm"):
        r = build_lm([text], cat_vocab_dir, tmp_path / "lm", LMBuildConfig(order=2))
    assert r.text.oov == 1
    assert not [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert any("dropped 1 of 40 LM sentences" in rec.getMessage() for rec in caplog.records)


# -- building --------------------------------------------------------------------------------------
@pytest.fixture
def cat_vocab_dir(tmp_path, cat_vocab):
    return cat_vocab.save(tmp_path / "vocab")


def test_build_lm_writes_pyctcdecode_layout(tmp_path, cat_vocab_dir):
    text = tmp_path / "lm.txt"
    text.write_text("The cat sat.\nthe cat sat\nthe bat sat\nthe dog sat\nthe cat\n", encoding="utf-8")
    dev = tmp_path / "dev.txt"
    dev.write_text("the bat sat\n", encoding="utf-8")
    out = tmp_path / "lm"
    r = build_lm([text], cat_vocab_dir, out, LMBuildConfig(order=2), exclude=[dev])
    assert r.text.oov == 1 and r.text.excluded == 1 and len(r.text.sentences) == 3
    lm_dir = out / "language_model"
    assert sorted(p.name for p in lm_dir.iterdir()) == ["attrs.json", "lm.bin", "unigrams.txt"]
    assert (lm_dir / "unigrams.txt").read_text().split() == ["cat", "sat", "the"]  # "bat" was excluded
    assert json.loads((lm_dir / "attrs.json").read_text()) == {
        "alpha": 0.5, "beta": 1.5, "unk_score_offset": -10.0, "score_boundary": True}
    assert r.ngram_counts[1] == 6  # 3 words + <s> </s> <unk>
    report = json.loads((out / "lm_build.json").read_text())
    assert report["text"]["oov"] == 1 and report["model"] == "language_model/lm.bin"

    from pyctcdecode import BeamSearchDecoderCTC

    dec = BeamSearchDecoderCTC.load_from_dir(str(out))  # OUT itself is a pyctcdecode decoder dir
    assert dec._alphabet.labels == labels_for_vocab(build_vocab(["the cat sat", "the bat sat"]).vocab)
    files = find_lm(out)
    assert read_unigrams(files) == ["cat", "sat", "the"]


def test_build_lm_missing_lmplz_says_how_to_build_it(tmp_path, cat_vocab_dir, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    with pytest.raises(LrlError, match="lmplz.*scripts/setup.sh"):
        build_lm([text], cat_vocab_dir, tmp_path / "lm")


def test_kenlm_output_goes_to_a_log_and_a_failure_quotes_its_tail(tmp_path, cat_vocab_dir, capfd):
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\nthe cat\n", encoding="utf-8")
    build_lm([text], cat_vocab_dir, tmp_path / "ok", LMBuildConfig(order=2))
    assert "lmplz" not in capfd.readouterr().err  # lmplz's progress bars stay out of the terminal
    log = (tmp_path / "ok" / "kenlm.log").read_text()
    assert "Counting and sorting n-grams" in log and "build_binary" in log and log.count("[exit 0]") == 2
    with pytest.raises(LrlError, match=r"(?s)lmplz failed.*kenlm\.log.*Kneser-Ney.*keep --discount-fallback on"):
        build_lm([text], cat_vocab_dir, tmp_path / "bad", LMBuildConfig(order=3, discount_fallback=False))


def test_build_lm_nothing_left_is_an_error(tmp_path, cat_vocab_dir):
    text = tmp_path / "lm.txt"
    text.write_text("dog\nfrog\n", encoding="utf-8")
    with pytest.raises(LrlError, match="no LM sentences left"):
        build_lm([text], cat_vocab_dir, tmp_path / "lm")


def test_cli_lm_build_yoruba_end_to_end(tmp_path, yo_cv, shared_data, cli):
    vocab_dir = tmp_path / "vocab"
    assert cli("vocab", "build", yo_cv / "train.tsv", "--out", vocab_dir).exit_code == 0
    out = tmp_path / "lm"
    res = cli("lm", "build", shared_data / "lm-text" / "yo.txt", "--vocab", vocab_dir, "--order", "3",
              "--out", out, "--heldout", yo_cv / "dev.tsv")
    assert res.exit_code == 0, res.output
    assert "characters outside the vocabulary" in res.output  # OOV drops are reported
    report = json.loads((out / "lm_build.json").read_text())
    n_lines = len((shared_data / "lm-text" / "yo.txt").read_text(encoding="utf-8").splitlines())
    assert report["text"]["read"] == n_lines
    assert report["text"]["kept"] + report["text"]["oov"] + report["text"]["empty"] + report["text"]["digits"] == n_lines
    assert f"{report['text']['kept']} of {n_lines} sentences kept" in res.output
    assert report["ngrams"]["3"] > 0 and (out / "language_model" / "lm.bin").stat().st_size > 0
    # the LM's words only use characters the vocabulary has
    chars = set("".join(read_unigrams(find_lm(out))))
    from lrl.data.vocab import Vocab

    assert chars <= set(Vocab.load(vocab_dir).chars)


def test_cli_lm_build_bad_order_is_one_line(tmp_path, cat_vocab_dir, cli):
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    res = cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", tmp_path / "lm", "--order", "9")
    assert res.exit_code == 1 and "order must be in 2..6" in res.output and "Traceback" not in res.output


# -- decoding ----------------------------------------------------------------------------------------
def test_labels_for_vocab_map_specials(cat_vocab):
    labels = labels_for_vocab(cat_vocab)
    assert labels[:3] == ["", "\u2047", " "] and labels[3:] == list(cat_vocab.chars)


def test_lm_fixes_acoustically_ambiguous_word(cat_vocab):
    ids = cat_vocab.token_to_id
    # "the cat sat" where the acoustics slightly prefer "b" over "c"
    logp = make_logp(cat_vocab, "the cat sat", {4: {ids["b"]: 0.55, ids["c"]: 0.4}})
    with CTCDecoder.from_vocab(cat_vocab, TINY_ARPA) as dec:
        assert dec.greedy(logp).text == "the bat sat"
        hyp = dec.decode(logp)
    assert hyp.text == "the cat sat"
    assert [w.word for w in hyp.words] == ["the", "cat", "sat"]
    no_lm = CTCDecoder.from_vocab(cat_vocab, None).decode(logp)
    assert no_lm.text == "the bat sat"  # the beam search alone does not fix it: the LM does


def test_greedy_decode_collapses_repeats_and_keeps_double_letters():
    labels = ["", "\u2047", " ", "l", "o"]
    seq = [3, 3, 0, 3, 4, 4, 2, 2, 4, 0]  # l l _ l o o | | o _  -> "llo o"
    logp = np.log(np.full((len(seq), 5), 0.01))
    logp[np.arange(len(seq)), seq] = np.log(0.96)
    hyp = greedy_decode(logp, labels)
    assert hyp.text == "llo o"
    assert [(w.word, w.start, w.end) for w in hyp.words] == [("llo", 0, 6), ("o", 8, 9)]


def test_blank_compression_is_exact(cat_vocab, rng):
    """Cutting blank-only runs changes neither the text nor the word frames."""
    texts = ["the cat sat", "the bat sat", "sat the cat"]
    logps = []
    for t in texts:
        lp = make_logp(cat_vocab, t, frames_per_char=3)
        lp = np.concatenate([lp[:1]] + [np.repeat(lp[i:i + 1], 1 + rng.integers(0, 4), axis=0) for i in range(1, len(lp))])
        noise = rng.normal(0, 0.8, lp.shape).astype(np.float32)
        logps.append(lp + noise)
    plain = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(compress_blanks=False, workers=1))
    cut = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(compress_blanks=True, workers=1))
    for lp in logps:
        a, b = plain.decode(lp), cut.decode(lp)
        assert a.text == b.text and a.words == b.words
        assert len(compress_blank_frames(log_softmax(lp))[0]) < len(lp)


def test_decode_batch_uses_one_pool_and_matches_serial(cat_vocab, rng):
    ids = cat_vocab.token_to_id
    logps = [make_logp(cat_vocab, t, {4: {ids["b"]: 0.5, ids["c"]: 0.45}}) for t in ["the cat sat"] * 3]
    logps += [make_logp(cat_vocab, "the bat sat"), np.zeros((0, len(cat_vocab)), np.float32)]
    with CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(workers=2)) as dec:
        serial = [dec.decode(lp).text if len(lp) else "" for lp in logps]
        first = dec.decode_batch(logps)
        pool = dec._pool
        second = dec.decode_batch(logps, dec.with_config(alpha=0.0, beta=0.0))  # params reach the workers
        assert dec._pool is pool is not None
    assert [h.text for h in first] == serial == ["the cat sat"] * 3 + ["the bat sat", ""]
    assert [h.text for h in second][:3] == ["the bat sat"] * 3  # alpha=0: the acoustics decide


def test_decode_rejects_wrong_shape(cat_vocab):
    dec = CTCDecoder.from_vocab(cat_vocab, None)
    with pytest.raises(ValueError, match=r"shape \(frames, 10\)"):
        dec.decode(np.zeros((5, 7), np.float32))


def test_saved_dir_loads_in_wav2vec2_processor_with_lm(tmp_path, cat_vocab):
    """The saved decoder dir + processor files load with transformers' Wav2Vec2ProcessorWithLM and
    decode exactly as lrl's own decoder does (same alpha/beta)."""
    from transformers import Wav2Vec2ProcessorWithLM

    ids = cat_vocab.token_to_id
    logp = make_logp(cat_vocab, "the cat sat", {4: {ids["b"]: 0.55, ids["c"]: 0.4}})
    model_dir = tmp_path / "model"
    cat_vocab.to_processor().save_pretrained(model_dir)
    cat_vocab.normalizer.save(model_dir)
    cfg = DecoderConfig(alpha=0.8, beta=1.0, compress_blanks=False, backend="pyctcdecode")
    dec = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, cfg)
    ours = dec.decode(logp)
    dec.save(model_dir)
    attrs = json.loads((model_dir / "language_model" / "attrs.json").read_text())
    assert attrs["alpha"] == 0.8 and attrs["beta"] == 1.0
    proc = Wav2Vec2ProcessorWithLM.from_pretrained(str(model_dir))
    theirs = proc.decode(logp, output_word_offsets=True)
    assert theirs.text == ours.text == "the cat sat"
    assert [(d["word"], d["start_offset"], d["end_offset"]) for d in theirs.word_offsets] == [
        (w.word, w.start, w.end) for w in ours.words]
    assert theirs.lm_score == pytest.approx(ours.lm_score, rel=1e-4)
    # and lrl loads the same directory back
    again = CTCDecoder.load(model_dir, compress_blanks=False, backend="pyctcdecode")
    assert (again.config.alpha, again.config.beta) == (0.8, 1.0)
    assert again.decode(logp) == ours


def test_pyctcdecode_backend_matches_pyctcdecode_decode_beams(cat_vocab, rng):
    """The pyctcdecode backend is stock pyctcdecode (with blank runs cut first): texts, word frames and
    scores equal its own decode_beams."""
    from pyctcdecode import build_ctcdecoder

    ref = build_ctcdecoder(labels_for_vocab(cat_vocab), str(TINY_ARPA))
    ours = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(compress_blanks=False, workers=1,
                                                                      backend="pyctcdecode"))
    ours_cut = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig(workers=1, backend="pyctcdecode"))
    for text in ["the cat sat", "sat the bat", "the the cat", "tthe caat ssat"] * 4:
        lp = make_logp(cat_vocab, text, frames_per_char=3)
        lp = lp + rng.normal(0, 2.0, lp.shape).astype(np.float32)
        text_ref, _, frames_ref, logit_ref, lm_ref = ref.decode_beams(lp, prune_history=True)[0]
        h, h_cut = ours.decode(lp), ours_cut.decode(lp)
        assert h.text == h_cut.text == text_ref
        assert [(w.word, (w.start, w.end)) for w in h.words] == frames_ref
        assert h.words == h_cut.words
        # lrl's float32 log-softmax runs before pyctcdecode's own: scores agree to float32 rounding
        assert h.logit_score == pytest.approx(logit_ref, abs=1e-5) and h.lm_score == pytest.approx(lm_ref, abs=1e-5)


def test_prepared_dataset_as_lm_text_exclude_and_overlap_check(tmp_path, cat_vocab):
    """A prepared dataset gives its train text as LM text, its dev/test text to --exclude, and a vocab at
    DATA/vocab makes the build check DATA's dev/test for overlap on its own."""
    import datasets

    def split(texts):
        return datasets.Dataset.from_dict({"id": [str(i) for i in range(len(texts))], "text": texts})

    data = tmp_path / "data"
    datasets.DatasetDict({"train": split(["the cat sat", "sat the cat"]), "dev": split(["the bat sat"]),
                          "test": split(["the cat"])}).save_to_disk(str(data))
    cat_vocab.save(data / "vocab")
    extra = tmp_path / "extra.txt"
    extra.write_text("the bat sat\nthe cat\nthe bat\n", encoding="utf-8")
    r = build_lm([data, extra], data / "vocab", tmp_path / "lm", LMBuildConfig(order=2))
    assert r.text.read == 5 and r.text.heldout_overlap == 2  # dev + test transcripts found, not removed
    r2 = build_lm([data, extra], data / "vocab", tmp_path / "lm2", LMBuildConfig(order=2), exclude=[data])
    assert r2.text.excluded == 2 and r2.text.heldout_overlap == 0
    assert sorted(r2.text.sentences) == ["sat the cat", "the bat", "the cat sat"]
