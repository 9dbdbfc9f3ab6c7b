"""Tiny corpora built in tmp_path from real clips of ../shared/data: a Common Voice folder with planted
faults (and the outcome each row must have), a plain CV copy of N yo-cv clips, an FSDD manifest, and a prepared FSDD dataset (the data contract)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
             "age", "gender", "accents", "variant", "locale", "segment"]


def yo_rows(yo_cv: Path, table: str = "validated") -> list[dict]:
    lines = (yo_cv / f"{table}.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


def _write_tsv(path: Path, rows: list[dict], header: list[str] = CV_HEADER) -> None:
    lines = ["\t".join(header)] + ["\t".join(r.get(h, "") for h in header) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _row(path: str, sentence: str, speaker: str = "spk1", up: str = "2", down: str = "0") -> dict:
    return {"client_id": speaker, "path": path, "sentence": sentence, "up_votes": up, "down_votes": down, "locale": "yo"}


def copy_cv(yo_cv: Path, dst: Path, n_train: int, n_dev: int = 0, n_test: int = 0) -> Path:
    """A CV folder holding the first clips of yo-cv's train/dev/test tables (copied, not linked)."""
    (dst / "clips").mkdir(parents=True)
    for table, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = yo_rows(yo_cv, table)[:n]
        for r in rows:
            shutil.copy(yo_cv / "clips" / r["path"], dst / "clips" / r["path"])
        _write_tsv(dst / f"{table}.tsv", rows)
    return dst


