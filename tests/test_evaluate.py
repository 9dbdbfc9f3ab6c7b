"""lrl.evaluate: inference and the log-prob cache, WER/CER evaluation, alpha/beta tuning (on a dev set built so
that pyctcdecode's defaults are wrong), heatmap, and transcription with chunking, on a tiny random Wav2Vec2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from corpus_fixtures import make_eval_cv, yo_vocab
from ctc_helpers import make_logp

from lrl.data.vocab import build_vocab
from lrl.decode.decoder import CTCDecoder, DecoderConfig
from lrl.evaluate.inference import chunked_log_probs, split_log_probs
from lrl.evaluate.scoring import EvaluateConfig, evaluate, score
from lrl.evaluate.transcribe import TranscribeConfig
from lrl.evaluate.tuning import TuneConfig, TunePoint, _best, plot_heatmap, tune, tune_grid

TINY_ARPA = Path(__file__).parent / "data" / "tiny.arpa"
SENTENCES = ["the cat sat", "the bat sat", "sat the cat"]


@pytest.fixture
def cat_vocab():
    return build_vocab(SENTENCES).vocab


def save_tiny_model(directory: Path, vocab, seed: int = 0) -> Path:
    """A random tiny Wav2Vec2ForCTC whose head prefers the blank (peaky, like a trained CTC model)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from lrl.models.checkpoints import tiny_config

    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(tiny_config("test", vocab_size=len(vocab), pad_token_id=0))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        model.lm_head.bias[0] = 4.0
    model.save_pretrained(directory)
    vocab.to_processor().save_pretrained(directory)
    vocab.normalizer.save(directory)
    return directory


@pytest.fixture
def tiny_model(tmp_path, cat_vocab):
    return save_tiny_model(tmp_path / "model", cat_vocab)


def noise_split(split: str, rng):
    """One split following the data contract: 3 noise clips (1, 1.25, 1.5 s) transcribed as SENTENCES."""
    import datasets

    feats = datasets.Features({
        "id": datasets.Value("string"), "audio": datasets.List(datasets.Value("float32")),
        "text": datasets.Value("string"), "sentence": datasets.Value("string"),
        "duration": datasets.Value("float32"), "speaker": datasets.Value("string"),
    })
    rows = {k: [] for k in feats}
    for i, s in enumerate(SENTENCES):
        n = int(16000 * (1.0 + 0.25 * i))
        rows["id"].append(f"{split}-{i}")
        rows["audio"].append((0.1 * rng.standard_normal(n)).astype(np.float32).tolist())
        rows["text"].append(s)
        rows["sentence"].append(s.capitalize() + ".")
        rows["duration"].append(n / 16000)
        rows["speaker"].append("spk")
    return datasets.Dataset.from_dict(rows, features=feats)


@pytest.fixture
def tiny_data(tmp_path, cat_vocab, rng):
    """A prepared dataset following the data contract: dev and test, 3 noise clips each."""
    import datasets

    out = tmp_path / "data"
    datasets.DatasetDict({split: noise_split(split, rng) for split in ("dev", "test")}).save_to_disk(str(out))
    cat_vocab.save(out / "vocab")
    return out


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (EvaluateConfig, dict(split=""), "split must be"),
        (EvaluateConfig, dict(batch_seconds=0), "batch_seconds must be > 0"),
        (EvaluateConfig, dict(max_utterances=0), "max_utterances must be >= 1"),
        (EvaluateConfig, dict(threads=-1), "threads must be >= 0"),
        (EvaluateConfig, dict(lm_workers=-1), "lm_workers must be >= 0"),
        (TuneConfig, dict(alphas=()), "alphas and betas must be non-empty"),
        (TuneConfig, dict(alphas=(-1.0, 1.0)), "alphas must be >= 0"),
        (TuneConfig, dict(beam_widths=(0,)), "beam_widths must be >= 1"),
        (TuneConfig, dict(beam_tolerance=-0.1), "beam_tolerance must be >= 0"),
        (TuneConfig, dict(workers=-2), "workers must be >= 0"),
        (TuneConfig, dict(metric="bleu"), "metric must be one of"),
        (TranscribeConfig, dict(chunk_seconds=0), "chunk_seconds must be > 0"),
        (EvaluateConfig, dict(chunk_seconds=4, stride_seconds=2), r"stride_seconds must be in \[0, chunk_seconds/2"),
        (TranscribeConfig, dict(chunk_seconds=10, stride_seconds=5), r"stride_seconds must be in \[0, chunk_seconds/2"),
    ],
)
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_score_counts_errors_like_jiwer():
    s = score(["the cat sat", "the bat"], ["the bat sat", "the bat sat"])
    assert (s.substitutions, s.deletions, s.insertions, s.ref_words) == (1, 0, 1, 5)
    assert s.wer == pytest.approx(2 / 5)


