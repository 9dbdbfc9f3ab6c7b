"""Data preparation speed: `lrl.data.prepare.prepare` against the plain `datasets` route on the same TSV.

Baseline: `Dataset.from_dict` + `cast_column("audio", Audio(sampling_rate=16000))` + a `map` that reads
`audio["array"]` (torchcodec decodes and resamples), then `save_to_disk`. Candidate: `prepare` (soundfile +
soxr in `num_proc` processes, Arrow written directly, the `save_to_disk` layout written around the shards by
`lrl.core.hf_datasets`). `lrl-public` is `prepare` ending with the public `datasets` route instead
(`Dataset.from_file` per shard + `concatenate_datasets` + `DatasetDict.save_to_disk`, which copies every
shard): the measurement behind the adapter. Each trial runs in a fresh subprocess (so peak RSS
is its own), trials are interleaved (A B C A B C ...) and the table reports medians and median ratios.

    .venv/bin/python bench/prepare.py [--corpus ../shared/data/yo-cv] [--table train] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _rows(corpus: Path, table: str) -> tuple[list[str], list[str]]:
    lines = (corpus / f"{table}.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]
    return [str(corpus / "clips" / r["path"]) for r in rows], [r["sentence"] for r in rows]


def run_baseline(corpus: Path, table: str, out: Path, num_proc: int) -> int:
    import datasets
    import numpy as np

    datasets.disable_progress_bars()
    paths, sentences = _rows(corpus, table)
    ds = datasets.Dataset.from_dict({"audio": paths, "sentence": sentences})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))

    def decode(batch):
        arrays = [np.asarray(a["array"], dtype=np.float32) for a in batch["audio"]]
        return {"samples": arrays, "duration": [len(a) / 16000 for a in arrays]}

    ds = ds.map(decode, batched=True, batch_size=16, remove_columns=["audio"], num_proc=num_proc if num_proc > 1 else None,
                cache_file_name=str(out / "cache" / "map.arrow") if num_proc == 1 else None)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(out / "ds"))
    return len(ds)


def _save_public(directory: Path, shards: list[Path], splits: tuple[str, ...], features: dict, fp: str) -> list[str]:
    """What `lrl.core.hf_datasets.write_saved_dataset` writes, by the public `datasets` API: each split's shards
    opened with `Dataset.from_file`, joined with `concatenate_datasets`, saved with `DatasetDict.save_to_disk`."""
    import datasets

    datasets.disable_progress_bars()
    splits_out = {}
    for split in splits:
        parts = [p for p in shards if p.parent.name == split and p.is_file()]
        if parts:
            splits_out[split] = datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in parts])
    saved = directory / "saved"
    datasets.DatasetDict(splits_out).save_to_disk(str(saved))
    for split in splits:
        shutil.rmtree(directory / split, ignore_errors=True)
    for p in saved.iterdir():
        p.rename(directory / p.name)
    saved.rmdir()
    return list(splits_out)


def run_lrl(corpus: Path, table: str, out: Path, num_proc: int, vocab: Path | None, public: bool = False) -> int:
    from lrl.data import prepare as prep
    from lrl.data.prepare import PrepareConfig, prepare

    if public:  # the shards are written as before; only the step that makes them a saved DatasetDict changes
        if hasattr(prep, "hf_datasets"):
            prep.hf_datasets.write_saved_dataset = _save_public
        else:  # before the adapter existed
            prep._finish_splits = _save_public

    cfg = PrepareConfig(splits=(table,), num_proc=num_proc, min_duration=0.0, max_duration=1e9,
                        max_chars_per_second=1e9, oov="unk")
    summary = prepare(corpus, out / "ds", cfg, vocab_dir=vocab)
    return summary["total"]["kept"]


def _trial(kind: str, corpus: Path, table: str, num_proc: int, vocab: Path | None) -> dict:
    """One measured run in this process (called in a subprocess by main)."""
    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        out = Path(tmp)
        (out / "cache").mkdir()
        c0 = cpu()
        t0 = time.perf_counter()
        if kind == "baseline":
            n = run_baseline(corpus, table, out, num_proc)
        else:
            n = run_lrl(corpus, table, out, num_proc, vocab if kind != "lrl+vocab" else None, public=kind == "lrl-public")
        secs = time.perf_counter() - t0
        cpu_secs = cpu() - c0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"clips": n, "seconds": secs, "cpu_seconds": cpu_secs, "rss_mb": rss_self, "worker_rss_mb": rss_children}


# "lrl": vocabulary given (--vocab, copied), like the baseline which builds none; "lrl+vocab": built in the run
# (its fixed cost: the HF tokenizer save imports transformers and torch, ~3 s of CPU).
CANDIDATES = [("baseline", 1), ("lrl", 1), ("lrl-public", 1), ("lrl", 2), ("lrl+vocab", 2), ("baseline", 2)]
NAMES = {"baseline": "datasets: from_dict + cast_column(Audio) + map", "lrl": "lrl.data.prepare.prepare --vocab",
         "lrl-public": "same, saved by from_file + concatenate_datasets + save_to_disk",
         "lrl+vocab": "lrl.data.prepare.prepare (builds the vocab)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "yo-cv")
    ap.add_argument("--table", default="train")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trial", nargs=2, metavar=("KIND", "NUM_PROC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        print(json.dumps(_trial(args.trial[0], args.corpus.resolve(), args.table, int(args.trial[1]), args.vocab)))
        return

    from lrl.data.vocab import build_vocab

    vocab_dir = Path(tempfile.mkdtemp(prefix="bench-prepare-vocab-"))
    build_vocab(_rows(args.corpus, args.table)[1]).vocab.save(vocab_dir)  # outside the timed trials
    import importlib.util

    candidates = CANDIDATES
    if importlib.util.find_spec("torchcodec") is None:  # datasets' Audio feature decodes with it
        candidates = [c for c in CANDIDATES if c[0] != "baseline"]
        print("torchcodec is not installed: the datasets Audio baseline is skipped, ratios are against "
              "lrl num_proc=1", file=sys.stderr)
    results: dict[tuple[str, int], list[dict]] = {c: [] for c in candidates}
    for rep in range(args.repeats):
        for kind, num_proc in candidates:
            cmd = [sys.executable, __file__, "--corpus", str(args.corpus), "--table", args.table,
                   "--trial", kind, str(num_proc), "--vocab", str(vocab_dir)]
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if res.returncode != 0:
                shutil.rmtree(vocab_dir, ignore_errors=True)
                sys.exit(f"{kind} num_proc={num_proc} failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            results[(kind, num_proc)].append(r)
            print(f"rep {rep}: {kind:8s} num_proc={num_proc}: {r['clips']} clips in {r['seconds']:.2f} s "
                  f"({r['cpu_seconds']:.2f} CPU s), "
                  f"RSS {r['rss_mb']:.0f} MB (workers {r['worker_rss_mb']:.0f} MB)", file=sys.stderr)

    base = results[candidates[0]]
    ref = "baseline" if candidates[0][0] == "baseline" else "lrl num_proc=1"
    lines = [
        f"Corpus `{args.corpus.name}/{args.table}.tsv` ({base[0]['clips']} clips, mp3 32 kHz -> 16 kHz float32), "
        f"{args.repeats} interleaved repeats, each trial a fresh process; 2 shared cores (other engineers' jobs running).",
        "",
        f"| route | num_proc | median clips/s (wall) | speed-up vs {ref} (wall) | clips per CPU-second | "
        f"speed-up vs {ref} (CPU) | peak RSS main (MB) | peak RSS workers (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, num_proc), rs in results.items():
        cps = statistics.median(r["clips"] / r["seconds"] for r in rs)
        ratio = statistics.median(b["seconds"] / r["seconds"] for b, r in zip(base, rs, strict=True))
        cpu_cps = statistics.median(r["clips"] / r["cpu_seconds"] for r in rs)
        cpu_ratio = statistics.median(b["cpu_seconds"] / r["cpu_seconds"] for b, r in zip(base, rs, strict=True))
        lines.append(f"| {NAMES[kind]} | {num_proc} | {cps:.1f} | {ratio:.2f}x | {cpu_cps:.1f} | {cpu_ratio:.2f}x | "
                     f"{max(r['rss_mb'] for r in rs):.0f} | {max(r['worker_rss_mb'] for r in rs):.0f} |")
    lines += ["", f"Ratios are {ref} seconds / route seconds within the same repeat, then the median over repeats. "
              "Both routes end with the dataset saved to disk; lrl's filters are opened wide so both keep every clip. "
              "`--vocab` rows get a vocabulary built before the timed trials (the baseline builds none either); the "
              "last lrl row builds it inside the run (the HF tokenizer save imports transformers + torch). "
              f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. "
              "CPU seconds are user + sys of the trial and its child processes (decoding workers). "
              "This machine schedules by session (sched_autogroup): all processes of one session share one "
              "fair share of the 2 cores with the other engineers' sessions, so extra workers cannot add CPU "
              "here and num_proc=2 shows its cost (forking, one more process) but not its gain; "
              "the CPU columns are the contention-free measure."]
    shutil.rmtree(vocab_dir, ignore_errors=True)
    from _results import update_section

    print("\n".join(lines))
    print(f"written to {update_section('prepare', chr(10).join(lines))}", file=sys.stderr)


if __name__ == "__main__":
    main()
