"""How well `lrl data check-labels` finds planted transcript errors.

yo-cv's train split is prepared, then 10% of its clips are corrupted (seed 0): transcripts swapped between
clips (5%), audio cut to its first half (3%), one word dropped or inserted (2%). A model is trained on the
corrupted set with the usual recipe (`--checkpoint xl-tiny --init-head-from xl-tiny`, the `small-start`
recipe lrl picks for a trained start), check-labels ranks the train split, and the planted clips are counted
in the top 10% and top 20% of the ranking: precision (planted / clips in the top) and recall per kind.
`--retrain` also trains on the cleaned set (`--write-clean`, the top 10% removed) and puts the corrupted and
cleaned models' test CER side by side.

    .venv/bin/python bench/labels.py [--updates 800] [--retrain]
    .venv/bin/python bench/labels.py --smoke      # a few updates on 60 clips: checks the script, no results
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
YO_CV = ROOT.parent / "shared" / "data" / "yo-cv"
WORK = Path(tempfile.gettempdir()) / "lrl-bench-labels"
LRL = [sys.executable, "-m", "lrl"]
PLANT = {"swapped": 0.05, "truncated": 0.03, "words": 0.02}  # share of train clips per planted kind
TOPS = (0.10, 0.20)  # the top shares of the ranking that are checked
START = "xl-tiny"  # the shipped cross-lingual start (lrl.models registry)


def run(cmd: list, log: Path) -> float:
    """Run a command, its output to `log`; wall seconds; raises with the log's tail on failure."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{log.read_text(errors='replace')[-3000:]}")
    return time.perf_counter() - t0


def prepare(work: Path) -> Path:
    from lrl.data.prepare import PrepareConfig
    from lrl.data.prepare import prepare as prepare_data

    data = work / "yo"
    if not (data / "dataset_dict.json").is_file():
        prepare_data(YO_CV, data, PrepareConfig(max_duration=15.0, num_proc=2))
    return data