# -- tuning on constructed log-probs -------------------------------------------------------------
def test_tuning_beats_pyctcdecode_defaults_on_a_dev_set_built_for_it(cat_vocab, tmp_path):
    """'the cat sat' with the acoustics preferring 'b' (two frames: needs alpha > ~1.4) and a clear 'the bat sat' (breaks
    for alpha > ~2.6): the defaults (0.5, 1.5) get the first kind wrong; tuning finds a better alpha."""
    ids = cat_vocab.token_to_id
    weak_c = {4: {ids["b"]: 0.9, ids["c"]: 0.08}}
    clear_b = {4: {ids["b"]: 0.99, ids["c"]: 0.01}}
    logps = [make_logp(cat_vocab, "the cat sat", weak_c) for _ in range(3)]
    logps += [make_logp(cat_vocab, "the bat sat", clear_b) for _ in range(2)]
    refs = ["the cat sat"] * 3 + ["the bat sat"] * 2
    cfg = TuneConfig(alphas=(0.0, 0.5, 1.0, 2.0, 3.0), betas=(0.0, 1.5), beam_widths=(4, 32), workers=2)
    dec = CTCDecoder.from_vocab(cat_vocab, TINY_ARPA, DecoderConfig())
    r = tune_grid(dec, logps, refs, cfg)
    assert r.greedy_wer == pytest.approx(3 / 15)
    assert r.default.wer == pytest.approx(3 / 15)  # the defaults keep greedy's mistakes
    assert r.best.wer == 0.0 and 0.5 < r.best.alpha < 3.0
    wer_at = {(p.alpha, p.beta): p.wer for p in r.coarse}
    assert wer_at[(3.0, 0.0)] > 0  # too much LM breaks the clear "bat"
    assert r.best.beam_width == 4  # the smallest beam with the best WER
    png = plot_heatmap(r, tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    serial = tune_grid(CTCDecoder.from_vocab(cat_vocab, TINY_ARPA), logps, refs,
                       TuneConfig(alphas=cfg.alphas, betas=cfg.betas, beam_widths=cfg.beam_widths, workers=1))
    assert [p.wer for p in serial.coarse] == [p.wer for p in r.coarse]


def test_tuning_for_cer_minimises_cer():
    """The metric decides which point wins; the other one only breaks ties."""
    a = TunePoint(0.5, 1.0, 32, wer=0.20, cer=0.10, seconds=0.0)  # fewer word errors
    b = TunePoint(1.5, 0.0, 32, wer=0.30, cer=0.05, seconds=0.0)  # fewer character errors
    c = TunePoint(2.0, 0.0, 32, wer=0.25, cer=0.05, seconds=0.0)  # b's CER, fewer word errors
    assert _best([a, b], "wer") is a and _best([a, b], "cer") is b and _best([a, b, c], "cer") is c


def test_tune_needs_an_lm(cat_vocab):
    with pytest.raises(Exception, match="needs a language model"):
        tune_grid(CTCDecoder.from_vocab(cat_vocab, None), [], [])


# -- evaluate on a tiny model ------------------------------------------------------------------------
def test_log_prob_cache_is_keyed_by_model_and_data(tiny_model, tiny_data, cat_vocab, tmp_path):
    cfg = EvaluateConfig(split="dev")
    first = split_log_probs(tiny_model, tiny_data, cfg)
    again = split_log_probs(tiny_model, tiny_data, cfg)
    assert not first.cached and again.cached and again.key == first.key
    assert [a.shape for a in again.logps] == [a.shape for a in first.logps]
    assert all(np.array_equal(a, b) for a, b in zip(first.logps, again.logps, strict=True))
    assert all(np.allclose(np.exp(a).sum(axis=1), 1, atol=1e-4) for a in first.logps)  # log-softmax
    assert len(list((tiny_data / ".lrl-cache" / "logits").glob("*.npz"))) == 1
    other = save_tiny_model(tmp_path / "model2", cat_vocab, seed=1)
    assert not split_log_probs(other, tiny_data, cfg).cached  # other weights: recomputed
    assert not split_log_probs(tiny_model, tiny_data, EvaluateConfig(split="test")).cached  # other split


def test_log_prob_cache_key_follows_the_split_files_and_rows(tiny_model, tiny_data, rng, monkeypatch):
    """The key reads public facts of the split (its files' names, sizes and mtimes, and its row count), not
    `datasets`' private fingerprint: fewer rows, the split prepared again (same rows and lengths, new audio)
    and a split loaded into memory (no Arrow files) each get their own key."""
    import datasets

    cfg = EvaluateConfig(split="dev")
    first = split_log_probs(tiny_model, tiny_data, cfg)
    fewer = split_log_probs(tiny_model, tiny_data, EvaluateConfig(split="dev", max_utterances=2))
    assert not fewer.cached and fewer.key != first.key and len(fewer.ids) == 2 and fewer.split_rows == 3
    assert split_log_probs(tiny_model, tiny_data, EvaluateConfig(split="dev", max_utterances=2)).cached
    assert split_log_probs(tiny_model, tiny_data, cfg).cached
    noise_split("dev", rng).save_to_disk(str(tiny_data / "dev"))  # prepared again: only the audio differs
    again = split_log_probs(tiny_model, tiny_data, cfg)
    assert not again.cached and again.key != first.key
    assert not any(np.array_equal(a, b) for a, b in zip(first.logps, again.logps, strict=True))
    monkeypatch.setattr(datasets.config, "IN_MEMORY_MAX_SIZE", 1 << 30)  # load_from_disk keeps the split in memory
    assert datasets.load_from_disk(str(tiny_data))["dev"].cache_files == []
    in_memory = split_log_probs(tiny_model, tiny_data, cfg)
    assert split_log_probs(tiny_model, tiny_data, cfg).cached
    noise_split("dev", rng).save_to_disk(str(tiny_data / "dev"))
    assert not split_log_probs(tiny_model, tiny_data, cfg).key == in_memory.key


def test_log_probs_batched_by_seconds_keep_input_order(tiny_model, rng, one_thread, caplog):
    """Clips go through the model in batches of up to `batch_seconds` of padded audio (core.batching's
    packing); the outputs come back in input order and equal each clip run alone. A clip over the cap runs
    alone, without pack_batches' warning about training clips."""
    import logging

    from lrl.evaluate.inference import AcousticModel

    am = AcousticModel(tiny_model)
    seconds = (1.5, 0.5, 1.0, 0.5, 2.5, 4.0)  # at batch_seconds=3: [0.5, 0.5, 1.0], [1.5], [2.5], [4.0]
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]
    with caplog.at_level(logging.WARNING):
        batched = am.log_probs(waves, batch_seconds=3.0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    alone = [am.log_probs([w])[0] for w in waves]
    assert [len(b) for b in batched] == [len(a) for a in alone]
    assert all(abs(len(b) - len(w) / am.ratio) <= 1 for b, w in zip(batched, waves, strict=True))  # input order
    assert all(np.allclose(b, a, atol=1e-4) for b, a in zip(batched, alone, strict=True))


def test_evaluate_greedy_and_lm_side_by_side(tiny_model, tiny_data, cli):
    res = evaluate(tiny_model, tiny_data, EvaluateConfig(split="test"), lm=TINY_ARPA)
    assert res.n == 3 and res.lm is not None and not res.cached
    lines = (res.out_dir / "utterances.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["id", "duration", "ref", "greedy", "greedy_errors", "lm", "lm_errors"]
    rows = [ln.split("\t") for ln in lines[1:]]
    assert [r[2] for r in rows] == SENTENCES
    assert sum(int(r[4]) for r in rows) == res.greedy.substitutions + res.greedy.deletions + res.greedy.insertions
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["n"] == 3 and summary["rtf_model"] > 0
    out = cli("evaluate", tiny_model, tiny_data, "--split", "test", "--no-lm")
    assert out.exit_code == 0, out.output
    assert "log-probs from the cache" in out.output and "| greedy |" in out.output and "LM beam" not in out.output


def test_evaluate_scores_long_and_oov_rows_and_counts_the_rest(yo_cv, tmp_path, cli, monkeypatch, one_thread):
    """A prepared split with a clip above max_duration and a transcript with letters outside the vocabulary:
    both are scored (the long clip in chunks, the unknown letters as errors); the rows prepare skipped are
    reported as not scored, with their reasons."""
    import jiwer

    import lrl.evaluate.inference
    from lrl.data.prepare import load_prepared, prepare
    from lrl.data.vocab import Vocab

    planted = make_eval_cv(yo_cv, tmp_path / "cv")
    prepare(tmp_path / "cv", tmp_path / "ds", vocab_dir=yo_vocab(yo_cv, tmp_path / "vocab"))
    dd, _ = load_prepared(tmp_path / "ds")
    model = save_tiny_model(tmp_path / "model", Vocab.load(tmp_path / "ds" / "vocab"))
    calls = []
    real_chunked = lrl.evaluate.inference.chunked_log_probs

    def spy(am, wave, config):
        calls.append(len(wave))
        return real_chunked(am, wave, config)

    monkeypatch.setattr(lrl.evaluate.inference, "chunked_log_probs", spy)
    res = evaluate(model, tmp_path / "ds", EvaluateConfig(split="test", cache=False), use_lm=False)
    test = {r["id"]: r for r in dd["test"]}
    long = test[planted["long"]["test"]]
    assert calls == [len(long["audio"])] and res.chunked == 1  # only the clip longer than a chunk
    assert res.n == len(test) and res.not_scored == planted["faults"]["test"]
    assert res.kept_unfiltered == {"oov": 1, "too_long": 1}
    rows = {r[0]: r for r in (ln.split("\t") for ln in (res.out_dir / "utterances.tsv").read_text().splitlines()[1:])}
    assert set(rows) == set(test)
    ref, hyp = rows[planted["oov"]["test"]][2:4]
    unknown = [ch for ch in ref if ch not in Vocab.load(model).chars and ch != " "]
    assert unknown and not set(unknown) & set(hyp)  # the model cannot write them...
    assert jiwer.process_characters(ref, hyp).substitutions + jiwer.process_characters(ref, hyp).deletions >= len(unknown)
    refs, hyps = [r[2] for r in rows.values()], [r[3] for r in rows.values()]
    assert res.greedy.cer == pytest.approx(jiwer.cer(refs, hyps), rel=1e-12)  # ...and they count, as every char
    # the chunked log-probs cover the clip: one frame per 20 ms, give or take one per chunk join
    am = lrl.evaluate.inference.AcousticModel(model)
    lp = split_log_probs(model, tmp_path / "ds", EvaluateConfig(split="test")).logps[list(test).index(long["id"])]
    n_chunks = -(-len(long["audio"]) // (int(EvaluateConfig().chunk_seconds * am.sample_rate) - 2 * int(
        EvaluateConfig().stride_seconds * am.sample_rate)))
    assert abs(len(lp) - len(long["audio"]) / am.ratio) <= n_chunks
    summary = json.loads((res.out_dir / "summary.json").read_text())
    assert summary["not_scored"] == planted["faults"]["test"] and summary["counts"] == res.counts()
    out = cli("evaluate", model, tmp_path / "ds", "--split", "test", "--no-lm", "--max-utterances", str(len(test) - 1))
    assert out.exit_code == 0, out.output
    n_faults = sum(planted["faults"]["test"].values())
    assert f"test: {len(test) - 1} scored, {n_faults + 1} not scored (" in out.output and "max_utterances 1" in out.output
    for reason, n in planted["faults"]["test"].items():
        assert f"{reason} {n}" in out.output
    # lm tune on dev (its long clip chunked too): every dev row is in the tuning set
    calls.clear()
    cfg = TuneConfig(alphas=(0.5,), betas=(1.0,), refine=False, beam_widths=(4,), workers=1)
    tune(model, tmp_path / "ds", lm=TINY_ARPA, split="dev", config=cfg, install=False)
    dev = {r["id"]: r for r in dd["dev"]}
    assert calls == [len(dev[planted["long"]["dev"]]["audio"])]
    assert json.loads((model / "decoder.json").read_text())["n_utterances"] == len(dev)


