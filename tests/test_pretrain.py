"""lrl.train.pretrain: config validation, the Gumbel schedule and its no-decay warning, collapse detection,
crops from audio folders and prepared datasets, and short real runs on yo-cv clips (loss, logging,
resume, collapse, CTC loading)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import nan_pretrain_forward

from lrl.train.pretrain import (
    LOG_COLUMNS,
    PretrainConfig,
    check_temperature_decay,
    collect_crops,
    detect_collapse,
    gumbel_temperature,
    run_pretraining,
)

# A short CPU run: 1.5 s crops, 4 per batch, conv front end frozen (a third cheaper on this CPU), the
# Gumbel schedule compressed so it is visible in 12 updates, a checkpoint half way for the resume test.
FAST = PretrainConfig(
    max_steps=12, batch_size=4, learning_rate=2e-3, warmup_steps=2, max_seconds=1.5, min_seconds=1.0,
    gumbel_min_at_step=12, save_every=6, log_every=4, probe_crops=8, collapse_window=4, seed=0,
    freeze_feature_encoder=True,
)
SHARED_DATA = Path(os.environ.get("LRL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of 8 real Yoruba Common Voice clips (mp3, 32 kHz, ~10 s each)."""
    yo = SHARED_DATA / "yo-cv" / "clips"
    if not yo.is_dir():
        pytest.skip(f"shared data not found at {yo}")
    folder = tmp_path_factory.mktemp("clips")
    for name in sorted(p.name for p in yo.glob("*.mp3"))[:8]:
        (folder / name).symlink_to(yo / name)
    return folder


@pytest.fixture(scope="module")
def fast_run(clips, tmp_path_factory):
    """One FAST run from a tiny checkpoint with its own SpecAugment settings: (checkpoint, out, result)."""
    from lrl.models.checkpoints import init_tiny

    root = tmp_path_factory.mktemp("run")
    ckpt = init_tiny(root / "start", "test", mask_feature_prob=0.1, mask_time_prob=0.07)
    result = run_pretraining([clips], root / "out", FAST, model=ckpt)
    return ckpt, root / "out", result


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run faster on one thread when the cores are shared (OpenMP spin-waits)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _log(out: Path) -> list[dict]:
    with open(out / "pretrain_log.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------- config
def test_defaults_are_the_wav2vec2_recipe():
    c = PretrainConfig()
    assert (c.mask_time_prob, c.mask_time_length, c.num_negatives) == (0.65, 10, 100)
    assert (c.logit_temperature, c.diversity_weight) == (0.1, 0.1)
    assert (c.max_gumbel_temperature, c.min_gumbel_temperature, c.gumbel_decay) == (2.0, 0.5, 0.999995)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("max_steps", 0, "max_steps must be >= 1"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("grad_accum", 0, "grad_accum must be >= 1"),
        ("warmup_steps", -1, "warmup_steps must be >= 0"),
        ("log_every", 0, "log_every must be >= 1"),
        ("learning_rate", 0.0, "learning_rate must be > 0"),
        ("max_grad_norm", -1.0, "max_grad_norm must be >= 0"),
        ("mask_time_prob", 0.0, r"mask_time_prob must be in \(0, 1\]"),
        ("mask_time_prob", 1.5, r"mask_time_prob must be in \(0, 1\]"),
        ("logit_temperature", 0.0, "logit_temperature must be > 0"),
        ("min_gumbel_temperature", 3.0, "min_gumbel_temperature must be in"),
        ("gumbel_decay", 1.01, r"gumbel_decay must be in \(0, 1\]"),
        ("gumbel_min_at_step", 0, "gumbel_min_at_step must be >= 1"),
        ("adam_eps", -1.0, "adam_eps must be >= 0"),
        ("min_seconds", 20.0, "min_seconds must be in"),
        ("adam_betas", (0.9, 1.0), "adam_betas must be two numbers"),
        ("splits", (), "splits must name at least one split"),
        ("collapse_perplexity", 0.5, "collapse_perplexity must be >= 1"),
    ],
)
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(**{field: value})


# ----------------------------------------------------------------------------------------- schedule
def test_gumbel_decay_and_min_at_step_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        PretrainConfig(gumbel_decay=0.99, gumbel_min_at_step=100)


