"""Bad input on the data side (issue 14): corpora, manifests, clips, vocabularies and configs a careless or
hostile user might hand to `lrl data prepare` / `lrl vocab build`, and the outcome each must have: a counted
skip with its reason in skipped.tsv, or one line of error with its exit code, and nothing half-written on disk."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_fixtures import _write_tsv, copy_cv, yo_rows

from lrl.core.constants import SAMPLE_RATE
from lrl.core.io import LrlError
from lrl.data.prepare import PrepareConfig, load_prepared, prepare

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ------------------------------------------------------------------------------------------
def _skipped(out: Path) -> list[dict]:
    with open(out / "skipped.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _reasons(out: Path) -> dict[str, str]:
    """id -> skip reason."""
    return {r["id"]: r["reason"] for r in _skipped(out)}


def _wav(path: Path, seconds: float = 2.0, sr: int = SAMPLE_RATE, channels: int = 1, subtype: str = "PCM_16",
         samples: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if samples is None:
        t = np.arange(int(seconds * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * 220 * t)
        samples = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, samples.astype(np.float32), sr, subtype=subtype)
    return path


def _manifest(dst: Path, rows: list[tuple], header: tuple = ("path", "text"), name: str = "m.tsv") -> Path:
    """A manifest beside its clips; rows are tuples of fields (written as given: no padding, no quoting)."""
    dst.mkdir(parents=True, exist_ok=True)
    sep = "," if name.endswith(".csv") else "\t"
    lines = [sep.join(header)] + [sep.join(r) for r in rows]
    path = dst / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_wavs(dst: Path, n: int = 2) -> list[tuple[str, str]]:
    """n clean 2 s WAVs under dst/a/ with short transcripts: (path, text)."""
    words = ["hello world", "good morning", "see you soon", "thank you"]
    return [(str(_wav(dst / "a" / f"good{i}.wav").relative_to(dst)), words[i % len(words)]) for i in range(n)]


def _strip_xing(mp3: bytes) -> bytes:
    """The mp3 without its first (Xing/Info) frame: libsndfile then estimates the length from the file size."""
    start = 10 + ((mp3[6] << 21) | (mp3[7] << 14) | (mp3[8] << 7) | mp3[9])  # after the ID3v2 tag
    assert mp3[:3] == b"ID3" and mp3[start] == 0xFF, "fixture clip layout changed"
    nxt = mp3.index(mp3[start:start + 2], start + 2)
    return mp3[:start] + mp3[nxt:]


@pytest.fixture
def no_debug(monkeypatch):
    monkeypatch.delenv("LRL_DEBUG", raising=False)


# -- item 1: non-finite samples -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_audio_is_skipped(tmp_path, bad):
    good = _good_wavs(tmp_path)
    x = 0.3 * np.sin(np.arange(2 * SAMPLE_RATE) / 7.0)
    x[SAMPLE_RATE] = bad
    _wav(tmp_path / "a" / "nan.wav", samples=x, subtype="FLOAT")
    src = _manifest(tmp_path, [*good, ("a/nan.wav", "hello world")])
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["skipped"] == {"non_finite": 1}
    [row] = _skipped(tmp_path / "ds")
    assert row["id"] == "a/nan" and row["reason"] == "non_finite" and "NaN or infinite" in row["detail"]
    dd, _ = load_prepared(tmp_path / "ds")
    assert all(np.isfinite(a).all() for a in dd["train"].with_format("numpy")["audio"])


# -- item 2: a cut mp3 that decodes without error --------------------------------------------------------
def test_truncated_mp3_without_xing_header_is_skipped_and_named(yo_cv, tmp_path, caplog):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3)
    (src / "clip_durations.tsv").write_bytes((yo_cv / "clip_durations.tsv").read_bytes())
    victim = yo_rows(yo_cv, "train")[2]["path"]
    whole = _strip_xing((yo_cv / "clips" / victim).read_bytes())
    (src / "clips" / victim).write_bytes(whole[: len(whole) // 3])
    with caplog.at_level(logging.WARNING, logger="lrl"):
        summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["skipped"] == {"truncated": 1}
    [row] = _skipped(tmp_path / "ds")
    assert row["id"] == Path(victim).stem and "of the" in row["detail"]
    assert any(Path(victim).stem in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("column", "given", "reason"), [
    ("duration", "6.0", "truncated"),  # 2 s decoded of 6 s: cut
    ("duration", "2.05", None),  # encoder padding: kept
    ("duration[ms]", "9000", "truncated"),
    ("duration", "n/a", None),  # not a number: no check, kept
])
def test_manifest_duration_column_flags_a_cut_clip(tmp_path, column, given, reason):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "cut.wav")
    src = _manifest(tmp_path, [(p, t, "") for p, t in good] + [("a/cut.wav", "hello world", given)],
                    header=("path", "text", column))
    prepare(src, tmp_path / "ds")
    assert _reasons(tmp_path / "ds").get("a/cut") == reason


# -- item 3: rows that do not fit their header --------------------------------------------------------
def test_tab_inside_sentence_is_a_counted_bad_row(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3)
    lines = (src / "train.tsv").read_text(encoding="utf-8").splitlines()
    fields = lines[2].split("\t")
    words = fields[3].split(" ")
    fields[3] = " ".join(words[:2]) + "\t" + " ".join(words[2:])  # a tab inside the sentence...
    lines[2] = "\t".join(fields[:-1])  # ...and the trailing empty column cut off: as many fields as the header
    (src / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["skipped"] == {"bad_row": 1}
    [row] = _skipped(tmp_path / "ds")
    assert "tab inside the sentence" in row["detail"]
    dd, _ = load_prepared(tmp_path / "ds")
    assert " ".join(words[:2]) not in dd["train"]["sentence"]  # the cut transcript was not kept


@pytest.mark.parametrize(("fields", "what"), [
    (("a/x.wav", "hello\tworld"), "3 fields"),  # a tab in the transcript: one field too many
    (("a/x.wav",), "1 fields"),  # a cut line: never padded
])
def test_row_whose_field_count_differs_from_header_is_a_counted_bad_row(tmp_path, fields, what):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "x.wav")
    src = _manifest(tmp_path, [*good, fields])
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"] == {**summary["splits"]["train"], "read": 3, "kept": 2, "skipped": {"bad_row": 1}}
    [row] = _skipped(tmp_path / "ds")
    assert row["id"] == "m.tsv:4" and what in row["detail"] and "line 4" in row["detail"]


def test_csv_quoted_newline_in_transcript_becomes_a_space(tmp_path):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "nl.wav")
    src = tmp_path / "m.csv"
    body = "".join(f"{p},{t}\n" for p, t in good)
    src.write_text(f'path,text\n{body}a/nl.wav,"ẹfọ\nsecond"\n', encoding="utf-8")
    prepare(src, tmp_path / "ds")
    dd, _ = load_prepared(tmp_path / "ds")
    row = dd["train"].filter(lambda r: r["id"] == "a/nl")[0]
    assert row["text"] == "ẹfọ second" and "\n" not in row["sentence"]


def test_jsonl_manifest_with_a_non_object_line_is_a_counted_bad_row(tmp_path):
    good = _good_wavs(tmp_path)
    lines = [json.dumps({"path": p, "text": t}) for p, t in good] + ['["a/x.wav", "hello"]', "{not json"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = prepare(tmp_path / "m.jsonl", tmp_path / "ds")
    assert summary["splits"]["train"]["skipped"] == {"bad_row": 2}
    details = [r["detail"] for r in _skipped(tmp_path / "ds")]
    assert "line 3" in details[0] and "got list" in details[0] and "line 4" in details[1]


def test_bom_and_crlf_tsv_is_read_cleanly(tmp_path):
    good = _good_wavs(tmp_path)
    text = "path\ttext\r\n" + "".join(f"{p}\t{t}\r\n" for p, t in good)
    (tmp_path / "m.tsv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    summary = prepare(tmp_path / "m.tsv", tmp_path / "ds")
    assert summary["splits"]["train"]["kept"] == 2
    dd, _ = load_prepared(tmp_path / "ds")
    assert sorted(dd["train"]["sentence"]) == sorted(t for _, t in good)  # no \r, no BOM in a column name


def test_line_separator_inside_a_sentence_keeps_the_row_whole(tmp_path):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "ls.wav")
    src = _manifest(tmp_path, [*good, ("a/ls.wav", "hello\u2028world\rthere")])
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["kept"] == 3
    dd, _ = load_prepared(tmp_path / "ds")
    assert "hello world there" in dd["train"]["text"]


@pytest.mark.parametrize(("content", "match"), [("", "is empty"), ("path\ttext\n", "no usable train rows")])
def test_empty_or_header_only_manifest_is_one_error(tmp_path, cli, no_debug, content, match):
    (tmp_path / "m.tsv").write_text(content, encoding="utf-8")
    res = cli("-q", "data", "prepare", tmp_path / "m.tsv", "--out", tmp_path / "ds", "--no-card")
    assert res.exit_code == 1 and match in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()


# -- item 4: paths out of the corpus --------------------------------------------------------------------
def test_symlinked_transcript_outside_corpus_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    _wav(corpus / "a.wav")
    (corpus / "a.txt").write_text("hello world\n")
    _wav(corpus / "b.wav")
    (tmp_path / "secret.txt").write_text("the password is swordfish\n")
    (corpus / "b.txt").symlink_to(tmp_path / "secret.txt")
    summary = prepare(corpus, tmp_path / "ds")
    assert summary["splits"]["train"]["skipped"] == {"unsafe_path": 1}
    assert _reasons(tmp_path / "ds") == {"b": "unsafe_path"}
    dd, vocab = load_prepared(tmp_path / "ds")
    assert dd["train"]["sentence"] == ["hello world"] and "p" not in vocab.chars


def test_clip_path_with_dotdot_is_unsafe(tmp_path):
    good = _good_wavs(tmp_path / "corpus")
    _wav(tmp_path / "outside.wav")
    src = _manifest(tmp_path / "corpus", [*good, ("a/../../outside.wav", "hello world")])
    prepare(src, tmp_path / "ds")
    assert list(_reasons(tmp_path / "ds").values()) == ["unsafe_path"]


# -- clips that are not what they claim -----------------------------------------------------------------
def test_directory_where_a_clip_should_be_is_a_missing_clip(tmp_path):
    good = _good_wavs(tmp_path)
    (tmp_path / "a" / "dir.wav").mkdir()
    src = _manifest(tmp_path, [*good, ("a/dir.wav", "hello world")])
    prepare(src, tmp_path / "ds")
    assert _reasons(tmp_path / "ds") == {"a/dir": "missing_clip"}


def test_zero_byte_mp3_is_an_empty_file(tmp_path):
    good = _good_wavs(tmp_path)
    (tmp_path / "a" / "zero.mp3").write_bytes(b"")
    src = _manifest(tmp_path, [*good, ("a/zero.mp3", "hello world")])
    prepare(src, tmp_path / "ds")
    assert _reasons(tmp_path / "ds") == {"a/zero": "empty_file"}


def test_wav_with_a_lying_header_is_decoded_to_its_real_length(tmp_path):
    good = _good_wavs(tmp_path)
    raw = _wav(tmp_path / "a" / "lie.wav").read_bytes()
    i = raw.find(b"data")
    (tmp_path / "a" / "lie.wav").write_bytes(raw[:i + 4] + struct.pack("<I", 10 * len(raw)) + raw[i + 8:])
    src = _manifest(tmp_path, [*good, ("a/lie.wav", "hello world")])
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["kept"] == 3
    dd, _ = load_prepared(tmp_path / "ds")
    assert dd["train"].filter(lambda r: r["id"] == "a/lie")[0]["duration"] == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize(("sr", "channels", "subtype"), [
    (16000, 1, "PCM_U8"), (16000, 1, "PCM_24"), (16000, 2, "PCM_16"), (44100, 1, "PCM_16"), (8000, 2, "FLOAT"),
])
def test_odd_wav_formats_are_kept_and_converted(tmp_path, sr, channels, subtype):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "odd.wav", sr=sr, channels=channels, subtype=subtype)
    src = _manifest(tmp_path, [*good, ("a/odd.wav", "hello world")])
    summary = prepare(src, tmp_path / "ds")
    assert summary["splits"]["train"]["kept"] == 3
    dd, _ = load_prepared(tmp_path / "ds")
    row = dd["train"].with_format("numpy").filter(lambda r: r["id"] == "a/odd")[0]
    assert row["audio"].dtype == np.float32 and row["audio"].ndim == 1
    assert len(row["audio"]) == pytest.approx(2 * SAMPLE_RATE, abs=16) and np.abs(row["audio"]).max() > 0.2


def test_transcript_of_only_punctuation_is_empty_text(tmp_path):
    good = _good_wavs(tmp_path)
    _wav(tmp_path / "a" / "p.wav")
    src = _manifest(tmp_path, [*good, ("a/p.wav", "?!… — «»")])
    prepare(src, tmp_path / "ds")
    assert _reasons(tmp_path / "ds") == {"a/p": "empty_text"}


# -- item 6: killed runs leave no worker and nothing that looks finished -------------------------------
def _children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(p.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_prepare(yo_cv, tmp_path):
    """A `lrl data prepare --num-proc 2` subprocess caught while its two workers decode: (proc, out, workers)."""
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=200)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "lrl", "-q", "data", "prepare", str(src), "--out", str(out), "--num-proc", "2",
           "--no-card"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE)
    deadline, workers = time.monotonic() + 90, []
    while proc.poll() is None and time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.01)
        workers = _children(proc.pid) if (tmp_path / f"ds.tmp-{proc.pid}").exists() else []
    time.sleep(0.3)  # well inside the decoding
    assert proc.poll() is None and len(workers) >= 2, "prepare finished before its workers could be seen"
    return proc, out, workers


def _assert_nothing_left(tmp_path, out, workers):
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leak them into the rest of the session
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"
    assert not out.exists()
    assert not list(tmp_path.glob("ds*/summary.json")) and not list(tmp_path.glob("ds*/dataset_dict.json"))


def test_sigkill_of_parent_leaves_no_worker(yo_cv, tmp_path):
    proc, out, workers = _start_prepare(yo_cv, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its process group
    assert proc.wait() == -signal.SIGKILL
    _assert_nothing_left(tmp_path, out, workers)


def test_sigterm_cleans_up_like_ctrl_c(yo_cv, tmp_path):
    proc, out, workers = _start_prepare(yo_cv, tmp_path)
    with pytest.raises(LrlError, match="being written by another"):  # item 10 with a real concurrent run
        prepare(tmp_path / "cv", out)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert proc.stderr.read().decode().strip() == "interrupted"
    _assert_nothing_left(tmp_path, out, workers)
    assert not (tmp_path / f"ds.tmp-{proc.pid}").exists() and not (tmp_path / "ds.lock").exists()


# -- item 10: one writer per output ---------------------------------------------------------------------
def test_second_prepare_on_the_same_out_fails_fast(yo_cv, tmp_path, cli, no_debug):
    import fcntl

    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    out = tmp_path / "ds"
    with open(tmp_path / "ds.lock", "w") as held:  # what a first run holds while it writes `out`
        held.write("`lrl data prepare`, pid 4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        res = cli("data", "prepare", src, "--out", out, "--no-card")
        assert time.monotonic() - t0 < 10
    assert res.exit_code == 1 and "being written by another run (`lrl data prepare`, pid 4242" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()
    assert cli("data", "prepare", src, "--out", out, "--no-card").exit_code == 0  # once released
    assert not (tmp_path / "ds.lock").exists()


# -- item 11: --overwrite replaces only what prepare wrote ----------------------------------------------
@pytest.mark.parametrize("summary", ['{"wer": 0.31, "cer": 0.12}', "not json at all"])
def test_overwrite_refuses_a_folder_with_a_foreign_summary_json(yo_cv, tmp_path, cli, no_debug, summary):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    out = tmp_path / "model" / "eval-dev"  # what `lrl evaluate` writes: a summary.json, not a dataset
    out.mkdir(parents=True)
    (out / "summary.json").write_text(summary)
    (out / "utterances.tsv").write_text("id\tref\thyp\n")
    res = cli("data", "prepare", src, "--out", out, "--overwrite", "--no-card")
    assert res.exit_code == 1 and "not a" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "utterances.tsv"]
    assert (out / "summary.json").read_text() == summary


def test_overwrite_replaces_a_marked_dataset(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3)
    out = tmp_path / "ds"
    prepare(src, out)
    assert (out / ".lrl-prepared").is_file()
    again = prepare(src, out, PrepareConfig(min_duration=0.5, overwrite=True))
    assert not again.get("reused") and (out / ".lrl-prepared").is_file()


# -- item 13: columns, duplicates, invisible characters, unreadable artefacts ----------------------------
def test_dev_tsv_without_sentence_column_is_one_error(yo_cv, tmp_path, cli, no_debug):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2, n_dev=2)
    dev = src / "dev.tsv"
    dev.write_text(dev.read_text(encoding="utf-8").replace("\tsentence\t", "\ttranscript\t", 1), encoding="utf-8")
    res = cli("data", "prepare", src, "--out", tmp_path / "ds", "--no-card")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert str(dev) in res.output and "'sentence'" in res.output and "transcript" in res.output
    assert "empty_text" not in res.output and not (tmp_path / "ds").exists()


def test_train_copy_of_a_test_clip_adds_no_character_to_the_vocab(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=3, n_test=1)
    train, test = yo_rows(src, "train"), yo_rows(src, "test")
    test[0]["sentence"] = "жук " + test[0]["sentence"]  # a character only the test clip's transcript has
    _write_tsv(src / "test.tsv", test)
    _write_tsv(src / "train.tsv", [*train, dict(test[0])])  # the same clip, copied into train
    summary = prepare(src, tmp_path / "ds")
    _, vocab = load_prepared(tmp_path / "ds")
    assert not {"ж", "у", "к"} & set(vocab.chars)
    assert sum(summary["splits"]["train"]["skipped"].values()) == 1 and summary["splits"]["test"]["kept"] == 1


@pytest.mark.parametrize("ch", ["\u200f", "\u202e", "\u200d", "\u200c", "\u2066", "\ufeff", "\u00ad"])
def test_bidi_and_zero_width_characters_are_not_vocab_tokens(ch):
    from lrl.data.vocab import build_vocab

    vocab = build_vocab([f"ab{ch}cd", f"{ch}ef gh{ch}"]).vocab
    assert set(vocab.chars) == set("abcdefgh")


def test_persian_keeps_zwnj_unless_told_otherwise():
    from lrl.core.text import Normalizer, NormalizerConfig

    word = "می\u200cروم\u200f"
    assert Normalizer(NormalizerConfig(language="fa"))(word) == "می\u200cروم"
    assert Normalizer(NormalizerConfig(language="fa", keep_format=""))(word) == "میروم"
    assert Normalizer(NormalizerConfig())(word) == "میروم"
    with pytest.raises(ValueError, match="keep_format"):
        NormalizerConfig(keep_format="a")


def test_vocab_build_keep_format_option(tmp_path, cli):
    (tmp_path / "t.txt").write_text("ab\u200dcd\nab\u200ccd\n", encoding="utf-8")
    res = cli("vocab", "build", tmp_path / "t.txt", "--out", tmp_path / "v", "--keep-format", "\u200d")
    assert res.exit_code == 0, res.output
    tokens = json.loads((tmp_path / "v" / "vocab.json").read_text(encoding="utf-8"))
    assert "\u200d" in tokens and "\u200c" not in tokens


@pytest.mark.parametrize(("content", "found"), [
    (b'{"[PAD]": 0, "[UNK]": 1', "Expecting"), (b"\xff\xfe{}", "utf-8"), (b'["a", "b"]', "list"),
    (b'{"[PAD]": 0, "[UNK]": 1, "|": 7}', "ids 0..n-1"), (b'{"[PAD]": 0, "[UNK]": "one", "|": 2}', "ids 0..n-1"),
])
def test_corrupt_vocab_json_error_names_the_file(yo_cv, tmp_path, cli, no_debug, content, found):
    from lrl.core.text import NormalizerConfig

    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "vocab.json").write_bytes(content)
    NormalizerConfig().save(vocab)
    res = cli("data", "prepare", src, "--out", tmp_path / "ds", "--vocab", vocab, "--no-card")
    assert res.exit_code == 1 and str(vocab / "vocab.json") in res.output and found in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "ds").exists()


@pytest.mark.parametrize("normalizer", [None, b"\xff not utf-8", b'{"lowercase": true, "shout": 1}'])
def test_vocab_dir_with_missing_or_bad_normalizer_json_names_it(yo_cv, tmp_path, cli, no_debug, normalizer):
    from lrl.core.text import NormalizerConfig
    from lrl.data.vocab import Vocab

    src = copy_cv(yo_cv, tmp_path / "cv", n_train=2)
    vocab = tmp_path / "vocab"
    Vocab.from_chars("abc", NormalizerConfig()).save(vocab)
    (vocab / "normalizer.json").unlink()
    if normalizer is not None:
        (vocab / "normalizer.json").write_bytes(normalizer)
    res = cli("data", "prepare", src, "--out", tmp_path / "ds", "--vocab", vocab, "--no-card")
    assert res.exit_code == 1 and str(vocab / "normalizer.json") in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_non_utf8_toml_config_error_names_the_file(tmp_path):
    from lrl.train.config import load_config

    cfg = tmp_path / "run.toml"
    cfg.write_bytes('[train]\nnote = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(LrlError, match=rf"{cfg}.*not UTF-8"):
        load_config(cfg)


# -- the CLI's last resort --------------------------------------------------------------------------------
def test_unexpected_exception_is_one_line_with_exit_2(tmp_path, cli, monkeypatch, no_debug):
    import lrl.data.prepare

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(lrl.data.prepare, "prepare", boom)
    res = cli("data", "prepare", tmp_path, "--out", tmp_path / "ds")
    assert res.exit_code == 2
    assert res.output.strip() == "error: RuntimeError: disk on fire (unexpected; LRL_DEBUG=1 shows the traceback)"


def test_unexpected_exception_shows_the_traceback_with_lrl_debug(tmp_path, cli, monkeypatch):
    import lrl.data.prepare

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(lrl.data.prepare, "prepare", boom)
    monkeypatch.setenv("LRL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli("data", "prepare", tmp_path, "--out", tmp_path / "ds")


def test_ctrl_c_exits_130_with_one_line(tmp_path, cli, monkeypatch, no_debug):
    import lrl.data.prepare

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lrl.data.prepare, "prepare", interrupt)
    res = cli("data", "prepare", tmp_path, "--out", tmp_path / "ds")
    assert res.exit_code == 130 and res.output.strip() == "interrupted"

