"""The low-resource benchmark: what each way of starting and fine-tuning buys on real Yoruba speech
(../shared/data/yo-cv) with a tiny model and a fixed wall-clock budget per arm (pretraining counted).

Arms (all `tiny_config("small")`-shaped, 2.5M parameters):
  a  from scratch: random init, lrl's CPU recipe (high LR, short warm-up, conv front end trained)
  b  `lrl pretrain` on all unlabeled speech in ../shared/data (yo-cv clips + fsdd), then fine-tune
     (the pretraining minutes come out of the arm's budget)
  c  the cross-lingual start lrl ships (`xl-tiny`, rebuilt by `make xl-start`): CTC on espeak-ng speech
     in 6 languages (cy eu ga-IE mt de en), then fine-tuned on Yoruba with head transfer
     (--init-head-from); its build is reported apart, like XLS-R's pretraining is not paid by its users
  d  the best start of a-c plus layer-wise LR decay, progressive unfreezing and `light` augmentation
  e  the same start as d with the defaults of HF's run_speech_recognition_ctc.py (lr 3e-4, warmup 500,
     linear decay, batch 8 clips, feature encoder frozen, mask_time_prob 0.05)
Each arm: greedy, with a KenLM word 3-gram and with a character 6-gram (KenLM's largest order) from
lm-text/yo.txt (dev/test sentences excluded), each LM's alpha/beta tuned on dev with the C++ backend; WER/CER on
test for both, and the LM the dev WER picks. `--steps c=2050,d=1930` trains a fixed number of updates per arm
instead of a wall-clock budget (a run that shares the CPU then trains the same model).
Usage: python bench/lowres.py [--minutes 20] [--steps ARM=N,...] [--arms abcde] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench" / "_work" / "lowres"
LRL = [sys.executable, "-m", "lrl"]
sys.path.insert(0, str(Path(__file__).parent))


def run(cmd: list[str], log: Path) -> float:
    """Run a command, its output to `log`; returns wall seconds; raises on failure with the log's tail."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return time.perf_counter() - t0


STEPS: dict[str, int] = {}  # --steps: arm -> fixed updates (no wall-clock budget)


def train_cmd(data: Path, start: str, out: Path, minutes: float, extra: list[str]) -> list[str]:
    arm = out.parent.name
    budget = (["--set", "max_minutes=0", "--set", f"optim.max_steps={STEPS[arm]}"] if arm in STEPS
              else ["--set", f"max_minutes={minutes}", "--set", "optim.max_steps=100000"])
    sets = [
        *budget,
        "--set", "eval.eval_steps=100", "--set", "eval.save_total_limit=1", "--set", "data.max_eval_clips=40",
    ]
    return [*LRL, "train", "run", "--data", data, "--checkpoint", start, "--out", out, *sets, *extra]


SCRATCH_RECIPE = ["--set", "recipe=scratch"]  # lrl.train.recipes: lrl's CPU recipe for a random start (ENV-NOTES)
FINETUNE_RECIPE = ["--set", "recipe=small-start"]  # lrl.train.recipes: a trained start, conv front end kept, gentler LR
SCHEDULE_EXTRAS = [  # arm d on top of the best start's recipe
    "--set", "optim.layer_decay=0.8", "--set", "optim.head_lr_mult=2.0", "--set", "freeze.freeze_encoder_steps=50",
    "--set", "freeze.unfreeze_layers=1", "--set", "freeze.unfreeze_every=50", "--set", "data.augment=light",
]
HF_DEFAULTS = [  # run_speech_recognition_ctc.py + its README's recipe, mapped onto lrl's keys
    "--set", "optim.lr=3e-4", "--set", "optim.warmup_steps=500", "--set", "optim.schedule=linear",
    "--set", "freeze.freeze_feature_encoder=true", "--set", "batching.max_seconds=100000",
    "--set", "batching.max_batch_size=8", "--set", "model.spec_augment=hf-default",
]


