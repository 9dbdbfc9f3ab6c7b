"""Bad input on the run side (issue 14): what a careless or hostile user hands to `lrl train run`, `lrl pretrain`
and `lrl lm build`, and the outcome each must have: one line of error with its exit code and no traceback, and
on disk either nothing new or the earlier run/LM exactly as it was (a refused resume never rewrites the run's
train_config.yaml, a failed LM build never removes the LM it was replacing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import nan_pretrain_forward
from corpus_fixtures import shared_fsdd_dataset

from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import LrlError

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
pytestmark = pytest.mark.usefixtures("one_thread")

# a 2-3 update run of the tiny model: seconds on a CPU
FAST = ("--max-steps", "2", "--lr", "1e-3", "--max-seconds", "5", "--set", "optim.warmup_steps=1",
        "--set", "eval.eval_steps=1", "--set", "data.test_split=", "--set", "threads=1")


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("LRL_DEBUG", raising=False)  # errors as the user sees them: one line, no traceback


def _one_line_error(res, *needles: str, code: int = 1) -> str:
    """The run failed with `code` and one `error:` line holding every needle, no traceback (the output mixes
    stdout and stderr, so the line need not be the last)."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return shared_fsdd_dataset(tmp_path_factory, n_train=6, n_dev=2)


@pytest.fixture(scope="module")
def finished_run(tiny_data, tiny_ckpt, tmp_path_factory):
    """A 2-update run (checkpoints at 1 and 2), started with --resume on a new --out: (out, CLI result)."""
    from typer.testing import CliRunner

    from lrl.cli import app

    out = tmp_path_factory.mktemp("runs") / "run"
    res = CliRunner().invoke(app, ["train", "run", "--data", str(tiny_data), "--checkpoint", str(tiny_ckpt),
                                   "--out", str(out), "--resume", *FAST], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res


def _copy_dataset(src: Path, dst: Path, n_train: int | None = None, chars: str | None = None) -> Path:
    """A copy of a prepared dataset with fewer train rows and/or another vocabulary."""
    import shutil

    from datasets import load_from_disk

    from lrl.core.text import NormalizerConfig
    from lrl.data.vocab import Vocab

    dsd = load_from_disk(str(src))
    if n_train is not None:
        dsd["train"] = dsd["train"].select(range(n_train))
    dsd.save_to_disk(str(dst))
    vocab = Vocab.load(src / "vocab")
    if chars is None:
        shutil.copytree(src / "vocab", dst / "vocab")
    else:
        Vocab.from_chars("".join(vocab.chars) + chars, NormalizerConfig()).save(dst / "vocab")
    return dst


def _train(cli, data, ckpt, out, *extra):
    return cli("train", "run", "--data", data, "--checkpoint", ckpt, "--out", out, *FAST, *extra)


# -- train run: resume (item 12) --------------------------------------------------------------------------------
def test_resume_with_another_vocabulary_is_refused_before_the_config_is_touched(finished_run, tiny_data, tiny_ckpt,
                                                                                  tmp_path, cli):
    out, _ = finished_run
    other = _copy_dataset(tiny_data, tmp_path / "other-vocab", chars="qy")
    before = {p: p.read_bytes() for p in (out / "train_config.yaml", out / "model.safetensors", out / "metrics.csv")}
    res = _train(cli, other, tiny_ckpt, out, "--resume", "--max-steps", "4")
    _one_line_error(res, "cannot resume", "vocabulary", "new ['q', 'y']", "another --out")
    assert {p: p.read_bytes() for p in before} == before  # the run is as it was, byte for byte
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_resume_with_a_dataset_of_other_clips_is_refused_naming_both(finished_run, tiny_data, tiny_ckpt, tmp_path, cli):
    out, _ = finished_run
    fewer = _copy_dataset(tiny_data, tmp_path / "fewer", n_train=4)
    config = (out / "train_config.yaml").read_bytes()
    res = _train(cli, fewer, tiny_ckpt, out, "--resume", "--max-steps", "4")
    _one_line_error(res, "cannot resume", "6 clips", "has 4", str(fewer))
    assert (out / "train_config.yaml").read_bytes() == config


def test_resume_from_another_start_checkpoint_is_refused(finished_run, tiny_data, tmp_path, cli):
    from lrl.models.checkpoints import init_tiny

    out, _ = finished_run
    other = init_tiny(tmp_path / "other-start", "test", seed=1)
    config = (out / "train_config.yaml").read_bytes()
    res = _train(cli, tiny_data, other, out, "--resume", "--max-steps", "4")
    _one_line_error(res, "cannot resume", "model.checkpoint was", str(other))
    assert (out / "train_config.yaml").read_bytes() == config


def test_resume_on_a_new_out_starts_from_the_beginning(finished_run):
    out, res = finished_run  # --resume with no checkpoint at all is a first run, said so, not an error
    assert "--resume: no complete checkpoint" in res.output and "2 updates" in res.output
    assert (out / "model.safetensors").is_file()


def test_second_run_into_a_finished_run_without_resume_is_refused(finished_run, tiny_data, tiny_ckpt, cli):
    out, _ = finished_run
    config = (out / "train_config.yaml").read_bytes()
    _one_line_error(_train(cli, tiny_data, tiny_ckpt, out), "already holds checkpoints", "--resume")
    assert (out / "train_config.yaml").read_bytes() == config


# -- train run: concurrency -------------------------------------------------------------------------------------
def test_two_train_runs_on_one_out_the_second_fails_fast(tiny_data, tiny_ckpt, tmp_path, cli):
    from lrl.train.run_dir import LOCK_FILE, run_lock

    out = tmp_path / "busy"
    with run_lock(out, "train run"):  # the first run, still writing
        t0 = time.perf_counter()
        res = _train(cli, tiny_data, tiny_ckpt, out)
        waited = time.perf_counter() - t0
    _one_line_error(res, "in use by another run", f"pid {os.getpid()}", "choose another --out")
    assert waited < 5  # fails at once, before loading anything
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the second run wrote nothing


# -- train run: non-finite losses (item 1) ------------------------------------------------------------------------
@pytest.fixture
def poisoned_loss(monkeypatch):
    """Every training loss NaN (what a dataset of NaN clips gives), through the Trainer's own compute_loss."""
    from transformers import Trainer

    real = Trainer.compute_loss

    def nan_loss(self, model, inputs, return_outputs=False, **kw):
        out = real(self, model, inputs, return_outputs=return_outputs, **kw)
        if not model.training:
            return out
        return (out[0] * float("nan"), out[1]) if return_outputs else out * float("nan")

    monkeypatch.setattr(Trainer, "compute_loss", nan_loss)


def test_train_where_every_loss_is_nonfinite_fails_without_writing_a_model(poisoned_loss, tiny_data, tiny_ckpt,
                                                                           tmp_path, cli):
    out = tmp_path / "nan"
    res = _train(cli, tiny_data, tiny_ckpt, out, "--max-steps", "3")
    _one_line_error(res, "every training batch had a non-finite loss (3 skipped)", "no model is written")
    assert not (out / "model.safetensors").exists()


def test_train_stops_after_too_many_nonfinite_losses_in_a_row(poisoned_loss, tiny_data, tiny_ckpt, tmp_path, cli):
    from lrl.train.run_dir import MAX_NONFINITE_IN_A_ROW

    out = tmp_path / "nan-streak"
    res = _train(cli, tiny_data, tiny_ckpt, out, "--max-steps", "50")
    _one_line_error(res, f"{MAX_NONFINITE_IN_A_ROW} training batches in a row had a non-finite loss")
    assert not (out / "model.safetensors").exists()


def test_weights_with_nan_are_never_saved(tiny_ckpt):
    import torch

    from lrl.models.checkpoints import load_for_ctc
    from lrl.train.run_dir import check_finite_weights

    model = load_for_ctc(tiny_ckpt, 8)
    check_finite_weights(model, "x")  # a sound model passes
    with torch.no_grad():
        model.lm_head.bias[0] = float("inf")
    with pytest.raises(LrlError, match="not writing OUT/model.safetensors: parameter lm_head.bias holds NaN/Inf"):
        check_finite_weights(model, "OUT/model.safetensors")


# -- train run: bad settings, refused before anything is created (item 13) ----------------------------------------
@pytest.mark.parametrize(
    "extra, needles, code",
    [
        (("--set", "seed=-1"), ("seed must be an integer in 0..4294967295", "got -1"), 1),
        (("--set", "batching.seed=4294967296"), ("batching.seed must be an integer",), 1),
        (("--set", "max_minutes=NaN"), ("max_minutes: expected a finite number",), 1),
        (("--set", "optim.epochs=-1", "--set", "optim.max_steps=0"), ("set optim.max_steps > 0 or optim.epochs > 0",), 1),
        (("--adapter-lang", "../../escaped"), ("model.adapter_lang must be a language code",), 1),
        (("--max-steps", "0"), ("--max-steps",), 2),  # Typer's own range check: a usage error
    ],
    ids=["seed-1", "batching-seed-2**32", "nan-minutes", "negative-epochs", "adapter-lang-path", "max-steps-0"],
)
def test_bad_setting_is_refused_before_out_is_created(extra, needles, code, tiny_data, tiny_ckpt, tmp_path, cli):
    out = tmp_path / "never"
    res = cli("train", "run", "--data", tiny_data, "--checkpoint", tiny_ckpt, "--out", out, *extra)
    if code == 1:
        _one_line_error(res, *needles)
    else:
        assert res.exit_code == 2 and all(n in res.output for n in needles)
    assert not out.exists()
    assert not list(tmp_path.glob("*escaped*")) and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize(
    "toml, needles",
    [
        ("[optim]\nlrr = 1e-3\n", ("unknown config key(s) ['optim.lrr']",)),
        ('[optim]\nmax_steps = "many"\n', ("optim.max_steps: expected an integer", "'many'")),
        ("seed = 1.5\n", ("seed: expected an integer",)),
    ],
    ids=["unknown-key", "string-for-int", "float-seed"],
)
def test_bad_toml_config_names_the_file_and_the_key(toml, needles, tiny_data, tiny_ckpt, tmp_path, cli):
    path = tmp_path / "run.toml"
    path.write_text(toml, encoding="utf-8")
    res = cli("train", "run", "-c", path, "--data", tiny_data, "--checkpoint", tiny_ckpt, "--out", tmp_path / "o")
    _one_line_error(res, str(path), *needles)
    assert not (tmp_path / "o").exists()


# -- train run: bad data and models ------------------------------------------------------------------------------
def test_data_folder_that_is_not_a_dataset_is_refused(tiny_ckpt, tmp_path, cli):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n")
    _one_line_error(_train(cli, folder, tiny_ckpt, tmp_path / "o"), "not a prepared dataset", "lrl data prepare")
    assert not (tmp_path / "o").exists()


def test_dataset_with_an_empty_train_split_is_refused(tiny_data, tiny_ckpt, tmp_path, cli, monkeypatch):
    import lrl.train.trainer as trainer

    # datasets cannot load a saved split of 0 rows (no Arrow shard): hand train() the loaded form directly
    dsd, vocab = trainer.load_dataset_dir(tiny_data)
    dsd["train"] = dsd["train"].select([])
    monkeypatch.setattr(trainer, "load_dataset_dir", lambda path: (dsd, vocab))
    _one_line_error(_train(cli, tiny_data, tiny_ckpt, tmp_path / "o"), "'train' split", "is empty", "data.train_split")
    assert not (tmp_path / "o").exists()


def test_dataset_without_its_vocab_dir_is_refused(tiny_data, tiny_ckpt, tmp_path, cli):
    import shutil

    novocab = tmp_path / "novocab"
    shutil.copytree(tiny_data, novocab)
    shutil.rmtree(novocab / "vocab")
    _one_line_error(_train(cli, novocab, tiny_ckpt, tmp_path / "o"), "vocab")
    assert not (tmp_path / "o").exists()


def test_checkpoint_that_is_not_wav2vec2_is_refused(tiny_data, tmp_path, cli):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    _one_line_error(_train(cli, tiny_data, bert, tmp_path / "o"), "wav2vec2", "bert")
    assert not (tmp_path / "o").exists()


def test_init_head_from_a_model_of_another_hidden_size_is_refused(tiny_data, tiny_ckpt, tmp_path, cli):
    from transformers import Wav2Vec2ForCTC

    from lrl.data.vocab import Vocab
    from lrl.models.checkpoints import tiny_config

    vocab = Vocab.load(tiny_data / "vocab")
    wide = tmp_path / "wide-ctc"
    Wav2Vec2ForCTC(tiny_config("test", hidden_size=48, vocab_size=len(vocab))).save_pretrained(wide)
    vocab.save(wide)
    res = _train(cli, tiny_data, tiny_ckpt, tmp_path / "o", "--init-head-from", wide)
    _one_line_error(res, "reads 48 features", "hidden size is 32")
    assert not (tmp_path / "o").exists()


# -- pretrain ------------------------------------------------------------------------------------------------
def _noise_clips(folder: Path, seconds: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, s in enumerate(seconds):
        sf.write(folder / f"c{i}.wav", (0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32), SAMPLE_RATE)
    return folder


PRETRAIN_FAST = ("--fresh", "tiny-test", "--batch-size", "2", "--max-seconds", "1.5", "--min-seconds", "1.0",
                 "--warmup", "1", "--save-every", "0", "--freeze-feature-encoder")


def test_pretrain_where_every_loss_is_nonfinite_fails_without_writing_a_model(tmp_path, cli, monkeypatch):
    import lrl.train.pretrain as pretrain

    monkeypatch.setattr(pretrain, "_forward", nan_pretrain_forward())
    clips = _noise_clips(tmp_path / "clips", [1.5] * 4)
    out = tmp_path / "pt"
    res = cli("pretrain", clips, "--out", out, "--steps", "2", *PRETRAIN_FAST)
    _one_line_error(res, "every update of this run (2) had a non-finite loss", "no model is written")
    assert not (out / "model.safetensors").exists()


def test_pretrain_on_a_folder_without_audio_is_refused(tmp_path, cli):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("no audio here\n")
    _one_line_error(cli("pretrain", folder, "--out", tmp_path / "pt", *PRETRAIN_FAST), "no audio files")
    assert not (tmp_path / "pt").exists()


def test_pretrain_on_clips_all_shorter_than_the_minimum_is_refused(tmp_path, cli):
    clips = _noise_clips(tmp_path / "short", [0.3, 0.5, 0.9])
    res = cli("pretrain", clips, "--out", tmp_path / "pt", *PRETRAIN_FAST)
    _one_line_error(res, "no usable audio", "3 shorter than min_seconds=1.0", "lower --min-seconds")
    assert not (tmp_path / "pt").exists()


def test_pretrain_with_a_negative_seed_is_refused(tmp_path, cli):
    clips = _noise_clips(tmp_path / "clips", [1.5])
    _one_line_error(cli("pretrain", clips, "--out", tmp_path / "pt", "--seed", "-1", *PRETRAIN_FAST),
                    "seed must be an integer")
    assert not (tmp_path / "pt").exists()


def test_pretrain_resume_without_checkpoints_is_refused(tmp_path, cli):
    clips = _noise_clips(tmp_path / "clips", [1.5])
    _one_line_error(cli("pretrain", clips, "--out", tmp_path / "pt", "--resume"), "no checkpoint-<step>")
    assert not (tmp_path / "pt").exists()


# -- lm build (item 13) ---------------------------------------------------------------------------------------
@pytest.fixture
def cat_vocab_dir(tmp_path):
    from lrl.data.vocab import build_vocab

    return build_vocab(["the cat sat", "the bat sat"]).vocab.save(tmp_path / "vocab")


@pytest.fixture
def built_lm(tmp_path, cat_vocab_dir, cli):
    """A good 2-gram LM in tmp_path/lm, with a user's file beside it: (out, {file: bytes} before)."""
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\nthe bat sat\nthe cat\n", encoding="utf-8")
    out = tmp_path / "lm"
    assert cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", out, "--order", "2").exit_code == 0
    (out / "notes.md").write_text("mine\n")
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return out, files


def _lm_loads(out: Path) -> None:
    from pyctcdecode import BeamSearchDecoderCTC

    BeamSearchDecoderCTC.load_from_dir(str(out))


def test_failed_lm_rebuild_keeps_the_previous_lm(built_lm, cat_vocab_dir, tmp_path, cli):
    out, before = built_lm
    text = tmp_path / "tiny.txt"
    text.write_text("the cat sat\nthe cat\n", encoding="utf-8")
    # too little text for Kneser-Ney without the fallback: lmplz fails half way through the build
    res = cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", out, "--order", "3", "--no-discount-fallback")
    assert res.exit_code == 1 and "lmplz failed" in res.output and "Traceback" not in res.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    _lm_loads(out)
    assert not list(tmp_path.glob(".lm.lm-build-*"))  # the staging directory is gone


def test_lm_rebuild_swaps_in_the_new_lm_and_leaves_other_files(built_lm, cat_vocab_dir, tmp_path, cli):
    out, before = built_lm
    text = tmp_path / "more.txt"
    text.write_text("the cat sat\nthe bat sat\nthe cat\nthe bat\n", encoding="utf-8")
    res = cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", out, "--order", "2", "--no-keep-arpa")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "lm_build.json").read_text())["text"]["read"] == 4
    assert not (out / "lm.arpa").exists()  # the earlier build's ARPA would be a stale second model
    assert (out / "notes.md").read_text() == "mine\n"
    _lm_loads(out)
    assert not list(tmp_path.glob(".lm.lm-build-*"))


@pytest.mark.parametrize(
    "content, needles",
    [
        ("", ("lm.txt is empty",)),
        ("dog\nfrog\n", ("no LM sentences left", "2 outside the vocabulary")),
    ],
    ids=["empty-file", "no-sentence-in-vocabulary"],
)
def test_lm_build_with_no_usable_text_is_refused(content, needles, cat_vocab_dir, tmp_path, cli):
    text = tmp_path / "lm.txt"
    text.write_text(content, encoding="utf-8")
    _one_line_error(cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", tmp_path / "lm"), *needles)
    assert not (tmp_path / "lm").exists() and not list(tmp_path.glob(".lm.lm-build-*"))


@pytest.mark.parametrize("order", ["1", "12"])
def test_lm_build_order_out_of_range_is_refused(order, cat_vocab_dir, tmp_path, cli):
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    res = cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", tmp_path / "lm", "--order", order)
    _one_line_error(res, "order must be in 2..6", f"got {order}")
    assert not (tmp_path / "lm").exists()


def test_lm_build_without_lmplz_says_how_to_build_it(cat_vocab_dir, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    text = tmp_path / "lm.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    _one_line_error(cli("lm", "build", text, "--vocab", cat_vocab_dir, "--out", tmp_path / "lm"),
                    "`lmplz` was not found", "scripts/setup.sh")
    assert not (tmp_path / "lm").exists()


# -- lm build killed (slow: real processes) ----------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (PID 1 of a container may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _hanging_lm_build(tmp_path: Path, vocab: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    """`lrl lm build` whose lmplz (a stand-in found next to a fake sys.executable) writes its pid and hangs."""
    tools = tmp_path / "tools"
    tools.mkdir()
    pidfile = tmp_path / "lmplz.pid"
    for name in ("lmplz", "build_binary"):
        (tools / name).write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 120\n")
        (tools / name).chmod(0o755)
    text = tmp_path / "new.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    code = "import sys; sys.executable = sys.argv.pop(1); from lrl.cli import app; app()"
    proc = subprocess.Popen([PY, "-c", code, str(tools / "python"), "lm", "build", str(text), "--vocab", str(vocab),
                             "--out", str(out), "--order", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PATH": f"{tools}:/usr/bin:/bin"})
    deadline = time.time() + 60
    while not (pidfile.is_file() and pidfile.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert pidfile.is_file(), proc.communicate()[0]
    return proc, pidfile


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.slow
def test_sigkill_of_lm_build_leaves_no_orphan_lmplz(built_lm, cat_vocab_dir, tmp_path):
    out, _ = built_lm
    proc, pidfile = _hanging_lm_build(tmp_path, cat_vocab_dir, out)
    child = int(pidfile.read_text())
    try:
        proc.kill()
        proc.wait(timeout=10)
        assert _gone_within(child, 5), "lmplz outlived its killed parent"
        _lm_loads(out)  # the old LM was never touched
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_of_lm_build_stops_lmplz_and_removes_its_temp_files(built_lm, cat_vocab_dir, tmp_path):
    out, before = built_lm
    proc, pidfile = _hanging_lm_build(tmp_path, cat_vocab_dir, out)
    child = int(pidfile.read_text())
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode != 0
        assert _gone_within(child, 5), "lmplz outlived a SIGTERM of its parent"
        assert not list(tmp_path.glob(".lm.lm-build-*"))  # staging (corpus, lmplz's -T files) removed
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
