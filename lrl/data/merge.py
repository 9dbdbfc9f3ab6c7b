"""`lrl data merge`: the n shards of one `lrl data prepare --shard i/n` run become one prepared dataset. Every shard
must be given exactly once, all from one run (same settings, vocabulary and rows read: lrl.data.shards). Each split
is joined with `datasets.concatenate_datasets` (shard 0's rows first), the summary counts are summed, skipped.tsv
concatenated and the vocabulary copied. Written to OUT.tmp-<pid> and renamed, under OUT's lock (lrl.data.guard).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from lrl.core.constants import SAMPLE_RATE
from lrl.core.hf_datasets import save_dataset_dict
from lrl.core.io import LrlError, atomic_write_text
from lrl.core.procs import sigterm_as_interrupt
from lrl.data import guard
from lrl.data.prepare import (
    FORMAT_VERSION,
    SKIPPED_FILE,
    SUMMARY_FILE,
    VOCAB_DIR,
    reuse_output,
    speaker_stats,
    summary_warnings,
)
from lrl.data.shards import IDENTITY_KEYS, SHARD_FILE, read_marker

logger = logging.getLogger(__name__)

MERGED_KEY = "merged_from"  # summary.json of a merged dataset: the shards it was made from


def merge_shards(shard_dirs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> dict:
    """Merge the shard directories (any order) into the prepared dataset `out`; returns its summary (also
    out/summary.json). An `out` merged from these very shards is reused; another is replaced only with
    `overwrite`, and only when lrl wrote it."""
    out = Path(out)
    shards = _check_shards([Path(d) for d in shard_dirs])
    if any(out.resolve() == d.resolve() for d, _ in shards):
        raise LrlError(f"--out {out} is one of the shards: choose a new folder for the merged dataset")
    with guard.output_lock(out, "data merge"), sigterm_as_interrupt():
        fp = hashlib.sha256(json.dumps([rec["fingerprint"] for _, rec in shards]).encode()).hexdigest()
        reused = reuse_output(out, fp, overwrite)
        if reused is not None:
            return reused
        guard.clean_stale_tmp(out)
        tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            summary = _write(shards, tmp, fp)
            guard.write_marker(tmp, FORMAT_VERSION)
            guard.publish(tmp, out)
        except BaseException:  # an error or Ctrl-C: no half-merged directory stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info("%s: %d shards merged, %d rows kept", out, len(shards), summary["total"]["kept"])
    return summary


def _check_shards(dirs: list[Path]) -> list[tuple[Path, dict]]:
    """(directory, shard record) of every shard in index order; LrlError naming the first problem found."""
    if not dirs:
        raise LrlError("no shard folders given: pass the n folders that `lrl data prepare --shard i/n` wrote")
    found, seen = [], {}
    for d in dirs:
        if not d.is_dir():
            raise LrlError(f"{d}: no such folder")
        if d.resolve() in seen:
            raise LrlError(f"{d} is given twice (also as {seen[d.resolve()]}): pass each shard folder once")
        seen[d.resolve()] = d
        rec = read_marker(d)
        if rec is None:
            raise LrlError(f"{d} is not a shard (no {SHARD_FILE}; `lrl data prepare --shard i/n` writes one): pass only "
                           "shard folders; a dataset prepared whole needs no merge")
        if not guard.is_marked(d) or not (d / "dataset_dict.json").is_file() or not (d / SUMMARY_FILE).is_file():
            raise LrlError(f"{d} holds {SHARD_FILE} but is not a finished prepared dataset (no {guard.PREPARED_MARKER}, "
                           f"dataset_dict.json or {SUMMARY_FILE}); prepare that shard again")
        found.append((d, rec))
    (d0, r0), n = found[0], found[0][1]["count"]
    for d, rec in found[1:]:
        if rec["count"] != n:
            raise LrlError(f"{d0} is shard {r0['index']}/{n} but {d} is shard {rec['index']}/{rec['count']}: the shards of "
                           "one run all have the same n; pass the shards of one run")
        for key, what in IDENTITY_KEYS.items():
            if rec[key] != r0[key]:
                raise LrlError(f"{d} (shard {rec['index']}/{n}) and {d0} (shard {r0['index']}/{n}) differ in their {what}: "
                               "they come from different `lrl data prepare` runs; prepare every shard from the same "
                               "corpus with the same options and --vocab")
    by_index: dict[int, list[tuple[Path, dict]]] = defaultdict(list)
    for d, rec in found:
        by_index[rec["index"]].append((d, rec))
    for i, same in sorted(by_index.items()):
        if len(same) > 1:
            raise LrlError(f"shard {i}/{n} is given twice: {same[0][0]} and {same[1][0]} (a copied folder, or one --shard "
                           "given to two runs); pass each shard once")
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        names = ", ".join(f"{i}/{n}" for i in missing)
        raise LrlError(f"shard {names} missing ({len(found)} of {n} given): prepare it with `lrl data prepare SRC "
                       f"--shard {missing[0]}/{n} --out DIR` (same options) and pass every shard folder")
    return [by_index[i][0] for i in range(n)]


def _read_summary(directory: Path) -> dict:
    try:
        summary = json.loads((directory / SUMMARY_FILE).read_text(encoding="utf-8"))
        if not isinstance(summary.get("splits"), dict) or not isinstance(summary.get("config"), dict):
            raise ValueError("no splits or config")
    except (UnicodeDecodeError, ValueError, AttributeError) as e:
        raise LrlError(f"{directory / SUMMARY_FILE} is not the summary `lrl data prepare` writes ({e}); "
                       "prepare that shard again") from e
    return summary


def _write(shards: list[tuple[Path, dict]], tmp: Path, fp: str) -> dict:
    """Write the merged dataset into `tmp`; returns its summary."""
    import datasets

    summaries = [_read_summary(d) for d, _ in shards]
    loaded = [datasets.load_from_disk(str(d)) for d, _ in shards]
    declared = list(summaries[0]["config"].get("splits", []))
    names = [s for s in declared if any(s in dd for dd in loaded)]
    names += sorted({s for dd in loaded for s in dd} - set(names))
    parts = {}
    for split in names:
        try:
            parts[split] = datasets.concatenate_datasets([dd[split] for dd in loaded if split in dd])
        except ValueError as e:  # columns or types differ: shards written by different lrl versions
            raise LrlError(f"split {split}: the shards' columns differ ({e}); prepare them again with one lrl version") from e
    tmp.mkdir(parents=True)
    save_dataset_dict(datasets.DatasetDict(parts), tmp)
    shutil.copytree(shards[0][0] / VOCAB_DIR, tmp / VOCAB_DIR)
    lines = ["split\tid\tpath\treason\tdetail"]
    for d, _ in shards:
        if (d / SKIPPED_FILE).is_file():
            lines += [x for x in (d / SKIPPED_FILE).read_text(encoding="utf-8").splitlines()[1:] if x]
    atomic_write_text(tmp / SKIPPED_FILE, "\n".join(lines) + "\n")
    summary = _merged_summary(shards, summaries, parts, fp)
    atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return summary


def _merged_summary(shards, summaries: list[dict], parts: dict, fp: str) -> dict:
    """The shards' counts summed; hours, speakers and warnings computed again from the merged columns."""
    first, splits = summaries[0], {}
    order = list(first["config"].get("splits", []))
    order += sorted({s for sm in summaries for s in sm["splits"]} - set(order))
    for split in order:
        infos = [sm["splits"][split] for sm in summaries if split in sm["splits"]]
        if not infos:
            continue
        kept = sum(i["kept"] for i in infos)
        ds = parts.get(split)
        if kept != (len(ds) if ds is not None else 0):
            raise LrlError(f"split {split}: the shards' {SUMMARY_FILE} count {kept} kept rows but their data holds "
                           f"{len(ds) if ds is not None else 0}; prepare the shards again")
        splits[split] = {
            "read": sum(i["read"] for i in infos), "kept": kept,
            "skipped": dict(sorted(sum((Counter(i["skipped"]) for i in infos), Counter()).items())),
            "kept_unfiltered": dict(sorted(sum((Counter(i.get("kept_unfiltered", {})) for i in infos), Counter()).items())),
            **speaker_stats(zip(ds["speaker"], ds["duration"], strict=True) if ds is not None else []),
        }
    speakers = {s: {x for x in parts[s]["speaker"] if x} for s in splits if s in parts}
    summary = {
        "format": FORMAT_VERSION, "source": first.get("source"), "source_kind": first.get("source_kind"),
        "fingerprint": fp, "config": first["config"], "vocab": first.get("vocab"), "sample_rate": SAMPLE_RATE,
        "splits": splits,
        "total": {k: sum(sm.get("total", {}).get(k, 0) for sm in summaries) for k in ("read", "kept", "skipped")},
        "warnings": summary_warnings(splits, speakers, sum(rec.get("oov_unk", 0) for _, rec in shards)),
        MERGED_KEY: {"shards": [str(d) for d, _ in shards], "count": len(shards),
                     **{k: shards[0][1][k] for k in IDENTITY_KEYS}},
    }
    checks = [sm["clip_durations"] for sm in summaries if sm.get("clip_durations")]
    if checks:
        summary["clip_durations"] = {"compared": sum(c["compared"] for c in checks),
                                     "mismatched": sum(c["mismatched"] for c in checks),
                                     "max_abs_diff_s": max(c["max_abs_diff_s"] for c in checks)}
    return summary