GRID = ["--alphas", "0,0.5,1,1.5,2", "--betas", "-1,0,1,2,3", "--beam-widths", "32,64"]
SMOKE_GRID = ["--alphas", "0.5,1.5", "--betas", "0,2", "--no-refine", "--grid-beam", "8", "--beam-widths", "8"]


def evaluate_arm(model: Path, data: Path, lms: dict[str, Path], logdir: Path, grid: list[str]) -> dict:
    """Greedy test scores, then for each LM (word, char): tune on dev, score test. The one with the lower dev WER
    is the arm's `lm` (chosen on dev, never on test) and stays installed in the model."""
    out: dict = {"by_lm": {}}
    for name, lm in lms.items():
        run([*LRL, "lm", "tune", model, data, "--lm", lm, "--split", "dev", *grid], logdir / f"tune-{name}.log")
        run([*LRL, "evaluate", model, data, "--split", "test"], logdir / f"evaluate-{name}.log")
        summary = json.loads((model / "eval-test" / "summary.json").read_text())
        dec = json.loads((model / "decoder.json").read_text())
        out["greedy"] = summary["greedy"]
        out["by_lm"][name] = {"test": summary["lm"], "dev_wer": dec["dev_wer"]["tuned"],
                              "alpha": dec.get("alpha"), "beta": dec.get("beta"), "beam": dec.get("beam_width")}
    best = min(out["by_lm"], key=lambda k: out["by_lm"][k]["dev_wer"])
    out["lm"], out["best_lm"] = out["by_lm"][best]["test"], best
    if best != list(lms)[-1]:  # leave the dev-chosen LM installed
        run([*LRL, "lm", "tune", model, data, "--lm", lms[best], "--split", "dev", *grid], logdir / f"tune-{best}.log")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget per arm (pretraining included)")
    ap.add_argument("--pretrain-share", type=float, default=0.4, help="share of arm b's budget spent pretraining")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, measures nothing")
    ap.add_argument("--arms", default="abcde")
    ap.add_argument("--steps", default="", help="fixed updates per arm instead of --minutes, e.g. c=2050,d=1930,e=390")
    ap.add_argument("--report", action="store_true", help="run nothing: rewrite the table from WORK/state.json")
    args = ap.parse_args()
    if args.report:
        args.arms = ""
    if args.smoke:
        args.minutes = 1.5
    STEPS.update({k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(",") if kv)})
    WORK.mkdir(parents=True, exist_ok=True)
    data, lm, char_lm = WORK / "yo-data", WORK / "yo-lm", WORK / "yo-char-lm"
    if not (data / "summary.json").is_file():
        run([*LRL, "data", "prepare", SHARED / "yo-cv", "--out", data, "--language", "yo", "--no-card"], WORK / "prepare.log")
    if not (lm / "lm_build.json").is_file():
        run([*LRL, "lm", "build", SHARED / "lm-text" / "yo.txt", "--vocab", data / "vocab", "--order", "3",
             "--oov", "strip-marks", "--exclude", SHARED / "yo-cv" / "dev.tsv", "--exclude", SHARED / "yo-cv" / "test.tsv",
             "--out", lm], WORK / "lm.log")
    if not (char_lm / "lm_build.json").is_file():
        run([*LRL, "lm", "build", SHARED / "lm-text" / "yo.txt", "--vocab", data / "vocab", "--order", "6",
             "--unit", "char", "--oov", "strip-marks", "--exclude", SHARED / "yo-cv" / "dev.tsv",
             "--exclude", SHARED / "yo-cv" / "test.tsv", "--out", char_lm], WORK / "char-lm.log")
    lms = {"word 3-gram": lm, "char 6-gram": char_lm}

    # arms already run with these settings are kept (rerun one with --arms): WORK/state.json
    state_file = WORK / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("settings") != [args.minutes, args.smoke, STEPS]:
        state = {"settings": [args.minutes, args.smoke, STEPS]}
    results: dict[str, dict] = state.setdefault("results", {})
    wall: dict[str, float] = state.setdefault("wall", {})
    starts: dict[str, list] = state.setdefault("starts", {})  # arm -> [start checkpoint, its recipe]
    notes: list[str] = state.setdefault("notes", [])
    for arm in args.arms:  # rerun arms lose their old results, notes and run directories
        results.pop(arm, None)
        notes[:] = [n for n in notes if not n.startswith(f"{arm}:")]
        shutil.rmtree(WORK / arm, ignore_errors=True)
    budget = args.minutes
    grid = SMOKE_GRID if args.smoke else GRID

    if "a" in args.arms:
        d = WORK / "a"
        d.mkdir(exist_ok=True)
        run([*LRL, "train", "init-tiny", d / "init", "--size", "small"], d / "init.log")
        wall["a"] = run(train_cmd(data, str(d / "init"), d / "model", budget, SCRATCH_RECIPE), d / "train.log")
        starts["a"] = (str(d / "init"), SCRATCH_RECIPE)
        results["a"] = evaluate_arm(d / "model", data, lms, d, grid)
        write_table(results, wall, notes, starts, args)  # partial results land even if a later arm fails

    if "b" in args.arms:
        d = WORK / "b"
        d.mkdir(exist_ok=True)
        pre_min = budget * args.pretrain_share
        t_pre = run([*LRL, "pretrain", SHARED / "yo-cv" / "clips", SHARED / "fsdd" / "recordings", "--fresh", "tiny-small",
                     "--out", d / "ssl", "--steps", "100000", "--max-minutes", str(pre_min), "--lr", "5e-4",
                     "--warmup", "50", "--max-seconds", "8", "--min-seconds", "1", "--gumbel-min-at-step", "2000"],
                    d / "pretrain.log")
        t_ft = run(train_cmd(data, str(d / "ssl"), d / "model", max(0.5, budget - t_pre / 60), SCRATCH_RECIPE), d / "train.log")
        wall["b"] = t_pre + t_ft
        starts["b"] = (str(d / "ssl"), SCRATCH_RECIPE)
        results["b"] = evaluate_arm(d / "model", data, lms, d, grid)
        write_table(results, wall, notes, starts, args)  # partial results land even if a later arm fails
        notes.append(f"b: pretraining took {t_pre / 60:.1f} of its {budget:.0f} minutes")

    if "c" in args.arms:
        from lrl.models.checkpoints import resolve_checkpoint

        d = WORK / "c"
        d.mkdir(exist_ok=True)
        xl = resolve_checkpoint("xl-tiny")  # the shipped start; `make xl-start` rebuilds it
        info = json.loads((Path(xl) / "start.json").read_text())
        notes.append(f"c: the shipped xl-tiny start ({', '.join(sorted(info['texts']))}; {info['updates']} CTC updates) "
                     f"took {info['build_minutes']:.1f} min to build with `make xl-start` (not counted in the arm)")
        xl_recipe = [*FINETUNE_RECIPE, "--init-head-from", xl]
        wall["c"] = run(train_cmd(data, xl, d / "model", budget, xl_recipe), d / "train.log")
        starts["c"] = (xl, xl_recipe)
        results["c"] = evaluate_arm(d / "model", data, lms, d, grid)
        write_table(results, wall, notes, starts, args)  # partial results land even if a later arm fails

    if starts and ("d" in args.arms or "e" in args.arms):
        best = min(starts, key=lambda k: last_dev_cer(WORK / k / "model"))  # chosen on dev, never on test
        start, recipe = starts[best]
        notes[:] = [n for n in notes if not n.startswith("d/e")]
        notes.append(f"d/e start from arm {best}'s starting checkpoint (lowest final dev CER of the starts)")
        head = ["--init-head-from", recipe[recipe.index("--init-head-from") + 1]] if "--init-head-from" in recipe else []
        for arm, extra in (("d", [*recipe, *SCHEDULE_EXTRAS]), ("e", [*HF_DEFAULTS, *head])):
            if arm not in args.arms:
                continue
            d = WORK / arm
            d.mkdir(exist_ok=True)
            wall[arm] = run(train_cmd(data, start, d / "model", budget, extra), d / "train.log")
            results[arm] = evaluate_arm(d / "model", data, lms, d, grid)
            write_table(results, wall, notes, starts, args)  # partial results land even if a later arm fails
    if results:
        write_table(results, wall, notes, starts, args)


