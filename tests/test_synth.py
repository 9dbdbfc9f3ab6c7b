import shutil

import numpy as np
import pytest

from lrl.core.io import read_table
from lrl.data.synth import SynthConfig, make_swahili_demo_corpus, swahili_sentence, synthesize_corpus

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_demo_corpus_layout_and_held_out_sentences(tmp_path):
    out = make_swahili_demo_corpus(tmp_path / "sw", n_train=12, n_dev=4, n_test=5, n_lm=50, seed=3)
    _, train = read_table(out / "train.tsv")
    _, dev = read_table(out / "dev.tsv")
    _, test = read_table(out / "test.tsv")
    lm = set((out / "lm.txt").read_text().split("\n")) - {""}
    assert (len(train), len(dev), len(test), len(lm)) == (12, 4, 5, 50)
    held = {r["sentence"] for r in dev + test}
    assert not held & {r["sentence"] for r in train}
    assert not held & lm
    import soundfile as sf

    for r in train[:3]:
        info = sf.info(out / "clips" / r["path"])
        assert info.samplerate == 16000 and info.duration > 0.5
    assert len({r["client_id"] for r in train}) > 1  # several voices


def test_rendering_is_deterministic_and_noise_respects_snr(tmp_path):
    import soundfile as sf

    cfg = SynthConfig(variants=("m1",), noise_p=1.0, snr_db=(10.0, 10.0), seed=1)
    a = synthesize_corpus({"train": ["mama anapika chai"]}, tmp_path / "a", cfg)
    b = synthesize_corpus({"train": ["mama anapika chai"]}, tmp_path / "b", cfg)
    wa, _ = sf.read(a / "clips" / "synth_sw_train_00000.wav")
    wb, _ = sf.read(b / "clips" / "synth_sw_train_00000.wav")
    assert np.array_equal(wa, wb)
    clean = synthesize_corpus({"train": ["mama anapika chai"]}, tmp_path / "c", SynthConfig(variants=("m1",), noise_p=0.0, seed=1))
    wc, _ = sf.read(clean / "clips" / "synth_sw_train_00000.wav")
    assert np.std(wa) > 0 and not np.array_equal(wa, wc)


def test_grammar_agreement(rng):
    for _ in range(200):
        words = swahili_sentence(rng).split()
        if "jana" in words or "juzi" in words:
            assert any(w.startswith(("ali", "wali")) for w in words)
        if "kesho" in words:
            assert any(w.startswith(("ata", "wata")) for w in words)


def test_config_validation():
    with pytest.raises(ValueError, match="snr_db"):
        SynthConfig(snr_db=(30, 10))
    with pytest.raises(ValueError, match="noise_p"):
        SynthConfig(noise_p=2)


def test_multilingual_corpus_is_a_manifest_data_prepare_reads(tmp_path, shared_data):
    from lrl.data.prepare import PrepareConfig, load_prepared, prepare
    from lrl.data.synth import make_multilingual_corpus

    texts = {"cy": shared_data / "lm-text" / "cy.txt", "sw": "grammar"}
    out = make_multilingual_corpus(tmp_path / "ml", texts, n_per_language=3, n_dev_per_language=1, seed=2)
    _, rows = read_table(out / "manifest.tsv")
    assert sorted({r["language"] for r in rows}) == ["cy", "sw"]
    assert sum(r["split"] == "dev" for r in rows) == 2
    prepare(out / "manifest.tsv", tmp_path / "data", PrepareConfig(splits=("train", "dev")))
    ds, vocab = load_prepared(tmp_path / "data")
    assert len(ds["train"]) == 6 and "w" in vocab.chars


def test_sentences_with_tabs_round_trip_through_the_cv_tsv(tmp_path):
    out = synthesize_corpus({"train": ["mama\tanapika  chai"]}, tmp_path / "t", SynthConfig(variants=("m1",), noise_p=0))
    header, rows = read_table(out / "train.tsv")
    assert len(rows[0]) == len(header) and rows[0]["sentence"] == "mama anapika chai"