def test_gumbel_temperature_follows_the_schedule():
    c = PretrainConfig()
    assert gumbel_temperature(0, c) == 2.0
    assert gumbel_temperature(1000, c) == pytest.approx(2.0 * 0.999995**1000)
    assert gumbel_temperature(10**7, c) == 0.5  # floored
    # "reach the floor at step N": the decay is derived from the range
    c = PretrainConfig(gumbel_min_at_step=100)
    assert c.decay == pytest.approx(0.25 ** (1 / 100))
    temps = [gumbel_temperature(s, c) for s in range(120)]
    assert temps[100] == pytest.approx(0.5) and temps[99] > 0.5 and temps[119] == 0.5
    assert all(a >= b for a, b in zip(temps, temps[1:], strict=False))


def test_no_decay_warning():
    # the recipe's decay over a short run stays at ~2.0 (SpeechBrain #1503): warn, with the fix
    msg = check_temperature_decay(PretrainConfig(max_steps=1000))
    assert msg and "gumbel_min_at_step" in msg and "277" in msg
    assert "never" in check_temperature_decay(PretrainConfig(max_steps=1000, gumbel_decay=1.0))
    assert check_temperature_decay(PretrainConfig(max_steps=1000, gumbel_min_at_step=800)) is None
    assert check_temperature_decay(PretrainConfig(max_steps=400_000)) is None


def test_detect_collapse_on_perplexity_series():
    healthy = [40.0, 38.0, 35.0, 36.0, 37.0]
    collapsed = healthy + [2.1, 2.0, 2.0, 2.0]  # two groups, ~one code each
    assert not detect_collapse(healthy, num_groups=2, window=4, threshold=1.5)
    assert detect_collapse(collapsed, num_groups=2, window=4, threshold=1.5)
    assert not detect_collapse(collapsed[:-1], num_groups=2, window=4, threshold=1.5)  # only 3 in the window
    assert not detect_collapse([2.0, 2.0], num_groups=2, window=4, threshold=1.5)  # too short to judge
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        detect_collapse(collapsed, num_groups=0, window=4, threshold=1.5)


# ----------------------------------------------------------------------------------------- inputs
def test_collect_crops_from_a_folder_counts_what_it_drops(clips, tmp_path):
    import soundfile as sf

    folder = tmp_path / "mixed"
    shutil.copytree(clips, folder, symlinks=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.mp3").write_text("not audio")
    sf.write(folder / "short.wav", np.zeros(8000, dtype=np.float32), 16000)  # 0.5 s < min_seconds
    cfg = replace(FAST, max_seconds=2.0)
    crops, stats = collect_crops([folder], cfg)
    assert stats.files == 9 and stats.unreadable == 2 and stats.too_short == 1
    assert len(stats.unreadable_examples) == 2
    assert stats.crops == len(crops) > 8  # ~10 s clips give several 2 s crops each
    lengths = [len(c) for c in crops]
    assert max(lengths) <= 2 * 16000 and min(lengths) >= 16000
    assert all(c.dtype == np.float32 for c in crops)
    assert stats.seconds == pytest.approx(sum(lengths) / 16000)


def test_collect_crops_from_a_prepared_dataset(tmp_path, rng):
    from datasets import Dataset, DatasetDict, Features, List, Value

    feats = Features({"id": Value("string"), "audio": List(Value("float32")), "text": Value("string")})

    def split(lengths):
        return Dataset.from_dict(
            {"id": [str(i) for i in range(len(lengths))],
             "audio": [rng.standard_normal(n).astype(np.float32) for n in lengths],
             "text": ["x"] * len(lengths)},
            features=feats,
        )

    DatasetDict({"train": split([48000, 20000, 8000]), "dev": split([32000])}).save_to_disk(tmp_path / "ds")
    cfg = replace(FAST, max_seconds=2.0, min_seconds=1.0)
    crops, stats = collect_crops([tmp_path / "ds"], cfg)
    # 3 s -> 2 s + 1 s; 1.25 s -> one crop; 0.5 s dropped; dev not read by default
    assert stats.dataset_rows == 3 and stats.too_short == 1
    assert sorted(len(c) for c in crops) == [16000, 20000, 32000]
    crops, stats = collect_crops([tmp_path / "ds"], replace(cfg, splits=("train", "dev")))
    assert stats.dataset_rows == 4 and len(crops) == 4
    from lrl.core.io import LrlError

    with pytest.raises(LrlError, match="none of the splits"):
        collect_crops([tmp_path / "ds"], replace(cfg, splits=("test",)))


def test_no_usable_audio_raises(tmp_path):
    from lrl.core.io import LrlError

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.wav").write_bytes(b"RIFF")
    with pytest.raises(LrlError, match="no usable audio"):
        collect_crops([tmp_path / "a"], FAST)
    (tmp_path / "b").mkdir()
    with pytest.raises(LrlError, match="no audio files"):
        collect_crops([tmp_path / "b"], FAST)


def test_micro_batches_cover_each_crop_once_per_epoch_and_are_reproducible():
    from lrl.train.pretrain import _micro_indices

    n, bs = 10, 4  # 3 micro-batches per epoch, the last one short
    epoch0 = [_micro_indices(n, bs, m, seed=7) for m in range(3)]
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(n))
    epoch1 = np.concatenate([_micro_indices(n, bs, m, seed=7) for m in range(3, 6)])
    assert sorted(epoch1.tolist()) == list(range(n)) and not np.array_equal(epoch1, np.concatenate(epoch0))
    assert np.array_equal(_micro_indices(n, bs, 4, seed=7), _micro_indices(n, bs, 4, seed=7))