def plant(clean: Path, out: Path, seed: int = 0, max_clips: int | None = None) -> dict[str, str]:
    """Write `out`: `clean` with planted errors in its train split; id -> kind of the planted clips."""
    import datasets

    from lrl.data import guard
    from lrl.data.prepare import FORMAT_VERSION, VOCAB_DIR, load_prepared

    dd, _ = load_prepared(clean)
    train = dd["train"]
    if max_clips:
        train = train.select(range(min(max_clips, len(train))))
    n = len(train)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    counts = {k: max(2 if k == "swapped" else 1, round(share * n)) for k, share in PLANT.items()}
    picked, at = {}, 0
    for kind, k in counts.items():
        picked[kind] = [int(i) for i in order[at:at + k]]
        at += k
    texts = list(train["text"])
    words = sorted({w for t in texts for w in t.split()})
    new_text: dict[int, str] = {}
    swap = picked["swapped"]
    for a, b in zip(swap, swap[1:] + swap[:1], strict=True):  # a rotation: every clip gets another clip's transcript
        new_text[a] = texts[b]
    for j, i in enumerate(picked["words"]):
        w = texts[i].split()
        if j % 2 == 0 and len(w) > 1:
            del w[int(rng.integers(len(w)))]
        else:
            w.insert(int(rng.integers(len(w) + 1)), words[int(rng.integers(len(words)))])
        new_text[i] = " ".join(w)
    cut = set(picked["truncated"])

    def corrupt(row, i):
        if i in new_text:
            row["text"] = row["sentence"] = new_text[i]
        if i in cut:
            row["audio"] = row["audio"][: len(row["audio"]) // 2]
            row["duration"] = row["duration"] / 2
        return row

    train = train.map(corrupt, with_indices=True, desc="planting errors")
    shutil.rmtree(out, ignore_errors=True)
    datasets.DatasetDict({**dd, "train": train}).save_to_disk(str(out))
    shutil.copytree(clean / VOCAB_DIR, out / VOCAB_DIR)
    shutil.copy(clean / "summary.json", out / "summary.json")
    guard.write_marker(out, FORMAT_VERSION)
    ids = list(train["id"])
    return {str(ids[i]): kind for kind, idx in picked.items() for i in idx}


def train_cmd(data: Path, out: Path, updates: int, minutes: float) -> list:
    return [*LRL, "train", "run", "--data", data, "--checkpoint", START, "--init-head-from", START, "--out", out,
            "--max-steps", updates, "--set", f"max_minutes={minutes}", "--set", "eval.eval_steps=200",
            "--set", "eval.save_total_limit=1", "--set", "data.max_eval_clips=40"]


def measure(ranked: list[str], planted: dict[str, str]) -> list[dict]:
    """Precision/recall of the planted clips in each top share of `ranked` (ids, most suspect first)."""
    rows = []
    for top in TOPS:
        k = max(1, round(top * len(ranked)))
        head = set(ranked[:k])
        row = {"top": f"{top:.0%} ({k} clips)", "precision": sum(i in head for i in planted) / k}
        for kind in PLANT:
            ids = [i for i, c in planted.items() if c == kind]
            row[f"recall {kind}"] = sum(i in head for i in ids) / max(len(ids), 1)
        row["recall all"] = sum(i in head for i in planted) / max(len(planted), 1)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.0%}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=800, help="optimizer updates per training run")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock cap per training run")
    ap.add_argument("--retrain", action="store_true", help="also train on the cleaned set and compare test CER")
    ap.add_argument("--smoke", action="store_true", help="60 clips, 4 updates: checks the script, writes no results")
    args = ap.parse_args()
    work = WORK / ("smoke" if args.smoke else "full")
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.updates, args.minutes = 4, 5.0
    clean = prepare(WORK)
    corrupted = work / "corrupted"
    planted = plant(clean, corrupted, max_clips=60 if args.smoke else None)
    (work / "planted.json").write_text(json.dumps(planted, indent=1))
    model = work / "model-corrupted"
    if not (model / "config.json").is_file() or args.smoke:
        shutil.rmtree(model, ignore_errors=True)
        secs = run(train_cmd(corrupted, model, args.updates, args.minutes), work / "train-corrupted.log")
        print(f"trained on the corrupted set in {secs / 60:.1f} min", flush=True)
    cleaned = work / "cleaned"
    shutil.rmtree(cleaned, ignore_errors=True)
    t0 = time.perf_counter()
    run([*LRL, "data", "check-labels", model, corrupted, "--split", "train", "--write-clean", cleaned],
        work / "check-labels.log")
    check_secs = time.perf_counter() - t0
    scores = work / "check-labels.tsv"
    from lrl.core.io import read_table
    from lrl.evaluate.labels import SCORES_FILE, SUSPECTS_DIR

    _, rows = read_table(model / SUSPECTS_DIR.format(split="train") / SCORES_FILE)
    shutil.copy(model / SUSPECTS_DIR.format(split="train") / SCORES_FILE, scores)
    ranked = [r["id"] for r in rows]  # most suspect first
    kinds_found = {}
    for r in rows[: round(0.2 * len(rows))]:
        if r["id"] in planted:
            kinds_found.setdefault(planted[r["id"]], {}).setdefault(r["kind"], 0)
            kinds_found[planted[r["id"]]][r["kind"]] += 1
    result = measure(ranked, planted)
    print(table(result))
    print("kind guessed for planted clips in the top 20%:", kinds_found)
    md = [
        f"{len(ranked)} train clips of yo-cv, {len(planted)} planted errors "
        f"({', '.join(f'{sum(c == k for c in planted.values())} {k}' for k in PLANT)}); a model trained on the "
        f"corrupted set: `{START}` start + head, **{args.updates} updates** (fewer than the usual 2000: the bench "
        f"machine is 2 shared cores); check-labels on the train split in {check_secs:.0f} s.",
        "", table(result), "",
        "Kind guessed by check-labels for the planted clips in the top 20% (planted kind: {guessed kind: clips}): "
        f"`{json.dumps(kinds_found)}`.",
    ]
    if args.retrain:
        cer = {}
        for name, data in (("corrupted", corrupted), ("cleaned", cleaned)):
            m = work / f"model-{name}" if name == "cleaned" else model
            if name == "cleaned":
                shutil.rmtree(m, ignore_errors=True)
                run(train_cmd(data, m, args.updates, args.minutes), work / f"train-{name}.log")
            run([*LRL, "evaluate", m, data, "--split", "test", "--no-lm", "--no-report", "--out", work / f"eval-{name}"],
                work / f"eval-{name}.log")
            greedy = json.loads((work / f"eval-{name}" / "summary.json").read_text())["greedy"]
            cer[name] = (greedy["cer"], greedy["wer"])
        print("test CER/WER (greedy):", cer)
        md += ["", f"Retrained on the cleaned set (the top 10% removed, same recipe and {args.updates} updates) vs the "
               "corrupted set, test split, greedy decoding:", "",
               "| trained on | test CER | test WER |", "|---|---|---|",
               *(f"| {k} | {c:.1%} | {w:.1%} |" for k, (c, w) in cer.items()),
               "", "(one training run each: differences of a point or two are within run-to-run noise.)"]
    else:
        md += ["", "Not run here: retraining on the cleaned set (`--retrain`, one more training run)."]
    if args.smoke:
        print("\n".join(md))
        return
    from _results import update_section

    print(f"-> {update_section('labels', chr(10).join(md))}")


if __name__ == "__main__":
    main()
