"""Bad input on the model side: `lrl evaluate`, `lrl transcribe` and `lrl lm tune` given broken, foreign or
hostile model directories, LMs and audio. Each test builds one bad input in tmp_path from a tiny CTC model
(built once per module) and asserts the outcome: a one-line error naming the file and exit code 1 (no
traceback), or the good files done and each bad one reported, and what is on disk afterwards."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers in tests/

from test_evaluate import SENTENCES, TINY_ARPA, noise_split, save_tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# -- fixtures, built once per module ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab():
    from lrl.data.vocab import build_vocab

    return build_vocab(SENTENCES).vocab


@pytest.fixture(scope="module")
def model_src(tmp_path_factory, vocab):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "model", vocab)


@pytest.fixture
def model(model_src, tmp_path):
    """A fresh copy of the tiny CTC model directory, for a test to break."""
    return Path(shutil.copytree(model_src, tmp_path / "model"))


@pytest.fixture(scope="module")
def data_src(tmp_path_factory, vocab):
    import datasets

    out = tmp_path_factory.mktemp("data") / "data"
    rng = np.random.default_rng(0)
    datasets.DatasetDict({s: noise_split(s, rng) for s in ("dev", "test")}).save_to_disk(str(out))
    vocab.save(out / "vocab")
    return out


@pytest.fixture
def data(data_src, tmp_path):
    return Path(shutil.copytree(data_src, tmp_path / "data"))


@pytest.fixture(scope="module")
def good_wav(tmp_path_factory):
    import soundfile as sf

    path = tmp_path_factory.mktemp("audio") / "good.wav"
    sf.write(path, (0.1 * np.random.default_rng(1).standard_normal(16000)).astype(np.float32), 16000)
    return path


def one_line_error(out, *needles: str, code: int = 1) -> str:
    """The result failed with exit `code`, one `error:` line holding every needle, and no traceback."""
    assert out.exit_code == code, out.output
    assert "Traceback" not in out.output, out.output
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def stdout_rows(out) -> list[str]:
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


class _Payload:
    """A pickle that, when loaded without weights_only, creates `marker` (stands for any code it might run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def pickle_only(model: Path, malicious: Path | None = None) -> Path:
    """Replace the model's safetensors weights with pytorch_model.bin: its real weights, or a payload."""
    import torch
    from safetensors.torch import load_file

    if malicious is None:
        torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    else:
        (model / "pytorch_model.bin").write_bytes(pickle.dumps({"lm_head.weight": _Payload(malicious)}))
    (model / "model.safetensors").unlink()
    return model


# -- 1: non-finite audio ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_audio_is_refused_in_transcribe(model, good_wav, tmp_path, cli, bad):
    import soundfile as sf

    wave = np.zeros(16000, np.float32)
    wave[100] = bad
    sf.write(tmp_path / "nan.wav", wave, 16000, subtype="FLOAT")
    out = cli("transcribe", model, tmp_path / "nan.wav", "--no-lm")
    one_line_error(out, "nan.wav", "NaN or infinite")
    assert stdout_rows(out) == []
    both = cli("transcribe", model, good_wav, tmp_path / "nan.wav", "--no-lm")
    assert both.exit_code == 1 and [r.split("\t")[0] for r in stdout_rows(both)] == [str(good_wav)]


def test_nan_rows_are_not_scored_in_evaluate(model, data, cli):
    import datasets

    dd = datasets.load_from_disk(str(data))
    test = dd["test"].to_dict()
    test["audio"][1][5] = float("nan")
    datasets.Dataset.from_dict(test, features=dd["test"].features).save_to_disk(str(data / "test.new"))
    shutil.rmtree(data / "test")
    (data / "test.new").rename(data / "test")
    out = cli("evaluate", model, data, "--split", "test", "--no-lm")
    assert out.exit_code == 0, out.output
    assert "test: 2 scored, 1 not scored (non_finite 1)" in out.stdout
    assert "test-1" in out.stderr and "NaN or infinite" in out.stderr
    summary = json.loads((model / "eval-test" / "summary.json").read_text())
    assert summary["not_scored"] == {"non_finite": 1} and summary["n"] == 2
    rows = (model / "eval-test" / "utterances.tsv").read_text().splitlines()[1:]
    assert [r.split("\t")[0] for r in rows] == ["test-0", "test-2"]
    again = cli("evaluate", model, data, "--split", "test", "--no-lm")  # from the cache: the same count
    assert "log-probs from the cache" in again.stdout and "(non_finite 1)" in again.stdout


# -- 5: pickle weights ---------------------------------------------------------------------------------------
def test_pickle_weights_refused_in_transcribe(model, good_wav, tmp_path, cli):
    marker = tmp_path / "pwned"
    pickle_only(model, malicious=marker)
    one_line_error(cli("transcribe", model, good_wav), "pytorch_model.bin", "--allow-pickle")
    assert not marker.exists()


def test_pickle_weights_refused_in_evaluate_and_lm_tune(model, data, tmp_path, cli):
    pickle_only(model)
    one_line_error(cli("evaluate", model, data, "--no-lm"), "pytorch_model.bin", "--allow-pickle")
    one_line_error(cli("lm", "tune", model, data, "--lm", TINY_ARPA), "pytorch_model.bin", "--allow-pickle")
    assert not (model / "eval-test").exists() and not (model / "decoder.json").exists()
    assert not (data / ".lrl-cache").exists()


def test_malicious_pickle_with_allow_pickle_is_one_line_error(model, good_wav, tmp_path, cli):
    marker = tmp_path / "pwned"
    pickle_only(model, malicious=marker)
    one_line_error(cli("transcribe", model, good_wav, "--allow-pickle"), "pytorch_model.bin")
    assert not marker.exists()  # weights-only unpickling: the payload never ran


def test_trusted_pickle_loads_with_allow_pickle(model, data, good_wav, cli):
    pickle_only(model)
    out = cli("transcribe", model, good_wav, "--no-lm", "--allow-pickle")
    assert out.exit_code == 0, out.output
    assert stdout_rows(out)[0].startswith(f"{good_wav}\t")
    out = cli("evaluate", model, data, "--no-lm", "--allow-pickle")
    assert out.exit_code == 0 and "test: 3 scored" in out.stdout, out.output


# -- 7: truncated or corrupt weights ------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.999, 4])
def test_truncated_safetensors_is_one_line_error(model, data, good_wav, cli, keep):
    weights = model / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: int(len(raw) * keep) if keep < 1 else keep])
    one_line_error(cli("transcribe", model, good_wav), "model.safetensors", "truncated or corrupt")
    one_line_error(cli("evaluate", model, data, "--no-lm"), "model.safetensors", "truncated or corrupt")
    assert not (model / "eval-test").exists()