# ----------------------------------------------------------------------------------------- runs
def test_short_run_lowers_contrastive_loss_and_logs(fast_run):
    _, out, result = fast_run
    # fixed batch, fixed masks and negatives, eval mode: the contrastive loss went down
    assert result.probe_after < result.probe_before - 0.05
    # ... without collapsing the codebook (a collapsed one makes every distractor equal the target)
    assert not result.collapse_warned and result.final_perplexity > 2 * 2
    rows = _log(out)
    assert list(rows[0]) == list(LOG_COLUMNS) and len(rows) == FAST.max_steps
    for r in rows:
        s = int(r["step"])
        assert float(r["temperature"]) == pytest.approx(gumbel_temperature(s, FAST), rel=1e-5)
        ppl = float(r["perplexity"])
        assert math.isfinite(ppl) and 1.0 <= ppl <= 2 * 32  # 2 groups x 32 codes in the tiny model
        assert 0.2 < float(r["masked_share"]) < 0.8
        assert math.isfinite(float(r["contrastive"])) and float(r["diversity"]) >= 0
    assert float(rows[0]["lr"]) == 0.0 and float(rows[2]["lr"]) == pytest.approx(FAST.learning_rate)
    assert float(rows[-1]["temperature"]) < 0.6  # the compressed schedule is visible
    assert result.final_perplexity == pytest.approx(float(rows[-1]["perplexity"]), rel=1e-4)
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["steps"] == FAST.max_steps and summary["inputs"]["files"] == 8
    assert (out / "checkpoint-6" / "optimizer.pt").is_file()


def test_output_loads_for_ctc_with_only_the_head_missing(fast_run, caplog):
    from transformers import Wav2Vec2ForCTC

    from lrl.models.checkpoints import load_for_ctc

    _, out, _ = fast_run
    model, info = Wav2Vec2ForCTC.from_pretrained(out, output_loading_info=True)
    assert set(info["missing_keys"]) == {"lm_head.weight", "lm_head.bias"}
    assert info["unexpected_keys"] and all(
        k.startswith(("quantizer.", "project_q.", "project_hid.")) for k in info["unexpected_keys"]
    )
    assert not info["mismatched_keys"]
    # the checkpoint's own SpecAugment settings, not pretraining's masking, are what fine-tuning inherits
    assert model.config.mask_feature_prob == 0.1 and model.config.mask_time_prob == 0.07
    # ... and through the train stage's loader, without a warning about weights
    caplog.clear()  # (the direct load above logs transformers' own report)
    with caplog.at_level(logging.WARNING):
        ctc = load_for_ctc(out, vocab_size=12)
    assert ctc.lm_head.out_features == 12
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_resume_continues_the_schedule_and_the_run_exactly(fast_run, clips, tmp_path):
    _, full, _ = fast_run
    # an interrupted run: only the step-6 checkpoint and the log up to step 7 survive
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "checkpoint-6", part / "checkpoint-6")
    with open(part / "pretrain_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
        w.writeheader()
        w.writerows(_log(full)[:8])  # two rows past the checkpoint: they must be replaced
    result = run_pretraining([clips], part, replace(FAST, probe_crops=0), resume=True)
    assert result.start_step == 6

    a, b = _log(full), _log(part)
    assert [r["step"] for r in b] == [str(s) for s in range(FAST.max_steps)]
    for ra, rb in zip(a[6:], b[6:], strict=True):
        assert float(rb["temperature"]) == float(ra["temperature"]) == pytest.approx(
            gumbel_temperature(int(ra["step"]), FAST), rel=1e-5
        )
        assert float(rb["lr"]) == pytest.approx(float(ra["lr"]))
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-4)