def make_faulty_cv(yo_cv: Path, dst: Path) -> dict:
    """A CV folder with one fault per row kind. Returns {"kept": {split: [ids]}, "skipped": {(split, id): reason}}."""
    clips = dst / "clips"
    clips.mkdir(parents=True)
    real = yo_rows(yo_cv)
    good = real[:9]
    for r in good:
        shutil.copy(yo_cv / "clips" / r["path"], clips / r["path"])
    g = [(r["path"], r["sentence"]) for r in good]
    stem = [Path(p).stem for p, _ in g]

    src9 = (yo_cv / "clips" / real[9]["path"]).read_bytes()
    (clips / "truncated.mp3").write_bytes(src9[: len(src9) // 3])
    (clips / "empty.mp3").write_bytes(b"")
    (clips / "notaudio.mp3").write_bytes(b"ID3 this is text, not an mp3 stream\n" * 20)
    import soundfile as sf

    t = np.arange(int(0.4 * 32000)) / 32000
    sf.write(clips / "short.mp3", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 32000, format="MP3")
    (dst / "secret.mp3").write_bytes(src9)  # a real clip outside clips/: must never be read

    train = [
        _row(g[0][0], g[0][1]), _row(g[1][0], g[1][1]), _row(g[2][0], g[2][1]), _row(g[3][0], g[3][1]),
        _row("truncated.mp3", real[9]["sentence"]),
        _row("empty.mp3", "ó dára"),
        _row("missing.mp3", "ó dára"),
        _row("notaudio.mp3", "ó dára"),
        _row("../../etc/passwd", "ó dára"),
        _row("../secret.mp3", "ó dára"),
        _row("/etc/passwd", "ó dára"),
        _row("short.mp3", "ó dára"),
        _row(g[4][0], " ... !!! "),  # empty after normalisation
        _row(g[0][0], g[0][1]),  # duplicate row
        _row(g[5][0], g[5][1], up="1", down="3"),  # down-voted
        _row(g[7][0], g[7][1]),  # also in test: the test copy is kept
    ]
    dev = [_row(g[6][0], g[0][1], speaker="spk2"),  # a sentence of train: no OOV by chance
            _row(g[8][0], "жук " + g[8][1], speaker="spk2")]  # OOV: kept in dev (dropped with filter_eval)
    test = [_row(g[7][0], g[7][1], speaker="spk3")]
    _write_tsv(dst / "train.tsv", train)
    _write_tsv(dst / "dev.tsv", dev)
    _write_tsv(dst / "test.tsv", test)
    skipped = [
        ("train", "truncated", "truncated"), ("train", "empty", "empty_file"), ("train", "missing", "missing_clip"),
        ("train", "notaudio", "not_audio"), ("train", "passwd", "unsafe_path"), ("train", "secret", "unsafe_path"),
        ("train", "passwd", "unsafe_path"), ("train", "short", "too_short"), ("train", stem[4], "empty_text"),
        ("train", stem[0], "duplicate"), ("train", stem[5], "down_voted"), ("train", stem[7], "duplicate"),
    ]
    return {
        "kept": {"train": stem[:4], "dev": [stem[6], stem[8]], "test": [stem[7]]},
        "skipped": skipped,
        "unfiltered": [("dev", stem[8], "oov")],  # kept for scoring; skipped with filter_eval=True
        "read": {"train": len(train), "dev": len(dev), "test": len(test)},
    }


def fsdd_manifest(fsdd: Path, dst: Path, n: int, suffix: str = ".tsv") -> Path:
    """A manifest beside copies of `n` FSDD recordings (path, text, speaker, split)."""
    import json

    lines = (fsdd / "metadata.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]][: 20 * n : 20]
    (dst / "rec").mkdir(parents=True, exist_ok=True)
    out = []
    for r in rows:
        shutil.copy(fsdd / r["path"], dst / "rec" / Path(r["path"]).name)
        out.append({"path": f"rec/{Path(r['path']).name}", "text": r["sentence"], "speaker": r["speaker"], "split": r["split"]})
    path = dst / f"manifest{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(o) + "\n" for o in out), encoding="utf-8")
    else:
        path.write_text("path\ttext\tspeaker\tsplit\n" + "".join("\t".join(o.values()) + "\n" for o in out), encoding="utf-8")
    return path


def shared_fsdd_dataset(tmp_path_factory, n_train: int, n_dev: int, n_test: int = 0) -> Path:
    """`make_fsdd_dataset` from ../shared/data/fsdd into a fresh temp dir, for module-scoped fixtures; skips the
    test when the shared data is not there."""
    import pytest
    from conftest import SHARED_DATA

    fsdd = SHARED_DATA / "fsdd"
    if not fsdd.is_dir():
        pytest.skip("shared FSDD data not found")
    return make_fsdd_dataset(fsdd, tmp_path_factory.mktemp("data") / "fsdd", n_train=n_train, n_dev=n_dev, n_test=n_test)


def make_fsdd_dataset(fsdd: Path, out: Path, n_train: int, n_dev: int, n_test: int = 0) -> Path:
    """A DatasetDict saved as `lrl data prepare` does (id, audio 16 kHz float32 list, text, sentence,
    duration, speaker) with DIR/vocab, from the spoken-digit recordings."""
    import datasets
    import soundfile as sf
    import soxr

    from lrl.core.text import NormalizerConfig
    from lrl.data.vocab import Vocab

    rows = [line.split("\t") for line in (fsdd / "metadata.tsv").read_text().splitlines()[1:] if line.strip()]
    train = [r for r in rows if r[3] == "train"]
    test = [r for r in rows if r[3] == "test"]
    pick_train = train[:: max(1, len(train) // n_train)][:n_train]
    held = test[:: max(1, len(test) // (n_dev + n_test))][: n_dev + n_test]
    features = datasets.Features({
        "id": datasets.Value("string"), "audio": datasets.List(datasets.Value("float32")),
        "text": datasets.Value("string"), "sentence": datasets.Value("string"),
        "duration": datasets.Value("float64"), "speaker": datasets.Value("string"),
    })

    def build(rs):
        d = {k: [] for k in features}
        for path, sentence, speaker, _ in rs:
            x, sr = sf.read(fsdd / path, dtype="float32")
            x = soxr.resample(x, sr, 16000).astype(np.float32)
            d["id"].append(path)
            d["audio"].append(x)
            d["text"].append(sentence)
            d["sentence"].append(sentence)
            d["duration"].append(len(x) / 16000)
            d["speaker"].append(speaker)
        return datasets.Dataset.from_dict(d, features=features)

    splits = {"train": build(pick_train), "dev": build(held[:n_dev])}
    if n_test:
        splits["test"] = build(held[n_dev:])
    datasets.DatasetDict(splits).save_to_disk(str(out))
    Vocab.from_chars("".join(r[1] for r in rows), NormalizerConfig()).save(out / "vocab")
    return out


def make_eval_cv(yo_cv: Path, dst: Path, max_duration: float = 20.0) -> dict:
    """A CV folder whose train, dev and test each hold a clip longer than `max_duration` (real clips joined
    into a WAV) and a transcript with a Cyrillic word (outside the Yoruba vocabulary), beside plain clips;
    test also holds a truncated clip and an empty transcript. Returns {"long": {split: id}, "oov": {split: id},
    "faults": {split: {reason: n}}} (the hard faults)."""
    import soundfile as sf

    from lrl.core.audio import load_audio
    from lrl.core.constants import SAMPLE_RATE

    (dst / "clips").mkdir(parents=True)
    real = yo_rows(yo_cv, "train")
    it = iter(real)
    tables, long_ids, oov_ids = {}, {}, {}
    for split in ("train", "dev", "test"):
        rows = []
        for _ in range(3 if split == "train" else 1):
            r = next(it)
            shutil.copy(yo_cv / "clips" / r["path"], dst / "clips" / r["path"])
            rows.append(_row(r["path"], r["sentence"], speaker=f"spk-{split}"))
        r = next(it)
        shutil.copy(yo_cv / "clips" / r["path"], dst / "clips" / r["path"])
        rows.append(_row(r["path"], "жук " + r["sentence"], speaker=f"spk-{split}"))
        oov_ids[split] = Path(r["path"]).stem
        parts, sentences = [], []
        while sum(len(p) for p in parts) <= (max_duration + 1) * SAMPLE_RATE:
            r = next(it)
            parts.append(load_audio(yo_cv / "clips" / r["path"]))
            sentences.append(r["sentence"])
        sf.write(dst / "clips" / f"long_{split}.wav", np.concatenate(parts), SAMPLE_RATE, subtype="FLOAT")
        rows.append(_row(f"long_{split}.wav", " ".join(sentences), speaker=f"spk-{split}"))
        long_ids[split] = f"long_{split}"
        tables[split] = rows
    src = (yo_cv / "clips" / next(it)["path"]).read_bytes()
    (dst / "clips" / "cut.mp3").write_bytes(src[: len(src) // 3])
    tables["test"] += [_row("cut.mp3", "ó dára", speaker="spk-test"), _row(tables["test"][0]["path"], " ... ")]
    for split, rows in tables.items():
        _write_tsv(dst / f"{split}.tsv", rows)
    return {"long": long_ids, "oov": oov_ids, "faults": {"test": {"truncated": 1, "empty_text": 1}}}


def yo_vocab(yo_cv: Path, dst: Path) -> Path:
    """The vocabulary of every yo-cv train transcript, saved in `dst` (a Yoruba alphabet without Cyrillic)."""
    from lrl.data.vocab import build_vocab

    build_vocab([r["sentence"] for r in yo_rows(yo_cv, "train")]).vocab.save(dst)
    return dst
