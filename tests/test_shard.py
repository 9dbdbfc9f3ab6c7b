"""lrl.data.shards and lrl.data.merge: `lrl data prepare --shard i/n` parts are disjoint, complete and merge into
exactly the unsharded dataset; the merge refuses a missing, duplicate or foreign shard; training, scoring and
writing a cleaned copy refuse a lone shard."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from corpus_fixtures import copy_cv, fsdd_manifest, make_faulty_cv

from lrl.core.io import LrlError
from lrl.data import merge as merge_mod
from lrl.data.merge import merge_shards
from lrl.data.prepare import PrepareConfig, load_prepared, prepare
from lrl.data.shards import SHARD_FILE, Shard, read_marker, refuse_shard
from lrl.data.vocab import Vocab


def _skipped(out: Path) -> list[tuple[str, ...]]:
    with open(out / "skipped.tsv", encoding="utf-8") as f:
        return [tuple(r.values()) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def _rows(directory: Path) -> dict[tuple[str, str], tuple]:
    """(split, id) -> (audio, text, duration, speaker) of every kept row."""
    dd, _ = load_prepared(directory)
    return {(split, r["id"]): (np.asarray(r["audio"], dtype=np.float32), r["text"], r["duration"], r["speaker"])
            for split, ds in dd.items() for r in ds}


def _validated_cv(yo_cv: Path, dst: Path) -> Path:
    """A CV folder whose validated.tsv holds train + dev + test (train_from_validated holds 4 rows out)."""
    src = copy_cv(yo_cv, dst, n_train=3, n_dev=2, n_test=2)
    rows = (src / "train.tsv").read_text().splitlines()
    rows += (src / "dev.tsv").read_text().splitlines()[1:] + (src / "test.tsv").read_text().splitlines()[1:]
    (src / "validated.tsv").write_text("\n".join(rows) + "\n")
    return src


@pytest.mark.parametrize("text, want", [("0/2", Shard(0, 2)), (" 3/4 ", Shard(3, 4)), ("0/1", Shard(0, 1))])
def test_shard_parse(text, want):
    assert Shard.parse(text) == want and str(want) == text.strip()


@pytest.mark.parametrize("text, match", [("2/2", r"0\.\.1"), ("1/0", ">= 1"), ("1", "i/n"), ("a/2", "i/n"),
                                         ("-1/2", "i/n"), ("1/2/3", "i/n")])
def test_shard_parse_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        Shard.parse(text)


@pytest.mark.parametrize("corpus, n, config", [
    ("faulty", 2, PrepareConfig()),  # every skip reason, a duplicate clip across splits, an OOV dev row
    ("validated", 3, PrepareConfig(train_from_validated=True, oov="unk")),  # held-out rows; a shard with few rows
    ("manifest", 2, PrepareConfig(min_duration=0.1, num_proc=2)),  # a TSV manifest with a split column
])
def test_shards_are_disjoint_and_merge_into_the_unsharded_dataset(yo_cv, shared_data, tmp_path, corpus, n, config):
    src = tmp_path / "cv"
    if corpus == "faulty":
        make_faulty_cv(yo_cv, src)
    elif corpus == "validated":
        _validated_cv(yo_cv, src)
    else:
        src = fsdd_manifest(shared_data / "fsdd", tmp_path / "fsdd", n=12)
    whole = prepare(src, tmp_path / "whole", config)
    parts = [tmp_path / f"part{i}" for i in range(n)]
    for i, p in enumerate(parts):
        s = prepare(src, p, config, shard=f"{i}/{n}")
        assert read_marker(p)["index"] == i and (p / ".lrl-prepared").is_file() and s["total"]["read"] > 0
        assert (p / "vocab" / "vocab.json").read_bytes() == (tmp_path / "whole" / "vocab" / "vocab.json").read_bytes()

    kept = [_rows(p) for p in parts]
    skipped = [_skipped(p) for p in parts]
    assert sum(len(k) for k in kept) == len(set().union(*kept)), "a kept row is in two shards"
    assert Counter(sum(skipped, [])) == Counter(_skipped(tmp_path / "whole")), "skips differ from the unsharded run"
    assert sum(s["total"]["read"] for s in map(lambda p: json.loads((p / "summary.json").read_text()), parts)) \
        == whole["total"]["read"]

    merged = merge_shards(reversed(parts), tmp_path / "merged")  # any order
    assert merged["splits"] == whole["splits"] and merged["total"] == whole["total"]
    assert merged["warnings"] == whole["warnings"] and merged.get("clip_durations") == whole.get("clip_durations")
    assert merged["merged_from"]["shards"] == [str(p) for p in parts]
    want, got = _rows(tmp_path / "whole"), _rows(tmp_path / "merged")
    vocab = load_prepared(tmp_path / "whole")[1]  # the [UNK] warning counts the kept rows with characters outside it
    n_unk = sum(bool(vocab.oov_chars(text)) for _, text, *_ in want.values()) if config.oov == "unk" else 0
    assert any(w.startswith(f"{n_unk} kept transcripts hold") for w in whole["warnings"]) == bool(n_unk), whole["warnings"]
    assert sorted(got) == sorted(want)
    for key, (audio, *rest) in want.items():
        assert np.array_equal(got[key][0], audio) and list(got[key][1:]) == rest, key
    assert Counter(_skipped(tmp_path / "merged")) == Counter(_skipped(tmp_path / "whole"))
    assert (tmp_path / "merged" / ".lrl-prepared").is_file() and not (tmp_path / "merged" / SHARD_FILE).exists()
    assert load_prepared(tmp_path / "merged")[1] == load_prepared(tmp_path / "whole")[1]
    again = merge_shards(parts, tmp_path / "merged")
    assert again["reused"]


@pytest.fixture
def two_shards(yo_cv, tmp_path):
    src = copy_cv(yo_cv, tmp_path / "cv", n_train=4, n_dev=1)
    for i in range(2):
        prepare(src, tmp_path / f"s{i}", shard=f"{i}/2")
    return src, tmp_path / "s0", tmp_path / "s1"


def test_merge_refuses_missing_duplicate_and_foreign_shards(two_shards, tmp_path):
    src, s0, s1 = two_shards
    with pytest.raises(LrlError, match=r"shard 1/2 missing \(1 of 2 given\).*--shard 1/2"):
        merge_shards([s0], tmp_path / "m")
    shutil.copytree(s0, tmp_path / "copy")
    with pytest.raises(LrlError, match=r"shard 0/2 is given twice: .*s0 and .*copy"):
        merge_shards([s0, s1, tmp_path / "copy"], tmp_path / "m")
    with pytest.raises(LrlError, match="given twice"):
        merge_shards([s0, s0, s1], tmp_path / "m")

    v = Vocab.load(s0 / "vocab")
    Vocab((*v.tokens, "ʘ"), v.normalizer).save(tmp_path / "other_vocab")
    prepare(src, tmp_path / "v1", vocab_dir=tmp_path / "other_vocab", shard="1/2")
    with pytest.raises(LrlError, match="differ in their vocabulary"):
        merge_shards([s0, tmp_path / "v1"], tmp_path / "m")
    prepare(src, tmp_path / "o1", PrepareConfig(min_duration=0.5), shard="1/2")
    with pytest.raises(LrlError, match=r"differ in their settings \(prepare options\)"):
        merge_shards([s0, tmp_path / "o1"], tmp_path / "m")
    prepare(src, tmp_path / "t1", shard="1/3")
    with pytest.raises(LrlError, match="shard 1/3"):
        merge_shards([s0, tmp_path / "t1"], tmp_path / "m")
    prepare(src, tmp_path / "whole")
    with pytest.raises(LrlError, match="not a shard"):
        merge_shards([s0, tmp_path / "whole"], tmp_path / "m")
    with pytest.raises(LrlError, match="is one of the shards"):
        merge_shards([s0, s1], s1)
    assert not (tmp_path / "m").exists()


def test_merge_interrupted_leaves_nothing_and_overwrite_rules(two_shards, tmp_path, monkeypatch):
    _, s0, s1 = two_shards

    def interrupt(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(merge_mod, "_merged_summary", interrupt)
        with pytest.raises(KeyboardInterrupt):
            merge_shards([s0, s1], tmp_path / "m")
    assert not list(tmp_path.glob("m*")), "an interrupted merge left a directory or lock behind"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("keep me")
    with pytest.raises(LrlError, match="not a dataset made by"):
        merge_shards([s0, s1], tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").is_file()


def test_cli_sharded_prepare_merge_and_train_refuses_a_shard(two_shards, tmp_path, cli):
    src, s0, s1 = two_shards
    res = cli("data", "prepare", src, "--out", s0, "--shard", "0/2", "--no-card")
    assert res.exit_code == 0 and "reused" in res.output and "lrl data merge" in res.output
    res = cli("data", "prepare", src, "--out", tmp_path / "x", "--shard", "2/2")
    assert res.exit_code == 2 and "0..1" in res.output and not (tmp_path / "x").exists()
    res = cli("data", "merge", s0, "--out", tmp_path / "m")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "shard 1/2 missing" in res.output
    res = cli("data", "merge", s1, s0, "--out", tmp_path / "m", "--no-card")
    assert res.exit_code == 0 and "total: " in res.output, res.output

    res = cli("train", "run", "--data", s0, "--checkpoint", "unused", "--out", tmp_path / "run")
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "lrl data merge" in res.output, res.output
    assert not (tmp_path / "run").exists()
    for cmd in (["evaluate", tmp_path, s0], ["lm", "tune", tmp_path, s0],  # scores of 1/n of a split
                ["data", "check-labels", tmp_path, s0, "--write-clean", tmp_path / "clean"]):  # 1/n passing for all
        res = cli(*cmd)
        assert res.exit_code == 1 and res.output.count("\n") == 1 and "lrl data merge" in res.output, (cmd, res.output)
    assert not (tmp_path / "clean").exists()
    refuse_shard(tmp_path / "m", "train on")  # the merged dataset is no shard
    prepare(src, tmp_path / "one", shard="0/1")
    refuse_shard(tmp_path / "one", "train on")  # 0/1 holds every row