def test_collapse_warning_on_a_collapsed_codebook(fast_run, clips, tmp_path, caplog):
    import torch
    from transformers import Wav2Vec2ForPreTraining

    start, _, _ = fast_run
    m = Wav2Vec2ForPreTraining.from_pretrained(start)
    groups, per_group = m.config.num_codevector_groups, m.config.num_codevectors_per_group
    with torch.no_grad():  # every frame picks code 0 of each group, by a wide margin
        m.quantizer.weight_proj.weight.zero_()
        m.quantizer.weight_proj.bias.fill_(-50.0)
        m.quantizer.weight_proj.bias[torch.arange(groups) * per_group] = 50.0
    m.save_pretrained(tmp_path / "collapsed")
    cfg = replace(FAST, max_steps=3, learning_rate=1e-9, collapse_window=3, probe_crops=0, save_every=0)
    with caplog.at_level(logging.WARNING, logger="lrl.train.pretrain"):
        result = run_pretraining([clips], tmp_path / "out", cfg, model=tmp_path / "collapsed")
    assert result.collapse_warned
    assert result.final_perplexity == pytest.approx(groups, rel=0.01)
    assert any("codebook collapse" in r.getMessage() for r in caplog.records)


def test_pickle_checkpoint_needs_allow_pickle(fast_run, clips, tmp_path):
    import torch
    from safetensors.torch import load_file

    from lrl.core.io import LrlError

    start, _, _ = fast_run
    pkl = tmp_path / "pickled"  # the same checkpoint as an old-style pytorch_model.bin
    pkl.mkdir()
    shutil.copy(start / "config.json", pkl / "config.json")
    torch.save(load_file(str(start / "model.safetensors")), pkl / "pytorch_model.bin")
    cfg = replace(FAST, max_steps=1, save_every=0, probe_crops=0)
    with pytest.raises(LrlError, match="--allow-pickle"):
        run_pretraining([clips], tmp_path / "a", cfg, model=pkl)
    assert run_pretraining([clips], tmp_path / "b", cfg, model=pkl, allow_pickle=True).steps == 1


def test_run_guards(clips, tmp_path):
    from lrl.core.io import LrlError

    with pytest.raises(ValueError, match="exactly one of"):
        run_pretraining([clips], tmp_path / "x", FAST)
    with pytest.raises(ValueError, match="--fresh must be one of"):
        run_pretraining([clips], tmp_path / "x", FAST, fresh="huge")
    with pytest.raises(LrlError, match="no checkpoint"):
        run_pretraining([clips], tmp_path / "x", FAST, fresh="tiny-test", resume=True)
    with pytest.raises(ValueError, match="mask_time_length"):
        run_pretraining([clips], tmp_path / "x", replace(FAST, min_seconds=0.2), fresh="tiny-test")