def findings(results: dict) -> list[str]:
    """What the table says, computed from it (test CER greedy; LM gain on WER), whichever way it came out."""
    cer = {a: r["greedy"]["cer"] for a, r in results.items()}
    out = []

    def compare(x: str, y: str, what: str) -> None:
        if x in cer and y in cer:
            verdict = "helped" if cer[x] < cer[y] - 0.01 else "hurt" if cer[x] > cer[y] + 0.01 else "made no clear difference"
            out.append(f"- {what} {verdict}: test CER {cer[x]:.1%} ({x}) vs {cer[y]:.1%} ({y}).")

    compare("b", "a", "Self-supervised pretraining (inside the same budget)")
    compare("c", "a", "The cross-lingual start")
    compare("d", "c", "Layer-wise LR + progressive unfreezing + light augmentation (augmentation also turns the "
                      "conv cache off: see the updates column)")
    compare("c", "e", "lrl's fine-tuning recipe, against HF's example defaults from the same start,")
    gains = {a: (r["greedy"]["wer"] - r["lm"]["wer"]) / r["greedy"]["wer"]
             for a, r in results.items() if r.get("lm") and r["greedy"]["wer"]}
    if gains:
        out.append("- The LM lowers WER in " + f"{sum(g > 0 for g in gains.values())} of {len(gains)} arms "
                   + f"(relative gain {min(gains.values()):+.1%} to {max(gains.values()):+.1%}).")
    both = {a: r["by_lm"] for a, r in results.items() if len(r.get("by_lm") or {}) == 2}
    if both:
        char_better = [a for a, b in both.items() if b["char 6-gram"]["test"]["cer"] < b["word 3-gram"]["test"]["cer"]]
        out.append(f"- The char 6-gram gives a lower test CER than the word 3-gram in {len(char_better)} of {len(both)} "
                   f"arms ({', '.join(char_better) or 'none'}); dev picked char in "
                   f"{sum(r.get('best_lm') == 'char 6-gram' for r in results.values())} of {len(results)}.")
    return out


