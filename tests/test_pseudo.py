"""Self-training: confidences and the filter (lrl.evaluate.confidence), `lrl pseudo-label` (lrl.evaluate.pseudo)
and `lrl train run --extra-data` (lrl.train.mix)."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
from corpus_fixtures import shared_fsdd_dataset
from ctc_helpers import make_logp

from lrl.data.vocab import Vocab
from lrl.decode.decoder import greedy_decode
from lrl.decode.lm import labels_for_vocab
from lrl.evaluate.confidence import (
    CONFIDENCES,
    best_confidence,
    char_error_rate,
    confidences,
    select,
    spearman,
)
from lrl.evaluate.pseudo import PseudoLabelConfig, segment

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vocab():
    from lrl.core.text import NormalizerConfig

    return Vocab.from_chars("abcdeiklmnoprst", NormalizerConfig())


def _scored(vocab, logp):
    g = greedy_decode(logp, labels_for_vocab(vocab))
    return g.text, confidences(logp, g.text)


def test_filter_keeps_planted_good_transcripts_and_drops_bad_ones(vocab):
    ids = vocab.token_to_id
    good = [make_logp(vocab, t) for t in ("banana split", "more cats", "dark red")]
    # bad: every character nearly a coin toss between the right token and another one
    bad = [make_logp(vocab, t, {i: {ids[c if c != " " else "|"]: 0.4, ids["k"]: 0.35} for i, c in enumerate(t)})
           for t in ("stone mill", "cold iron", "red sails")]
    rows = [_scored(vocab, lp) for lp in good + bad]
    for c in ("token_posterior", "posterior", "beam"):
        scores = [r[1][c] for r in rows]
        sel = select(scores, [r[0] for r in rows], keep_share=0.5)
        assert sel.kept == [True] * 3 + [False] * 3, c
        assert sel.reasons[3:] == ["not_in_top_share"] * 3
    scores = [r[1]["token_posterior"] for r in rows]
    sel = select(scores, [r[0] for r in rows], min_confidence=0.8)
    assert sel.kept == [True] * 3 + [False] * 3 and set(sel.reasons[3:]) == {"low_confidence"}
    assert rows[0][0] == "banana split"


def test_confidence_edge_cases_and_validation(vocab):
    empty = confidences(np.zeros((0, len(vocab)), np.float32), "")
    assert set(empty) == set(CONFIDENCES) and empty["beam"] == -math.inf
    lp = make_logp(vocab, "cat")
    assert confidences(lp, "cat", lm_text="cat")["agreement"] == 1.0
    assert confidences(lp, "cat", lm_text="bat")["agreement"] == pytest.approx(2 / 3)
    sel = select([0.9, 0.8], ["", "ok"])
    assert sel.reasons == ["empty_transcript", ""]
    with pytest.raises(ValueError, match="keep_share"):
        select([1.0], ["a"], keep_share=0)
    assert char_error_rate("abc", "abd") == pytest.approx(1 / 3) and char_error_rate("", "") == 0.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    for kw, match in (({"max_seconds": 0}, "max_seconds"), ({"min_seconds": 15}, "min_seconds"),
                      ({"keep_share": 1.5}, "keep_share"), ({"confidence": "x"}, "confidence"),
                      ({"min_confidence": math.nan}, "min_confidence"), ({"confidence": "auto"}, "rank_on")):
        with pytest.raises(ValueError, match=match):
            PseudoLabelConfig(**kw)


def test_best_confidence_is_the_one_that_ranks_planted_errors(vocab, rng):
    """Transcripts with a planted number of characters lost in a near coin toss: token_posterior falls as their CER
    rises, so it ranks them; agreement without an LM is constant and can't rank; a confidence that rises
    with CER never wins."""
    ids = vocab.token_to_id
    text = "more cats and dark red sails"
    rows = []
    for n_bad in range(0, 12, 2):
        bad = {i: {ids[text[i] if text[i] != " " else "|"]: 0.4, ids["p"]: 0.45} for i in range(0, 2 * n_bad, 2)}
        hyp, conf = _scored(vocab, make_logp(vocab, text, bad))
        rows.append((char_error_rate(text, hyp), conf))
    cer = [r[0] for r in rows]
    assert len(set(cer)) > 3  # the planted errors do change the transcripts
    rank = {c: spearman([r[1][c] for r in rows], cer) for c in CONFIDENCES}
    assert rank["token_posterior"] < -0.9 and math.isnan(rank["agreement"])
    # posterior and beam may tie with it here (every frame's top falls alike); ties go to the first listed
    assert best_confidence(rank) == "token_posterior"
    assert best_confidence({**rank, "beam": rank["token_posterior"] - 0.01}) == "beam"
    assert best_confidence({**rank, "token_posterior": -1.0}) == "token_posterior"
    assert best_confidence({c: math.nan for c in CONFIDENCES}) is None
    assert best_confidence({c: 0.5 for c in CONFIDENCES}) is None  # rising with CER ranks nothing


def test_lm_tuned_for_reads_what_lm_tune_recorded(tmp_path):
    from lrl.evaluate.pseudo import _lm_tuned_for

    assert _lm_tuned_for(tmp_path) is None  # no decoder.json: untuned
    for saved, want in (({"alpha": 0.5}, None), ({"dev_wer": {"tuned": 0.3}}, "wer"),  # tuned before --metric
                        ({"dev_wer": {}, "tuned_for": "cer"}, "cer")):
        (tmp_path / "decoder.json").write_text(json.dumps(saved))
        assert _lm_tuned_for(tmp_path) == want, saved


def test_segment_cuts_long_audio_at_quiet_points(rng):
    sr = 16000
    loud = lambda s: rng.normal(0, 0.3, int(s * sr)).astype(np.float32)  # noqa: E731
    quiet = lambda s: np.zeros(int(s * sr), np.float32)  # noqa: E731
    wave = np.concatenate([loud(3), quiet(0.5), loud(3), quiet(0.5), loud(2)])
    spans = segment(wave, max_seconds=5.0)
    assert spans[0][0] == 0 and spans[-1][1] == len(wave)
    assert all(e - s <= 5 * sr for s, e in spans) and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert 3 * sr <= spans[0][1] <= 3.5 * sr  # in the first pause
    assert segment(wave[: 4 * sr], 5.0) == [(0, 4 * sr)]


# -- the whole loop ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return shared_fsdd_dataset(tmp_path_factory, n_train=12, n_dev=4, n_test=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_data, tiny_ckpt, tmp_path_factory):
    from lrl.train.config import load_config, parse_overrides
    from lrl.train.trainer import train

    out = tmp_path_factory.mktemp("model") / "m"
    cfg = load_config(None, {**parse_overrides(["optim.max_steps=2", "data.eval_split=", "eval.save_steps=1000",
                                                "batching.max_seconds=4"]),
                             "data.path": str(tiny_data), "model.checkpoint": str(tiny_ckpt), "output_dir": str(out)})
    train(cfg)
    return out


def test_pseudo_label_writes_a_loadable_dataset_that_trains_via_extra_data(tiny_data, tiny_model, tmp_path, cli):
    import datasets
    import yaml
    from conftest import SHARED_DATA

    audio = tmp_path / "audio"
    audio.mkdir()
    clips = sorted((SHARED_DATA / "fsdd" / "recordings").glob("*.wav"))[-6:]
    waves = []
    for c in clips[:4]:
        w, sr = sf.read(c, dtype="float32")
        (audio / c.name).write_bytes(c.read_bytes())
        waves.append(w)
    sf.write(audio / "long.wav", np.concatenate(waves * 3), sr)  # cut into utterances (max 1.5 s)
    out = tmp_path / "pseudo"
    r = cli("pseudo-label", tiny_model, audio, tiny_data, "--out", out, "--keep-share", "1", "--min-confidence", "0",
            "--max-seconds", "1.5", "--min-seconds", "0.1", "--split", "dev")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "pseudo_report.json").read_text())
    assert report["decoding"] == "greedy" and report["utterances_in"] >= 4 + 4 + 2
    dd = datasets.load_from_disk(str(out))
    ds = dd["train"]
    assert {"pseudo", "confidence", "audio", "text", "duration"} <= set(ds.column_names)
    assert len(ds) == report["kept"] and all(ds["pseudo"])
    assert Vocab.load(out / "vocab") == Vocab.load(tiny_model)
    assert any(u.startswith("long_") for u in ds["id"]) or report["kept"] < report["scored"]
    dev_ids = set(datasets.load_from_disk(str(tiny_data))["dev"]["id"])
    assert dev_ids & set(ds["id"])  # the prepared split's rows came in (their labels were never read)
    # labelled + pseudo: trains, and the resolved config records the mix
    run = tmp_path / "run"
    r = cli("train", "run", "--data", tiny_data, "--checkpoint", tiny_model, "--out", run, "--max-steps", "2",
            "--extra-data", out, "--extra-weight", "5", "--max-seconds", "4", "--set", "data.eval_split=",
            "--set", "eval.save_steps=1000")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((run / "train_config.yaml").read_text())
    mix = saved["resolved"]["extra_data"]
    assert mix["weight"] == 5.0 and mix["extra_rows"] == len(ds)
    assert mix["extra_used"] + mix["extra_dropped_oov"] + mix["extra_dropped_empty"] + mix["extra_over_cap"] == len(ds)
    assert saved["resolved"]["train_clips"] == 12 + mix["extra_used"]
    assert saved["data"]["extra_path"] == str(out)


def _utterance_rows(out) -> list[dict]:
    """OUT/pseudo_utterances.tsv as dicts (every value a string)."""
    lines = (out / "pseudo_utterances.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, ln.split("\t"), strict=True)) for ln in lines[1:]]


def test_confidence_auto_measures_on_labelled_data_and_keeps_by_its_choice(tiny_data, tiny_model, tmp_path, cli):
    out = tmp_path / "pseudo"
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", out, "--split", "train", "--keep-share", "0.5",
            "--min-seconds", "0.1", "--confidence", "auto", "--rank-on", tiny_data, "--rank-split", "dev")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "pseudo_report.json").read_text())
    rk = report["confidence_ranking"]
    assert rk["split"] == "dev" and rk["utterances"] == 4 and set(rk["spearman"]) == set(CONFIDENCES)
    measured = {c: math.nan if v is None else v for c, v in rk["spearman"].items()}
    assert rk["best"] == best_confidence(measured)
    assert rk["chosen"] == (rk["best"] or PseudoLabelConfig.confidence) == report["config"]["confidence"]
    assert f"keeping by {rk['chosen']}" in r.output and rk["chosen"] in (out / "pseudo_report.md").read_text()
    # the kept rows are the top half by the chosen confidence, and carry its value
    rows = _utterance_rows(out)
    kept = [r for r in rows if r["kept"] == "true"]
    scored = [float(r[rk["chosen"]]) for r in rows if r["reason"] != "empty_transcript"]
    assert all(float(r[rk["chosen"]]) >= sorted(scored, reverse=True)[len(kept) - 1] for r in kept)
    import datasets

    ds = datasets.load_from_disk(str(out))["train"]
    by_id = {r["id"]: float(r[rk["chosen"]]) for r in kept}
    assert sorted(ds["id"]) == sorted(by_id)
    assert all(abs(c - by_id[i]) <= 5e-5 for i, c in zip(ds["id"], ds["confidence"], strict=True))  # tsv: 4 decimals
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", tmp_path / "p2", "--confidence", "auto")
    assert r.exit_code == 1 and "--rank-on" in r.output and "Traceback" not in r.output
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", tmp_path / "p2", "--confidence", "auto",
            "--rank-on", tiny_data, "--rank-split", "nosuch")
    assert r.exit_code == 1 and "--rank-split" in r.output and not (tmp_path / "p2").exists()


def test_confidence_auto_keeps_by_the_measured_winner(tiny_data, tiny_model, tmp_path, cli, monkeypatch):
    """A 2-update model ranks nothing (the test above takes the default): plant a measurement in which beam
    ranks best and check the run keeps by beam, and a given --confidence wins over the measurement."""
    import datasets

    import lrl.evaluate.pseudo as pseudo

    planted = {"token_posterior": -0.2, "posterior": 0.1, "beam": -0.6, "agreement": math.nan}
    monkeypatch.setattr(pseudo, "measure_confidences", lambda *a, **k: {
        "utterances": 40, "decoding": "greedy", "spearman": planted, "rows": []})
    out = tmp_path / "auto"
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", out, "--split", "train", "--keep-share", "0.5",
            "--min-seconds", "0.1", "--confidence", "auto", "--rank-on", tiny_data)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "pseudo_report.json").read_text())
    assert report["confidence_ranking"]["chosen"] == "beam" == report["config"]["confidence"]
    assert report["confidence_ranking"]["spearman"]["agreement"] is None  # NaN is no JSON number
    beam = {row["id"]: float(row["beam"]) for row in _utterance_rows(out) if row["kept"] == "true"}
    ds = datasets.load_from_disk(str(out))["train"]
    assert beam and all(abs(c - beam[i]) <= 5e-5 for i, c in zip(ds["id"], ds["confidence"], strict=True))
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", tmp_path / "given", "--split", "train",
            "--min-seconds", "0.1", "--confidence", "posterior", "--rank-on", tiny_data)
    assert r.exit_code == 0, r.output
    rk = json.loads((tmp_path / "given" / "pseudo_report.json").read_text())["confidence_ranking"]
    assert rk["best"] == "beam" and rk["chosen"] == "posterior" and rk["rule"].startswith("given")
    close = {**planted, "beam": -0.25}  # leads token_posterior by 0.05, under 1/sqrt(40 - 2) = 0.16
    monkeypatch.setattr(pseudo, "measure_confidences", lambda *a, **k: {
        "utterances": 40, "decoding": "greedy", "spearman": close, "rows": []})
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", tmp_path / "close", "--split", "train",
            "--min-seconds", "0.1", "--confidence", "auto", "--rank-on", tiny_data)
    assert r.exit_code == 0, r.output
    rk = json.loads((tmp_path / "close" / "pseudo_report.json").read_text())["confidence_ranking"]
    assert rk["best"] == "beam" and rk["chosen"] == PseudoLabelConfig.confidence and "within the noise" in rk["rule"]
    monkeypatch.setattr(pseudo, "measure_confidences", lambda *a, **k: {
        "utterances": 2, "decoding": "greedy", "spearman": planted, "rows": []})
    r = cli("pseudo-label", tiny_model, tiny_data, "--out", tmp_path / "few", "--confidence", "auto",
            "--rank-on", tiny_data)
    assert r.exit_code == 1 and "at least 3" in r.output


def test_unreadable_files_are_reported_not_fatal(tiny_model, tmp_path, cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"not audio at all")
    (bad / "b.flac").write_bytes(b"")
    out = tmp_path / "pseudo"
    r = cli("pseudo-label", tiny_model, bad, "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "pseudo_report.json").read_text())
    assert report["kept"] == 0 and report["dropped"] == {"unreadable": 2}
    import datasets

    assert len(datasets.load_from_disk(str(out))["train"]) == 0  # nothing kept still loads (and trains on L only)
    assert sorted(d["source"].rsplit("/", 1)[1] for d in report["unreadable"]) == ["a.wav", "b.flac"]
    assert "unreadable" in (out / "pseudo_report.md").read_text()
    r = cli("pseudo-label", tiny_model, bad, "--out", out)  # an existing --out needs --overwrite
    assert r.exit_code != 0 and "--overwrite" in r.output


def test_extra_weight_caps_the_extra_hours(tiny_data, tmp_path):
    import datasets

    from lrl.train.config import DataConfig
    from lrl.train.mix import mix_extra

    dd = datasets.load_from_disk(str(tiny_data))
    vocab = Vocab.load(tiny_data / "vocab")
    extra = dd["train"].add_column("confidence", [float(i) for i in range(len(dd["train"]))])
    texts = list(extra["text"])
    texts[-1] = texts[-1] + "\u00e6"  # a character outside the labelled vocabulary: dropped, counted
    extra = extra.remove_columns("text").add_column("text", texts)
    datasets.DatasetDict({"train": extra}).save_to_disk(str(tmp_path / "x"))
    vocab.save(tmp_path / "x" / "vocab")
    labelled = dd["train"].select(range(4))
    mixed, note = mix_extra(labelled, vocab, tmp_path / "x", 1.0)
    assert note["extra_dropped_oov"] == 1 and note["extra_used"] >= 1
    assert note["extra_hours"] <= note["labelled_hours"] + 1e-9
    assert len(mixed) == 4 + note["extra_used"]
    with pytest.raises(ValueError, match="extra_weight"):
        DataConfig(extra_weight=0)