# ----------------------------------------------------------------------------------------- CLI
def test_cli_pretrain(cli, clips, tmp_path):
    out = tmp_path / "out"
    args = ["pretrain", clips, "--fresh", "tiny-test", "--out", out, "--steps", "2", "--batch-size", "2", "--grad-accum", "2",
            "--max-seconds", "1", "--min-seconds", "1", "--warmup", "1", "--lr", "1e-3", "--freeze-feature-encoder",
            "--tensorboard"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "crops" in r.output and "updates 0->2" in r.output and "temperature" in r.output
    assert (out / "model.safetensors").is_file() and len(_log(out)) == 2
    assert list((out / "runs").glob("events.out.tfevents*"))
    again = cli(*args)  # the same --out without --resume: one line, no traceback
    assert again.exit_code == 1 and "already holds a pretraining run" in again.output
    assert "Traceback" not in again.output


# ----------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_pretrained_output_starts_lrl_train_without_weight_warnings(clips, tmp_path, caplog):
    """Prepared dataset (the data contract) -> pretrain on its train split -> CTC fine-tuning from the output."""
    import datasets

    from lrl.core.audio import load_audio
    from lrl.core.io import read_table
    from lrl.core.text import Normalizer, NormalizerConfig
    from lrl.data.vocab import Vocab
    from lrl.train.config import load_config
    from lrl.train.trainer import train

    _, rows = read_table(SHARED_DATA / "yo-cv" / "train.tsv")
    norm = Normalizer(NormalizerConfig())
    feats = datasets.Features({
        "id": datasets.Value("string"), "audio": datasets.List(datasets.Value("float32")),
        "text": datasets.Value("string"), "sentence": datasets.Value("string"),
        "duration": datasets.Value("float64"), "speaker": datasets.Value("string"),
    })
    recs = []
    for r in rows[:10]:
        wav = load_audio(SHARED_DATA / "yo-cv" / "clips" / r["path"])
        recs.append({"id": r["path"], "audio": wav, "text": norm(r["sentence"]), "sentence": r["sentence"],
                     "duration": len(wav) / 16000, "speaker": "s1"})

    def split(rs):
        return datasets.Dataset.from_dict({k: [x[k] for x in rs] for k in feats}, features=feats)

    ds_dir = tmp_path / "yo"
    datasets.DatasetDict({"train": split(recs[:8]), "dev": split(recs[8:])}).save_to_disk(str(ds_dir))
    Vocab.from_chars("".join(x["text"] for x in recs), NormalizerConfig()).save(ds_dir / "vocab")

    pt = tmp_path / "pt"
    cfg = replace(FAST, max_steps=6, gumbel_min_at_step=6, save_every=0, probe_crops=0)
    result = run_pretraining([ds_dir], pt, cfg, fresh="tiny-test")
    assert result.inputs.dataset_rows == 8  # the train split only

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lrl"):
        tr = train(load_config(None, {
            "data.path": str(ds_dir), "model.checkpoint": str(pt), "output_dir": str(tmp_path / "ctc"),
            "optim.max_steps": 2, "optim.warmup_steps": 1, "eval.eval_steps": 2, "eval.logging_steps": 1,
        }))
    assert tr.global_step == 2
    weight_warnings = [r.getMessage() for r in caplog.records
                       if any(w in r.getMessage() for w in ("not used", "start random", "different shape"))]
    assert not weight_warnings


def test_nonfinite_losses_skip_the_update_then_stop_the_run(fast_run, clips, tmp_path, monkeypatch, caplog):
    import torch
    from safetensors.torch import load_file

    import lrl.train.pretrain as pretrain
    from lrl.core.io import LrlError

    start, _, _ = fast_run
    real, poisoned = pretrain._forward, nan_pretrain_forward()
    monkeypatch.setattr(pretrain, "_forward", poisoned)
    cfg = replace(FAST, max_steps=2, save_every=0, probe_crops=0)
    with caplog.at_level(logging.WARNING, logger="lrl.train.pretrain"), \
            pytest.raises(LrlError, match=r"every update of this run \(2\) had a non-finite loss"):
        run_pretraining([clips], tmp_path / "a", cfg, model=start)
    assert sum("non-finite loss" in r.getMessage() for r in caplog.records) == 2
    assert not (tmp_path / "a" / "model.safetensors").exists()  # nothing learned: no model is written
    cfg3 = replace(cfg, max_steps=3, save_every=1)
    real_update = pretrain._update
    monkeypatch.setattr(pretrain, "_forward", real)  # a sound first update, then every loss non-finite
    calls = []

    def late_poison(net, fe, crops, step, *args):
        if calls:
            monkeypatch.setattr(pretrain, "_forward", poisoned)
        calls.append(step)
        return real_update(net, fe, crops, step, *args)

    monkeypatch.setattr(pretrain, "_update", late_poison)
    run_pretraining([clips], tmp_path / "c", cfg3, model=start)
    saved1 = load_file(tmp_path / "c" / "checkpoint-1" / "model.safetensors")
    saved2 = load_file(tmp_path / "c" / "checkpoint-2" / "model.safetensors")
    after = load_file(tmp_path / "c" / "model.safetensors")
    assert all(torch.equal(saved1[k], saved2[k]) and torch.equal(saved1[k], after[k]) for k in saved1)  # skipped
    monkeypatch.setattr(pretrain, "_update", real_update)
    monkeypatch.setattr(pretrain, "_forward", poisoned)
    with pytest.raises(LrlError, match="5 updates in a row had a non-finite loss"):
        run_pretraining([clips], tmp_path / "b", replace(cfg, max_steps=8), model=start)


def test_time_budget_stops_early_and_still_writes_the_model(clips, tmp_path):
    cfg = replace(FAST, max_steps=50, save_every=0, probe_crops=0, max_minutes=1e-6)
    res = run_pretraining([clips], tmp_path / "t", cfg, fresh="tiny-test")
    assert res.steps == 1  # the budget is spent before the first update ends
    assert (tmp_path / "t" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="max_minutes"):
        replace(FAST, max_minutes=-1)