def updates(arm: str) -> str:
    path = WORK / arm / "model" / "metrics.csv"
    rows = list(csv.DictReader(path.open())) if path.is_file() else []
    return str(max(int(r["step"]) for r in rows)) if rows else "?"


def last_dev_cer(model: Path) -> float:
    rows = [r for r in csv.DictReader((model / "metrics.csv").open()) if r.get("eval_cer")]
    return float(rows[-1]["eval_cer"]) if rows else 1.0


ARM_NAMES = {
    "a": "a: from scratch", "b": "b: lrl pretrain, then fine-tune", "c": "c: cross-lingual espeak start + head transfer",
    "d": "d: best start + layer-wise LR, unfreezing, augmentation", "e": "e: best start, HF example defaults",
}


def write_table(results: dict, wall: dict, notes: list[str], starts: dict, args) -> None:
    from _results import update_section

    state = {"settings": [args.minutes, args.smoke, STEPS], "results": results, "wall": wall,
             "notes": notes, "starts": starts}
    (WORK / "state.json").write_text(json.dumps(state, indent=1))

    budget = (f"a fixed number of updates per arm ({', '.join(f'{k}={v}' for k, v in sorted(STEPS.items()))}: "
              "the update counts of the 2026-11-24 run's 10-minute budget)" if STEPS
              else f"budget {args.minutes:g} wall-clock minutes per arm")
    lines = [
        f"yo-cv train (1.56 h, one speaker) -> test (100 clips); tiny 2.5M-parameter Wav2Vec2; {budget}"
        f"{' (SMOKE RUN: pipeline check only)' if args.smoke else ''}. LMs from lm-text/yo.txt minus dev/test "
        "sentences: KenLM word 3-gram (C++ lexicon search, training words added to the lexicon) and character "
        "6-gram (`lm build --unit char`, C++ lexicon-free search); each LM's alpha/beta tuned on dev (coarse grid + "
        "3 refinement rounds); 'best LM' is the lower dev WER, never chosen on test.",
        "",
        "| arm | greedy WER | greedy CER | word 3-gram WER / CER | char 6-gram WER / CER | best LM (dev) | "
        "best-LM WER | best-LM CER | rel. WER gain from LM | fine-tuning updates | wall min |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]

    def pair(r: dict, name: str) -> str:
        t = (r.get("by_lm") or {}).get(name, {}).get("test")
        return f"{t['wer']:.1%} / {t['cer']:.1%}" if t else "-"

    for arm, r in sorted(results.items()):
        g, lmr = r["greedy"], r.get("lm") or {}
        gain = (g["wer"] - lmr["wer"]) / g["wer"] if lmr and g["wer"] else float("nan")
        lines.append(f"| {ARM_NAMES[arm]} | {g['wer']:.1%} | {g['cer']:.1%} | {pair(r, 'word 3-gram')} | "
                     f"{pair(r, 'char 6-gram')} | {r.get('best_lm', 'word 3-gram')} | "
                     f"{lmr.get('wer', float('nan')):.1%} | {lmr.get('cer', float('nan')):.1%} | {gain:+.1%} | "
                     f"{updates(arm)} | {wall.get(arm, 0) / 60:.1f} |")
    lines += ["", *findings(results), *[f"- {n}" for n in notes]]
    missing = [a for a in "ab" if a not in results]
    if missing and STEPS:
        lines.append(f"- Arms {', '.join(missing)} not rerun here: in the 2026-11-24 run (10 wall-clock minutes per arm, "
                     "same data and recipe) from scratch and pretrain-then-fine-tune both stayed at 100% greedy test "
                     "CER (96-98% with the word LM), too far from a usable model for an LM comparison to mean anything.")
    cache = {}
    for arm in sorted(results):  # lrl.train.featcache is on by default where it is exact: say where it ran
        cfg_file = WORK / arm / "model" / "train_config.yaml"
        if cfg_file.is_file():
            import yaml

            note = (yaml.safe_load(cfg_file.read_text()).get("resolved") or {}).get("feature_cache", "")
            cache[arm] = "on" if re.match(r"\d+ clips,", str(note)) else "off"  # else: the reason it was off
    if cache:
        lines.append("- conv feature cache (lrl.train.featcache, default on where exact): "
                     + ", ".join(f"{a} {v}" for a, v in cache.items()))
    png = plot_curves(results)
    if png:
        lines += ["", f"![dev CER during training]({png.relative_to(ROOT / 'bench')})"]
    cmd = (f"python bench/lowres.py --steps {','.join(f'{k}={v}' for k, v in sorted(STEPS.items()))} --arms {''.join(sorted(results))}"
           if STEPS else f"python bench/lowres.py --minutes {args.minutes:g}")
    update_section("lowres", "\n".join(lines), cmd + (" --smoke" if args.smoke else ""))
    print("\n".join(lines))


def plot_curves(results: dict) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in results:
        path = WORK / arm / "model" / "metrics.csv"
        if not path.is_file():
            continue
        rows = [r for r in csv.DictReader(path.open()) if r.get("eval_cer")]
        if rows:
            x = [float(r.get("elapsed_s") or r["step"]) / (60 if r.get("elapsed_s") else 1) for r in rows]
            ax.plot(x, [float(r["eval_cer"]) for r in rows], marker="o", label=ARM_NAMES[arm])
    ax.set_xlabel("training minutes (fine-tuning)")
    ax.set_ylabel("dev CER (greedy)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    png = ROOT / "bench" / "lowres_curves.png"
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    main()
