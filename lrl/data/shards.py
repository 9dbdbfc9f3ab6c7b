"""Sharded preparation: `lrl data prepare --shard i/n` reads every row, filters by text and builds the vocabulary
from all of them (cheap), then decodes only the rows of shard i: the rows read, in input order, whose position
modulo n is i. So the n shards share one vocabulary and one set of settings, and every row lands in exactly one.
Each shard is a normal prepared dataset plus SHARD_FILE (i/n and fingerprints of the settings, the vocabulary and
the rows read); `lrl.data.merge` checks that all n shards of one run are there once and concatenates them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lrl.core.io import LrlError, atomic_write_text

SHARD_FILE = "shard.json"  # in a shard's directory: which part of which run it is
# What every shard of one run must agree on; `lrl data merge` names the first that differs.
IDENTITY_KEYS = {"settings": "settings (prepare options)", "vocab": "vocabulary", "rows": "rows read (the corpus)"}


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count`: counted from 0, as `datasets.Dataset.shard(num_shards, index)` and torchrun's
    RANK count (`--shard $RANK/$WORLD_SIZE`)."""

    index: int  # which part, 0 .. count-1
    count: int  # how many parts the rows are split into, >= 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shard count must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1} (counted from 0) for {self.count} shards, "
                             f"got {self.index}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"i/n"` -> Shard(i, n)."""
        index, sep, count = str(text).strip().partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"shard must be written i/n with whole numbers, i counted from 0 (0/4 .. 3/4), got {text!r}")
        return cls(int(index), int(count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, position: int) -> bool:
        """Whether the row read at `position` (0-based, input order) belongs to this shard."""
        return position % self.count == self.index


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def identity(settings: dict, vocab, rows) -> dict:
    """Fingerprints every shard of one run shares: the settings (a JSON-able dict), the vocabulary (tokens and
    normaliser) and the rows read (split, id, path, sentence, in input order). Content only, no paths or
    mtimes of the machine: shards prepared on different machines from copies of one corpus agree."""
    return {
        "settings": _sha(settings),
        "vocab": _sha({"tokens": list(vocab.tokens), "normalizer": vocab.normalizer.to_dict()}),
        "rows": _sha([[r.split, r.id, r.path, r.sentence] for r in rows]),
    }


def write_marker(directory: Path, shard: Shard, ident: dict, fingerprint: str, oov_unk: int) -> None:
    """SHARD_FILE: which part this is, of which run; `oov_unk` (kept rows with [UNK]) is summed by the merge."""
    record = {"written_by": "lrl data prepare --shard", "index": shard.index, "count": shard.count, **ident,
              "fingerprint": fingerprint, "oov_unk": oov_unk}
    atomic_write_text(directory / SHARD_FILE, json.dumps(record, indent=2) + "\n")


def read_marker(directory: str | Path) -> dict | None:
    """The SHARD_FILE record of `directory`, or None when it is not a shard; LrlError when the file is damaged."""
    path = Path(directory) / SHARD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        Shard(int(record["index"]), int(record["count"]))
        if not all(isinstance(record.get(k), str) for k in (*IDENTITY_KEYS, "fingerprint")):
            raise ValueError("a fingerprint is missing")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise LrlError(f"{path} is not the shard record `lrl data prepare --shard` writes ({e}); "
                       "prepare that shard again") from e
    return record


def refuse_shard(directory: str | Path, use: str) -> None:
    """LrlError when `directory` is one shard of several: training or scoring on it would silently use 1/n of
    the rows. A 0/1 shard holds every row and passes."""
    record = read_marker(directory)
    if record is not None and record["count"] > 1:
        raise LrlError(f"{directory} is shard {record['index']}/{record['count']} of a sharded `lrl data prepare`: "
                       f"it holds about 1/{record['count']} of the rows. Merge all {record['count']} shards first "
                       f"(`lrl data merge SHARD_DIR... --out DIR`) and {use} DIR")