# -- 8: a vocabulary that is not the head's ----------------------------------------------------------------
def test_vocab_that_does_not_match_the_head_is_refused(model, data, good_wav, cli, vocab):
    t2i = json.loads((model / "vocab.json").read_text())
    t2i.update({"x": len(t2i), "y": len(t2i) + 1})
    (model / "vocab.json").write_text(json.dumps(t2i))
    msg = f"{len(vocab) + 2} tokens but the model's head has {len(vocab)} outputs"
    one_line_error(cli("transcribe", model, good_wav), "vocab.json", msg)
    one_line_error(cli("evaluate", model, data, "--no-lm"), "vocab.json", msg)
    one_line_error(cli("lm", "tune", model, data, "--lm", TINY_ARPA), "vocab.json", msg)


def test_vocab_mismatch_is_refused_even_with_cached_log_probs(model, data, cli):
    assert cli("evaluate", model, data, "--no-lm").exit_code == 0
    t2i = json.loads((model / "vocab.json").read_text())
    (model / "vocab.json").write_text(json.dumps({t: i for t, i in t2i.items() if i < len(t2i) - 1}))
    one_line_error(cli("evaluate", model, data, "--no-lm"), "vocab.json", "but the model's head has")


def test_log_prob_cache_key_follows_the_vocabulary(model, data):
    from lrl.evaluate.inference import split_log_probs
    from lrl.evaluate.scoring import EvaluateConfig

    first = split_log_probs(model, data, EvaluateConfig(split="dev"))
    tokens = [t for t, _ in sorted(json.loads((model / "vocab.json").read_text()).items(), key=lambda kv: kv[1])]
    swapped = [*tokens[:3], *reversed(tokens[3:])]  # same size and special tokens, another token map
    (model / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(swapped)}))
    again = split_log_probs(model, data, EvaluateConfig(split="dev"))
    assert not again.cached and again.key != first.key
    assert len(list((data / ".lrl-cache" / "logits").glob("*.npz"))) == 2


# -- 9: a folder with bad files ------------------------------------------------------------------------------
@pytest.fixture
def mixed_folder(tmp_path, good_wav):
    import soundfile as sf

    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(good_wav, folder / "a_good.wav")
    (folder / "b_empty.wav").write_bytes(b"")
    (folder / "c_text.wav").write_text("not audio at all\n" * 50)
    nan = np.zeros(8000, np.float32)
    nan[3] = np.nan
    sf.write(folder / "d_nan.wav", nan, 16000, subtype="FLOAT")
    (folder / "e_badheader.mp3").write_bytes(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + bytes(range(256)) * 40)
    shutil.copy(good_wav, folder / "f_good.wav")
    return folder