def test_cli_evaluate_missing_split_is_one_line(tiny_model, tiny_data, cli):
    out = cli("evaluate", tiny_model, tiny_data, "--split", "train")
    assert out.exit_code == 1 and "no split 'train'" in out.output and "Traceback" not in out.output


def test_cli_tune_writes_decoder_config_heatmap_and_hf_loadable_lm(tiny_model, tiny_data, cli):
    out = cli("lm", "tune", tiny_model, tiny_data, "--lm", TINY_ARPA, "--alphas", "0,1,2", "--betas", "0,1",
              "--no-refine", "--beam-widths", "8,16", "--workers", "2")
    assert out.exit_code == 0, out.output
    dj = json.loads((tiny_model / "decoder.json").read_text())
    assert set(dj["dev_wer"]) == {"greedy", "defaults_0.5_1.5", "tuned"}
    assert dj["dev_wer"]["tuned"] <= dj["dev_wer"]["defaults_0.5_1.5"]
    assert dj["beam_width"] in (8, 16) and dj["lm"] == str(tiny_model / "language_model")
    attrs = json.loads((tiny_model / "language_model" / "attrs.json").read_text())
    assert (attrs["alpha"], attrs["beta"]) == (dj["alpha"], dj["beta"])
    assert (tiny_model / "tune-dev" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    grid = (tiny_model / "tune-dev" / "grid.tsv").read_text().splitlines()
    assert sum(ln.startswith("coarse\t") for ln in grid) == 6
    from transformers import Wav2Vec2ProcessorWithLM

    proc = Wav2Vec2ProcessorWithLM.from_pretrained(str(tiny_model))
    assert proc.language_model.alpha == dj["alpha"]
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(tiny_model))
    assert asr.type == "ctc_with_lm"  # the pipeline attaches the installed LM
    # evaluate now finds the installed LM and its tuned settings on its own
    res = evaluate(tiny_model, tiny_data, EvaluateConfig(split="dev"))
    assert res.cached and res.decoder["alpha"] == dj["alpha"] and res.decoder["beam_width"] == dj["beam_width"]
    # pseudo-labels decoded with this WER-tuned LM: the report says so and suggests tuning for CER
    out = cli("pseudo-label", tiny_model, tiny_data, "--split", "dev", "--out", tiny_model.parent / "pseudo",
              "--min-seconds", "0.1")
    assert out.exit_code == 0, out.output
    report = json.loads((tiny_model.parent / "pseudo" / "pseudo_report.json").read_text())
    assert report["decoding"] == "lm" and report["lm_tuned_for"] == "wer"
    assert "--metric cer" in (tiny_model.parent / "pseudo" / "pseudo_report.md").read_text()
    out = cli("lm", "tune", tiny_model, tiny_data, "--lm", TINY_ARPA, "--alphas", "0,1,2", "--betas", "0,1",
              "--no-refine", "--beam-widths", "8,16", "--workers", "2", "--metric", "cer")
    assert out.exit_code == 0, out.output
    assert "dev CER: greedy" in out.output
    dj = json.loads((tiny_model / "decoder.json").read_text())
    assert dj["tuned_for"] == "cer" and set(dj["dev_cer"]) == {"greedy", "defaults_0.5_1.5", "tuned"}
    rows = [ln.split("\t") for ln in (tiny_model / "tune-dev" / "grid.tsv").read_text().splitlines()[1:]]
    coarse = {(float(r[1]), float(r[2])): float(r[5]) for r in rows if r[0] == "coarse"}
    assert coarse[(dj["alpha"], dj["beta"])] == min(coarse.values())  # the grid's lowest CER (at the grid beam)
    beams = [float(r[5]) for r in rows if r[0] == "beam"]
    assert dj["dev_cer"]["tuned"] == pytest.approx(min(beams), abs=1e-6)  # then the beam with the lowest CER


