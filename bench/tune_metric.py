"""`lrl lm tune --metric cer` against the WER-tuned baseline: does tuning alpha/beta (and beam) for CER lower
test CER, and what does it cost in WER? One trained model, each LM tuned on dev twice (a copy of the model
per metric, the same grid), then test scored greedy and with the tuned LM.

    .venv/bin/python bench/tune_metric.py --model DIR --data DIR --lm DIR [--lm DIR ...]

Default inputs are bench/selftrain.py's: its labelled-only model (arm a of the `oracle` run), L (labelled
25% of yo-cv) and the char 6-gram / word 3-gram it builds; run bench/selftrain.py first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "tune_metric"
SELF = ROOT / "bench" / "_work" / "selftrain"
LRL = [sys.executable, "-m", "lrl"]
sys.path.insert(0, str(ROOT / "bench"))
from labels import run  # noqa: E402  (run a command, its output to a log, wall seconds)
from selftrain import TUNE_GRID as GRID  # noqa: E402  (the grid bench/selftrain tunes every model on)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SELF / "run-oracle" / "a")
    ap.add_argument("--data", type=Path, default=SELF / "labelled")
    ap.add_argument("--lm", type=Path, action="append")
    args = ap.parse_args()
    lms = args.lm or [p for p in (SELF / "yo-char-lm", SELF / "yo-lm") if p.is_dir()]
    if not (args.model / "model.safetensors").is_file() or not lms:
        sys.exit(f"need a trained model ({args.model}) and an LM (--lm): run bench/selftrain.py first")
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for lm in lms:
        for metric in ("wer", "cer"):
            model = WORK / f"{lm.name}-{metric}"
            shutil.rmtree(model, ignore_errors=True)
            shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("checkpoint-*", "eval-*", "tune-*",
                                                                              "language_model", "decoder.json"))
            run([*LRL, "lm", "tune", model, args.data, "--lm", lm, "--split", "dev", "--metric", metric, *GRID],
                WORK / f"{model.name}.tune.log")
            run([*LRL, "evaluate", model, args.data, "--split", "test"], WORK / f"{model.name}.eval.log")
            dec = json.loads((model / "decoder.json").read_text())
            test = json.loads((model / "eval-test" / "summary.json").read_text())
            rows.append({"lm": lm.name, "metric": metric, "alpha": dec["alpha"], "beta": dec["beta"],
                         "beam": dec["beam_width"], "dev_wer": dec["dev_wer"]["tuned"], "dev_cer": dec["dev_cer"]["tuned"],
                         "greedy": test["greedy"], "test": test["lm"]})
            print(rows[-1], flush=True)
    lines = [f"Model `{args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model}` (labelled-only "
             f"xl-tiny run), data `{args.data.name}`; each LM tuned on dev for WER (the baseline: `lm tune`'s default) "
             "and for CER on the same grid (alpha 0-2, beta -1-3, beam 32/64, three refinement rounds), then scored on "
             "test.", "",
             "| LM | tuned for | alpha | beta | beam | dev WER | dev CER | test WER | test CER | test CER greedy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['lm']} | {r['metric']} | {r['alpha']:g} | {r['beta']:g} | {r['beam']} | {r['dev_wer']:.1%} | "
                     f"{r['dev_cer']:.1%} | {r['test']['wer']:.1%} | {r['test']['cer']:.1%} | {r['greedy']['cer']:.1%} |")
    for lm in lms:
        w, c = (next(r for r in rows if r["lm"] == lm.name and r["metric"] == m) for m in ("wer", "cer"))
        lines.append("")
        lines.append(f"{lm.name}: test CER {w['test']['cer']:.1%} tuned for WER, {c['test']['cer']:.1%} tuned for CER "
                     f"({c['test']['cer'] / w['test']['cer'] - 1:+.0%}); test WER {w['test']['wer']:.1%} vs "
                     f"{c['test']['wer']:.1%}.")
    from _results import update_section

    update_section("tune_metric", "\n".join(lines))


if __name__ == "__main__":
    main()