BAD = ("b_empty.wav", "c_text.wav", "d_nan.wav", "e_badheader.mp3")


def test_transcribe_folder_keeps_going_past_bad_files(model, mixed_folder, cli):
    out = cli("transcribe", model, mixed_folder, "--no-lm")
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    assert [Path(r.split("\t")[0]).name for r in stdout_rows(out)] == ["a_good.wav", "f_good.wav"]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    for name in BAD:
        assert sum(name in ln for ln in errors) == 1, (name, out.stderr)
    assert errors[-1] == "error: 4 of 6 files could not be transcribed"
    assert len(errors) == 5


def test_transcribe_json_lines_with_bad_files(model, mixed_folder, cli):
    out = cli("transcribe", model, mixed_folder, "--no-lm", "--json")
    assert out.exit_code == 1
    objs = [json.loads(ln) for ln in stdout_rows(out)]  # every stdout line is one JSON object
    assert [Path(o["path"]).name for o in objs] == ["a_good.wav", "f_good.wav"]


def test_transcribe_yields_each_file_before_reading_the_next(model, mixed_folder, monkeypatch):
    import lrl.core.audio
    from lrl.evaluate.transcribe import TranscribeConfig, TranscribeFailure, iter_transcripts

    read = []
    real = lrl.core.audio.load_audio
    monkeypatch.setattr(lrl.core.audio, "load_audio", lambda p, sr=16000: read.append(Path(p).name) or real(p, sr))
    it = iter_transcripts(model, [mixed_folder], TranscribeConfig(use_lm=False))
    first = next(it)
    assert Path(first.path).name == "a_good.wav" and read == ["a_good.wav"]
    second = next(it)
    assert isinstance(second, TranscribeFailure) and "b_empty.wav" in second.error
    assert [type(x).__name__ for x in it] == ["TranscribeFailure"] * 3 + ["Transcript"]


def test_transcribe_folder_without_audio_is_one_line_error(model, tmp_path, cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    one_line_error(cli("transcribe", model, tmp_path / "empty"), "no audio files", "empty")


# -- odd but valid audio -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", [0.05, 0.005])
def test_very_short_clip_is_transcribed(model, tmp_path, cli, seconds):
    import soundfile as sf

    sf.write(tmp_path / "short.wav", np.full(int(16000 * seconds), 0.1, np.float32), 16000)
    out = cli("transcribe", model, tmp_path / "short.wav", "--no-lm", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(stdout_rows(out)[0])["duration"] == pytest.approx(seconds, abs=1e-3)


def test_ten_minutes_of_silence_runs_in_chunks(model, tmp_path, cli, monkeypatch):
    import soundfile as sf

    import lrl.evaluate.inference as inference

    sf.write(tmp_path / "silence.flac", np.zeros(16000 * 600, np.float32), 16000)
    longest = []
    real = inference.AcousticModel.log_probs

    def spy(self, waves, batch_seconds=60.0):
        longest.append(max(len(w) for w in waves))
        return real(self, waves, batch_seconds)

    monkeypatch.setattr(inference.AcousticModel, "log_probs", spy)
    out = cli("transcribe", model, tmp_path / "silence.flac", "--no-lm", "--json", "--chunk-seconds", "60",
              "--stride-seconds", "1")
    assert out.exit_code == 0, out.output
    o = json.loads(stdout_rows(out)[0])
    assert o["duration"] == pytest.approx(600) and isinstance(o["text"], str)  # a random model: any text
    assert len(longest) == 11 and max(longest) <= 16000 * 60  # 58 s steps + 1 s context: never the whole file


# -- broken model directories ----------------------------------------------------------------------------------
def _bert_config(model):
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))


def _no_config(model):
    (model / "config.json").unlink()


def _config_not_json(model):
    (model / "config.json").write_text("{ not json")


def _config_latin1(model):
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_bytes(json.dumps({**cfg, "name": "modèle"}, ensure_ascii=False).encode("latin-1"))


def _vocab_not_json(model):
    (model / "vocab.json").write_text('{"[PAD]": 0, ')


def _vocab_latin1(model):
    (model / "vocab.json").write_bytes((model / "vocab.json").read_text().encode("utf-8") + "é".encode("latin-1"))


def _vocab_list(model):
    (model / "vocab.json").write_text('["[PAD]", "[UNK]", "|"]')


def _normalizer_latin1(model):
    (model / "normalizer.json").write_bytes(b'{"language": "\xe9"}')


def _normalizer_not_json(model):
    (model / "normalizer.json").write_text("[1, 2")