# -- transcription ------------------------------------------------------------------------------------
class _PositionModel:
    """Stub acoustic model: frame k of an input holds the absolute sample index of its centre."""

    sample_rate, ratio = 16000, 320

    def log_probs(self, waves, batch_seconds=60.0):
        return [np.stack([w[self.ratio // 2::self.ratio][: len(w) // self.ratio]] * 2, axis=1) for w in waves]


def test_chunk_merge_keeps_every_frame_once():
    wave = np.arange(int(16000 * 53.3), dtype=np.float64)
    merged = chunked_log_probs(_PositionModel(), wave, TranscribeConfig(chunk_seconds=10, stride_seconds=2))
    centres = merged[:, 0]
    assert np.all(np.diff(centres) == 320)  # contiguous: no frame lost or repeated at chunk joins
    assert centres[0] == 160 and len(merged) == len(wave) // 320


def test_cli_transcribe_long_audio_json_word_times(tiny_model, tmp_path, rng, cli):
    import soundfile as sf

    from lrl.evaluate.inference import AcousticModel

    folder = tmp_path / "audio"
    folder.mkdir()
    wave = (0.1 * rng.standard_normal(16000 * 23)).astype(np.float32)
    sf.write(folder / "long.wav", wave, 16000)
    sf.write(folder / "short.flac", wave[:16000], 16000)
    am = AcousticModel(tiny_model)
    chunked = chunked_log_probs(am, wave, TranscribeConfig(chunk_seconds=10, stride_seconds=1))
    assert abs(len(chunked) - len(am.log_probs([wave])[0])) <= 2
    out = cli("transcribe", tiny_model, folder, "--json", "--chunk-seconds", "10", "--stride-seconds", "1", "--lm", TINY_ARPA)
    assert out.exit_code == 0, out.output
    objs = [json.loads(ln) for ln in out.output.splitlines() if ln.startswith("{")]
    assert [Path(o["path"]).name for o in objs] == ["long.wav", "short.flac"]
    assert objs[0]["duration"] == pytest.approx(23.0)
    for o in objs:
        assert o["text"] == " ".join(w["word"] for w in o["words"])
        assert all(0 <= w["start"] < w["end"] <= o["duration"] + 0.05 for w in o["words"])
