"""lrl.core.audio and lrl.data.prepare on real clips: decoding, planted faults, resumable output, manifests, cards."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from corpus_fixtures import copy_cv, fsdd_manifest, make_eval_cv, make_faulty_cv, yo_vocab

from lrl.core.audio import AudioError, load_audio
from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import LrlError
from lrl.data.prepare import PrepareConfig, load_prepared, prepare

ROOT = Path(__file__).resolve().parents[1]


def _skipped(out: Path) -> list[dict]:
    with open(out / "skipped.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# -- audio --------------------------------------------------------------------------------------------
def test_load_audio_resamples_mp3_and_wav(yo_cv, shared_data):
    import soundfile as sf

    mp3 = next((yo_cv / "clips").glob("*.mp3"))
    info = sf.info(str(mp3))
    x = load_audio(mp3)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - info.frames * SAMPLE_RATE / info.samplerate) <= 2
    wav = shared_data / "fsdd" / "recordings" / "0_george_0.wav"
    y = load_audio(wav)
    assert abs(len(y) - sf.info(str(wav)).frames * 2) <= 2  # 8 kHz -> 16 kHz
    assert 0 < np.abs(y).max() <= 1.0


def test_load_audio_stereo_is_averaged(tmp_path, rng):
    import soundfile as sf

    st = rng.uniform(-0.5, 0.5, size=(8000, 2)).astype(np.float32)
    sf.write(tmp_path / "st.wav", st, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav"), st.mean(axis=1), atol=1e-6)


def test_load_audio_ffmpeg_fallback(yo_cv, tmp_path):
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    mp3 = next((yo_cv / "clips").glob("*.mp3"))
    m4a = tmp_path / "x.m4a"  # AAC: libsndfile cannot read it
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(mp3), str(m4a)], check=True)
    ref, got = load_audio(mp3), load_audio(m4a)
    assert got.dtype == np.float32 and abs(len(got) - len(ref)) < 0.05 * SAMPLE_RATE


@pytest.mark.parametrize("name,content,reason", [
    ("empty.mp3", b"", "empty_file"),
    ("text.mp3", b"hello, not audio\n" * 10, "not_audio"),
    ("nothere.wav", None, "missing"),
])
def test_load_audio_errors(tmp_path, name, content, reason):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(AudioError) as e:
        load_audio(p)
    assert e.value.reason == reason


def test_load_audio_truncated_mp3(yo_cv, tmp_path):
    mp3 = next((yo_cv / "clips").glob("*.mp3")).read_bytes()
    (tmp_path / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])
    with pytest.raises(AudioError, match="header announces") as e:
        load_audio(tmp_path / "cut.mp3")
    assert e.value.reason == "truncated"


# -- config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(min_duration=5.0, max_duration=2.0), "min_duration"),
    (dict(min_duration=-1.0), "min_duration"),
    (dict(max_chars_per_second=0), "max_chars_per_second"),
    (dict(oov="map"), "oov"),
    (dict(num_proc=0), "num_proc"),
    (dict(splits=()), "splits"),
    (dict(splits=("train", "train")), "splits"),
])
def test_prepare_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrepareConfig(**kwargs)


# -- planted faults -----------------------------------------------------------------------------------
def test_planted_faults_give_exact_rows_and_reasons(yo_cv, tmp_path):
    expected = make_faulty_cv(yo_cv, tmp_path / "cv")
    out = tmp_path / "ds"
    summary = prepare(tmp_path / "cv", out, PrepareConfig(num_proc=2))
    dd, vocab = load_prepared(out)
    assert {s: list(dd[s]["id"]) for s in dd} == expected["kept"]
    got = Counter((r["split"], r["id"], r["reason"]) for r in _skipped(out))
    assert got == Counter(expected["skipped"])
    for split, rid, reason in expected["unfiltered"]:
        assert summary["splits"][split]["kept_unfiltered"] == {reason: 1} and rid in dd[split]["id"]
    for split, n in expected["read"].items():
        s = summary["splits"][split]
        assert s["kept"] + sum(s["skipped"].values()) == n == s["read"]
    assert "ж" not in vocab.chars  # built from train only
    assert any("both train and" in w for w in summary["warnings"]) is False  # speakers differ across splits
    x = dd["train"].with_format("numpy")[0]
    assert x["audio"].dtype == np.float32 and abs(x["duration"] - len(x["audio"]) / SAMPLE_RATE) < 1e-9


def test_filter_eval_applies_the_content_filters_to_dev_too(yo_cv, tmp_path):
    expected = make_faulty_cv(yo_cv, tmp_path / "cv")
    summary = prepare(tmp_path / "cv", tmp_path / "ds", PrepareConfig(filter_eval=True))
    got = Counter((r["split"], r["id"], r["reason"]) for r in _skipped(tmp_path / "ds"))
    assert got == Counter(expected["skipped"] + expected["unfiltered"])
    assert all(not s["kept_unfiltered"] for s in summary["splits"].values())


def test_eval_splits_keep_long_and_oov_rows_that_train_drops(yo_cv, tmp_path):
    planted = make_eval_cv(yo_cv, tmp_path / "cv")
    vocab_dir = yo_vocab(yo_cv, tmp_path / "vocab")
    cfg = PrepareConfig()
    summary = prepare(tmp_path / "cv", tmp_path / "ds", cfg, vocab_dir=vocab_dir)
    dd, vocab = load_prepared(tmp_path / "ds")
    skipped = {(r["split"], r["id"]): r["reason"] for r in _skipped(tmp_path / "ds")}
    assert skipped[("train", planted["long"]["train"])] == "too_long"
    assert skipped[("train", planted["oov"]["train"])] == "oov"
    assert summary["splits"]["train"]["kept_unfiltered"] == {}
    for split in ("dev", "test"):
        rows = {r["id"]: r for r in dd[split]}
        oov_text = rows[planted["oov"][split]]["text"]
        assert vocab.oov_chars(oov_text) and oov_text.split()[0] == "жук"  # normalised, the word kept whole
        assert rows[planted["long"][split]]["duration"] > cfg.max_duration
        assert summary["splits"][split]["kept_unfiltered"] == {"oov": 1, "too_long": 1}
        assert summary["splits"][split]["skipped"] == planted["faults"].get(split, {})  # hard faults still skip
    strict = prepare(tmp_path / "cv", tmp_path / "strict", PrepareConfig(filter_eval=True), vocab_dir=vocab_dir)
    for split in ("dev", "test"):
        s = strict["splits"][split]
        assert s["kept"] == summary["splits"][split]["kept"] - 2 and s["kept_unfiltered"] == {}
        assert s["skipped"] == {**planted["faults"].get(split, {}), "oov": 1, "too_long": 1}


def test_oov_unk_keeps_row_and_vocab_dir_is_used(yo_cv, tmp_path):
    make_faulty_cv(yo_cv, tmp_path / "cv")
    prepare(tmp_path / "cv", tmp_path / "a", PrepareConfig())
    summary = prepare(tmp_path / "cv", tmp_path / "b", PrepareConfig(oov="unk", splits=("dev",)),
                      vocab_dir=tmp_path / "a" / "vocab")
    dd, vocab = load_prepared(tmp_path / "b")
    assert list(dd) == ["dev"] and len(dd["dev"]) == 2
    assert summary["vocab"]["source"] == str(tmp_path / "a" / "vocab")
    assert any(1 in vocab.encode(t) for t in dd["dev"]["text"])  # [UNK] id
    assert (tmp_path / "b" / "vocab" / "normalizer.json").is_file()


def test_rerun_reuses_and_changed_input_needs_overwrite(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=4, n_dev=1)
    out = tmp_path / "ds"
    first = prepare(src, out, PrepareConfig())
    again = prepare(src, out, PrepareConfig(num_proc=2))  # num_proc does not change the output
    assert again["reused"] and again["fingerprint"] == first["fingerprint"]
    clip = next((src / "clips").glob("*.mp3"))
    os.utime(clip, ns=(clip.stat().st_atime_ns, clip.stat().st_mtime_ns + 10**9))
    with pytest.raises(LrlError, match="--overwrite"):
        prepare(src, out, PrepareConfig())
    third = prepare(src, out, PrepareConfig(overwrite=True))
    assert not third.get("reused") and third["fingerprint"] != first["fingerprint"]
    assert not list(tmp_path.glob("ds.*"))  # no tmp/old directories left


def test_refuses_to_replace_foreign_directory(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LrlError, match="not a dataset made by"):
        prepare(src, tmp_path / "mine", PrepareConfig(overwrite=True))
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_train_from_validated_holds_out_dev_and_test(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3, n_dev=2, n_test=2)
    rows = (src / "train.tsv").read_text().splitlines()
    rows += (src / "dev.tsv").read_text().splitlines()[1:] + (src / "test.tsv").read_text().splitlines()[1:]
    (src / "validated.tsv").write_text("\n".join(rows) + "\n")
    summary = prepare(src, tmp_path / "ds", PrepareConfig(train_from_validated=True))
    assert summary["splits"]["train"]["read"] == 7
    assert summary["splits"]["train"]["skipped"] == {"held_out": 4}
    assert summary["splits"]["train"]["kept"] == 3


def test_old_cv_schema_accent_column(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    lines = (src / "train.tsv").read_text().splitlines()
    header = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent"]
    old = ["\t".join(header)]
    for line in lines[1:]:
        r = dict(zip(lines[0].split("\t"), line.split("\t"), strict=False))
        old.append("\t".join([r["client_id"], r["path"], r["sentence"] + ' "quoted', "2", "0", "", "", "yoruba"]))
    (src / "train.tsv").write_text("\n".join(old) + "\n")
    dd, _ = load_prepared(prepare(src, tmp_path / "ds", PrepareConfig(splits=("train",))) and tmp_path / "ds")
    assert list(dd["train"]["accents"]) == ["yoruba", "yoruba"]
    assert all(s.endswith('"quoted') for s in dd["train"]["sentence"])


# -- other inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tsv", ".jsonl"])
def test_fsdd_manifest(shared_data, tmp_path, suffix):
    manifest = fsdd_manifest(shared_data / "fsdd", tmp_path / "fsdd", n=12, suffix=suffix)
    summary = prepare(manifest, tmp_path / "ds", PrepareConfig(min_duration=0.1))
    dd, vocab = load_prepared(tmp_path / "ds")
    assert set(dd) <= {"train", "test"} and summary["total"]["read"] == 12
    assert sum(len(d) for d in dd.values()) + summary["total"]["skipped"] == 12
    assert set("".join(dd["train"]["text"])) <= set(vocab.chars) | {" "}


def test_audio_folder_with_txt(shared_data, tmp_path):
    import shutil

    src = tmp_path / "folder"
    for split, names in {"train": ["0_george_10", "1_jackson_10"], "test": ["0_theo_0"]}.items():
        (src / split).mkdir(parents=True)
        for n in names:
            shutil.copy(shared_data / "fsdd" / "recordings" / f"{n}.wav", src / split / f"{n}.wav")
            (src / split / f"{n}.txt").write_text(["zero", "one", "two"][int(n[0])] + "\n")
    (src / "train" / "1_jackson_10.txt").unlink()
    shutil.copy(shared_data / "fsdd" / "recordings" / "0_lucas_10.wav", src / "train" / "latin1.wav")
    (src / "train" / "latin1.txt").write_bytes("z\xe9ro\n".encode("latin-1"))
    summary = prepare(src, tmp_path / "ds", PrepareConfig(min_duration=0.1))
    dd, _ = load_prepared(tmp_path / "ds")
    assert list(dd["train"]["id"]) == ["train/0_george_10"] and list(dd["test"]["text"]) == ["zero"]
    assert summary["splits"]["train"]["skipped"] == {"missing_transcript": 2}
    details = {r["id"]: r["detail"] for r in _skipped(tmp_path / "ds")}
    assert "not UTF-8" in details["train/latin1"]


def test_manifest_faults_and_digit_policy(shared_data, tmp_path):
    from lrl.core.text import NormalizerConfig
    from lrl.data.vocab import build_vocab

    manifest = fsdd_manifest(shared_data / "fsdd", tmp_path / "m", n=4)
    lines = manifest.read_text().splitlines()
    first = lines[1].split("\t")
    lines += ["\t".join(["", "zero", "x", "train"]),                       # no path
              "\t".join([str(shared_data / "fsdd" / first[0]), "zero", "x", "train"]),  # absolute
              "\t".join([first[0], "zero 0", "x", "test"])]                 # digits (its clip is also row 1)
    manifest.write_text("\n".join(lines) + "\n")
    build_vocab(["zero one two three four five six seven eight nine"], NormalizerConfig(digits="drop")).vocab.save(tmp_path / "v")
    summary = prepare(manifest, tmp_path / "ds", PrepareConfig(min_duration=0.1), vocab_dir=tmp_path / "v")
    reasons = Counter(r["reason"] for r in _skipped(tmp_path / "ds"))
    assert reasons["no_path"] == 1 and reasons["unsafe_path"] == 1 and reasons["digits"] == 1
    assert summary["total"]["read"] == 7 == summary["total"]["kept"] + summary["total"]["skipped"]
    assert "duplicate" not in reasons  # the copy with digits is skipped for them, the clean copy is kept


def test_interrupted_run_removes_its_tmp_dir(yo_cv, tmp_path, monkeypatch):
    import lrl.data.prepare

    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lrl.data.prepare, "_run_chunks", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "ds", PrepareConfig())
    assert list(tmp_path.iterdir()) == [tmp_path / "cv"]


# -- killed runs --------------------------------------------------------------------------------------
def test_sigkill_midrun_leaves_no_dataset_and_rerun_matches(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=80, n_dev=4)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lrl", "-q", "data", "prepare", str(src), "--out", str(out), "--no-card"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    tmp = tmp_path / f"ds.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not tmp.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.2)
    assert proc.poll() is None, "prepare finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists() and tmp.exists()

    subprocess.run(cmd, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    assert not tmp.exists()  # the rerun removed the dead run's directory
    prepare(src, tmp_path / "ref", PrepareConfig(num_proc=2))  # uninterrupted, in parallel
    got, _ = load_prepared(out)
    ref, _ = load_prepared(tmp_path / "ref")
    assert list(got) == list(ref)
    for split in ref:
        a, b = got[split].with_format("numpy"), ref[split].with_format("numpy")
        assert list(a["id"]) == list(b["id"]) and list(a["text"]) == list(b["text"])
        for x, y in zip(a["audio"], b["audio"], strict=True):
            np.testing.assert_array_equal(x, y)


# -- the real corpus through the CLI ------------------------------------------------------------------
def test_yo_cv_cli_hours_match_clip_durations(yo_cv, tmp_path, cli):
    import datasets

    out = tmp_path / "yo"
    res = cli("data", "prepare", yo_cv, "--out", out, "--num-proc", "2", "--card-dir", tmp_path / "cards",
              "--licence", "mit")
    assert res.exit_code == 0, res.output
    assert "kept +" in res.output
    written = json.loads((out / "summary.json").read_text())
    check = written["clip_durations"]
    assert check["compared"] == written["total"]["kept"] and check["mismatched"] == 0
    dd = datasets.load_from_disk(str(out))
    ms = dict(line.split("\t") for line in (yo_cv / "clip_durations.tsv").read_text().splitlines()[1:])
    for split in ("train", "dev", "test"):
        ds = dd[split]
        want = sum(int(ms[f"{i}.mp3"]) for i in ds["id"]) / 3.6e6
        got = sum(ds["duration"]) / 3600
        assert abs(got - want) / want < 0.01
        assert ds.features["audio"].feature.dtype == "float32"
    summary = json.loads((out / "summary.json").read_text())
    read = sum(1 for t in ("train", "dev", "test") for _ in (yo_cv / f"{t}.tsv").read_text().splitlines()[1:])
    assert summary["total"]["kept"] + summary["total"]["skipped"] == read
    card = (tmp_path / "cards" / "yo-cv.md").read_text()
    assert "license: mit" in card and "- yo" in card and "automatic-speech-recognition" in card
    assert (tmp_path / "cards" / "yo-cv_durations.png").stat().st_size > 1000
    again = cli("data", "prepare", yo_cv, "--out", out, "--no-card")
    assert "reused" in again.output


def test_cli_user_errors_are_one_line(tmp_path, cli):
    (tmp_path / "m.tsv").write_text("wavfile\tsentence\nx.wav\thello\n")
    res = cli("data", "prepare", tmp_path / "m.tsv", "--out", tmp_path / "o")
    assert res.exit_code == 1 and "--audio-column" in res.output and "Traceback" not in res.output
    res = cli("data", "card", tmp_path)
    assert res.exit_code == 1 and "not a prepared dataset" in res.output


def test_handwritten_features_match_installed_datasets(yo_cv, tmp_path):
    import datasets
    import pyarrow as pa

    from lrl.core.hf_datasets import arrow_schema
    from lrl.data.prepare import _features

    feats = _features(["locale"])
    expected = datasets.Features({
        "id": datasets.Value("string"), "audio": datasets.List(datasets.Value("float32")),
        "text": datasets.Value("string"), "sentence": datasets.Value("string"),
        "duration": datasets.Value("float64"), "speaker": datasets.Value("string"), "locale": datasets.Value("string"),
    })
    assert datasets.Features.from_dict(feats) == expected
    assert arrow_schema(feats).equals(expected.arrow_schema, check_metadata=True)
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    prepare(src, tmp_path / "ds", PrepareConfig())
    dd, _ = load_prepared(tmp_path / "ds")
    ds = dd["train"]
    assert ds.features["audio"] == datasets.List(datasets.Value("float32"))
    assert ds.data.schema.field("audio").type == pa.list_(pa.float32())
    assert ds.to_pandas().shape[0] == 2


def test_card_lists_skips_and_characters(yo_cv, tmp_path, cli):
    from huggingface_hub import DatasetCard

    expected = make_faulty_cv(yo_cv, tmp_path / "cv")
    prepare(tmp_path / "cv", tmp_path / "ds", PrepareConfig(licence="cc0-1.0"))
    res = cli("data", "card", tmp_path / "ds", "--out", tmp_path / "cards", "--name", "faulty")
    assert res.exit_code == 0, res.output
    card = DatasetCard.load(tmp_path / "cards" / "faulty.md")
    assert card.data.license == "cc0-1.0" and card.data.language == ["yo"]
    assert card.data.task_categories == ["automatic-speech-recognition"]
    for reason in {r for _, _, r in expected["skipped"]}:
        assert f"| {reason} " in card.text or f" {reason} |" in card.text
    assert "LATIN SMALL LETTER O WITH DOT BELOW" in card.text
    assert "## Kept for scoring" in card.text and "dev: 1 oov" in card.text  # the OOV dev row, kept
    assert f"lrl data prepare {tmp_path / 'cv'} --out ds --licence cc0-1.0" in card.text
    assert (tmp_path / "cards" / "faulty_chars_per_second.png").is_file()


@pytest.mark.slow
def test_fsdd_full_manifest_through_cli(shared_data, tmp_path, cli):
    out = tmp_path / "fsdd"
    res = cli("data", "prepare", shared_data / "fsdd" / "metadata.tsv", "--out", out, "--min-duration", "0.1",
              "--num-proc", "2", "--card-dir", tmp_path / "cards", "--licence", "cc-by-sa-4.0")
    assert res.exit_code == 0, res.output
    dd, vocab = load_prepared(out)
    n_rows = len((shared_data / "fsdd" / "metadata.tsv").read_text().splitlines()) - 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["read"] == n_rows == sum(len(d) for d in dd.values()) + summary["total"]["skipped"]
    assert set(dd) == {"train", "test"} and summary["splits"]["test"]["speakers"] == 6
    assert set("".join(dd["test"]["text"])) <= set(vocab.chars) | {" "}


def test_a_manifest_whose_every_train_row_is_unusable_says_why(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tsentence\n../../etc/passwd\thello\n/etc/passwd\tagain\n", encoding="utf-8")
    with pytest.raises(LrlError, match=r"no usable train rows.*2 unsafe_path"):
        prepare(manifest, tmp_path / "out", PrepareConfig())
    assert not (tmp_path / "out").exists()


def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path):
    import os
    import stat

    from lrl.core.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
        f.write("x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.txt")