def _processor_not_json(model):
    (model / "processor_config.json").write_text("{")


def _no_head(model):
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(model / "model.safetensors").items() if not k.startswith("lm_head.")}
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


def _no_vocab(model):
    (model / "vocab.json").unlink()


@pytest.mark.parametrize("breaks, needles", [
    (_bert_config, ("config.json", "wav2vec2", "bert")),
    (_no_config, ("no config.json",)),
    (_config_not_json, ("config.json", "UTF-8 JSON")),
    (_config_latin1, ("config.json", "UTF-8")),
    (_vocab_not_json, ("vocab.json",)),
    (_vocab_latin1, ("vocab.json",)),
    (_vocab_list, ("vocab.json",)),
    (_no_vocab, ("vocab.json",)),
    (_normalizer_latin1, ("normalizer.json",)),
    (_normalizer_not_json, ("normalizer.json",)),
    (_processor_not_json, ("processor_config.json",)),
    (_no_head, ("model.safetensors", "no CTC head")),
])
def test_broken_model_dir_is_one_line_error(model, data, good_wav, cli, breaks, needles):
    breaks(model)
    one_line_error(cli("transcribe", model, good_wav), *needles)
    one_line_error(cli("evaluate", model, data, "--no-lm"), *needles)
    assert not (model / "eval-test").exists()


def test_model_path_that_is_a_file_or_missing_is_a_usage_error(model, good_wav, tmp_path, cli):
    for path in (tmp_path / "nowhere", good_wav):
        out = cli("transcribe", path, good_wav)
        assert out.exit_code == 2 and "Traceback" not in out.output


def test_pretraining_checkpoint_is_not_a_ctc_model(tiny_ckpt, good_wav, cli):
    one_line_error(cli("transcribe", tiny_ckpt, good_wav), "no CTC head", "lrl train run")


# -- LMs: tuned values of another LM, broken LM directories ------------------------------------------------
def _other_arpa(tmp_path) -> Path:
    path = tmp_path / "other" / "lm.arpa"
    path.parent.mkdir()
    path.write_text(TINY_ARPA.read_text().replace("-2.0\tbat", "-1.2\tbat"))
    return path


def test_tuned_alpha_beta_not_reused_with_another_lm(model, data, tmp_path, cli):
    tuned = cli("lm", "tune", model, data, "--lm", TINY_ARPA, "--alphas", "2.5", "--betas=-2", "--no-refine",
                "--beam-widths", "8", "--workers", "1")
    assert tuned.exit_code == 0, tuned.output
    dj = json.loads((model / "decoder.json").read_text())
    assert (dj["alpha"], dj["beta"]) == (2.5, -2.0) and len(dj["lm_identity"]) == 64
    same = cli("evaluate", model, data, "--workers", "1")  # the installed, tuned LM: its values
    assert same.exit_code == 0 and "alpha=2.5 beta=-2" in same.stdout, same.output
    assert "tuned on another LM" not in same.stderr
    other = _other_arpa(tmp_path)
    out = cli("evaluate", model, data, "--lm", other, "--workers", "1")
    assert out.exit_code == 0, out.output
    assert "alpha=0.5 beta=1.5" in out.stdout
    assert "tuned on another LM" in out.stderr and "lrl lm tune" in out.stderr
    assert json.loads((model / "decoder.json").read_text()) == dj  # the tuned record is kept


def test_lm_dir_without_binary_is_one_line_error(model, data, tmp_path, cli):
    from lrl.data.vocab import Vocab
    from lrl.decode.lm import install_lm

    install_lm(TINY_ARPA, tmp_path / "holder", Vocab.load(model), 0.5, 1.5)
    lm_dir = tmp_path / "holder" / "language_model"
    (lm_dir / "tiny.arpa").unlink()
    one_line_error(cli("evaluate", model, data, "--lm", lm_dir), "language_model", "lrl lm build")


@pytest.mark.parametrize("content", [b"", b"mmap lm binary? no" * 10])
def test_corrupt_lm_binary_is_one_line_error(model, data, tmp_path, cli, content, good_wav):
    lm_dir = tmp_path / "lm"
    lm_dir.mkdir()
    (lm_dir / "lm.bin").write_bytes(content)
    (lm_dir / "unigrams.txt").write_text("the\ncat\n")
    (lm_dir / "attrs.json").write_text('{"alpha": 0.5, "beta": 1.5}')
    one_line_error(cli("evaluate", model, data, "--lm", lm_dir, "--workers", "1"), "lm.bin", "lrl lm build")
    one_line_error(cli("transcribe", model, good_wav, "--lm", lm_dir), "lm.bin", "lrl lm build")
