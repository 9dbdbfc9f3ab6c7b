"""Does `lrl data select` choose better clips to transcribe than chance? Simulated transcription rounds on
yo-cv: start with 20% of the train split labelled (the same random 20% for both arms), then each round add
10% of the split's hours, chosen by select (the model's uncertainty, at most a quarter of the hours from one
speaker) or at random, retrain with the usual recipe (`xl-tiny` start + head, the `small-start` recipe) and
score the test split (greedy CER). Writes a table and a plot of test CER after each round for both arms.

    .venv/bin/python bench/select_rounds.py [--rounds 3] [--updates 600]
    .venv/bin/python bench/select_rounds.py --smoke      # 40 clips, 1 round, 2 updates: checks the script only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from labels import LRL, START, WORK, prepare, run  # noqa: E402  (bench/labels.py: the shared helpers)

START_SHARE, ROUND_SHARE = 0.2, 0.1  # labelled at the start; hours added per round (shares of the split)


def subset(data: Path, out: Path, ids: set[str]) -> Path:
    """`data` whose train split holds only `ids` (the same layout as `lrl data prepare`)."""
    from lrl.data.prepare import load_prepared
    from lrl.evaluate.labels import write_clean_dataset

    shutil.rmtree(out, ignore_errors=True)

    dd, _ = load_prepared(data)
    return write_clean_dataset(data, out, "train", {str(x) for x in dd["train"]["id"]} - ids)


def by_select(model: Path, data: Path, pool: list[int], hours: float) -> list[int]:
    """Row indices of the pool clips `select` chooses: most uncertain first, speakers capped."""
    from lrl.data.prepare import load_prepared
    from lrl.evaluate.inference import AcousticModel
    from lrl.evaluate.select import Candidate, SelectConfig, choose, uncertainty

    train = load_prepared(data)[0]["train"].select(pool)
    am = AcousticModel(model)
    logps = am.log_probs([np.asarray(a, np.float32) for a in train["audio"]])
    cands = [Candidate(str(i), float(d), uncertainty(lp), str(s))
             for i, d, lp, s in zip(pool, train["duration"], logps, train["speaker"], strict=True)]
    return [int(c.path) for c in choose(cands, SelectConfig(hours=hours))]


def by_random(durations: list[float], pool: list[int], hours: float, rng) -> list[int]:
    out, total = [], 0.0
    for i in rng.permutation(pool):
        if total + durations[i] <= hours * 3600:
            out.append(int(i))
            total += durations[i]
    return out


def train_and_score(data: Path, model: Path, updates: int, minutes: float, log: Path) -> float:
    shutil.rmtree(model, ignore_errors=True)
    run([*LRL, "train", "run", "--data", data, "--checkpoint", START, "--init-head-from", START, "--out", model,
         "--max-steps", updates, "--set", f"max_minutes={minutes}", "--set", "eval.eval_steps=100000",
         "--set", "eval.save_total_limit=1"], log)
    ev = model.parent / f"{model.name}-eval"
    run([*LRL, "evaluate", model, data, "--split", "test", "--no-lm", "--no-report", "--out", ev], log.with_suffix(".eval.log"))
    summary = json.loads((ev / "summary.json").read_text())
    return float(summary["greedy"]["cer"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.updates, args.minutes = 1, 2, 3.0
    work = WORK / ("select-smoke" if args.smoke else "select")
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(WORK)
    from lrl.data.prepare import load_prepared

    train = load_prepared(data)[0]["train"]
    n = 40 if args.smoke else len(train)
    durations = [float(d) for d in train["duration"]]
    ids = [str(x) for x in train["id"]]
    hours_total = sum(durations[:n]) / 3600
    rng = np.random.default_rng(0)
    start = [int(i) for i in rng.permutation(n)[: round(START_SHARE * n)]]
    cer: dict[str, list[float]] = {"select": [], "random": []}
    hours: list[float] = []
    for arm in cer:
        labelled = list(start)
        for r in range(args.rounds + 1):
            if r == 0 and arm == "random":  # round 0 is the same labelled set for both arms: trained once
                cer[arm].append(cer["select"][0])
            else:
                d = subset(data, work / f"{arm}-{r}-data", {ids[i] for i in labelled})
                model = work / f"{arm}-{r}-model"
                cer[arm].append(train_and_score(d, model, args.updates, args.minutes, work / f"{arm}-{r}.log"))
            if arm == "select":
                hours.append(sum(durations[i] for i in labelled) / 3600)
            print(f"{arm} round {r}: {len(labelled)} clips, test CER {cer[arm][-1]:.3f}", flush=True)
            if r == args.rounds:
                break
            pool = [i for i in range(n) if i not in set(labelled)]
            add = ROUND_SHARE * hours_total
            labelled += by_select(model, data, pool, add) if arm == "select" else by_random(durations, pool, add, rng)
    rows = ["| round | labelled h (select) | test CER select | test CER random |", "|---|---|---|---|"]
    rows += [f"| {r} | {hours[r]:.3f} | {cer['select'][r]:.3f} | {cer['random'][r]:.3f} |" for r in range(args.rounds + 1)]
    print("\n".join(rows))
    if args.smoke:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for arm, ys in cer.items():
        ax.plot(range(len(ys)), ys, marker="o", label=arm)
    ax.set_xlabel("round (+10% of the hours each)")
    ax.set_ylabel("test CER (greedy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("select_rounds.png"), dpi=110)
    better = sum(s < r for s, r in zip(cer["select"][1:], cer["random"][1:], strict=True))
    from _results import update_section

    update_section("select_rounds", "\n".join(rows) + f"\n\nselect beat random in {better} of {args.rounds} rounds "
                   f"({args.updates} updates per model).{reading(cer, hours, args.updates)} ![rounds](select_rounds.png)")


def reading(cer: dict[str, list[float]], hours: list[float], updates: int) -> str:
    """A run where more labelled hours lowered neither arm's CER cannot rank the two rules: say so."""
    if max(ys[0] - ys[-1] for ys in cer.values()) >= 0.01:
        return ""
    return (f" More labelled hours did not lower test CER in either arm ({hours[0]:.2f} h -> {hours[-1]:.2f} h: select "
            f"{cer['select'][0]:.1%} -> {cer['select'][-1]:.1%}, random {cer['random'][0]:.1%} -> "
            f"{cer['random'][-1]:.1%}): at {updates} updates per model the models are limited by updates, not data, "
            "so this run cannot rank the two rules; rerun with more --updates.")


if __name__ == "__main__":
    main()
