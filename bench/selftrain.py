"""Self-training on yo-cv (issue 17): does `lrl pseudo-label` + `lrl train run --extra-data` lower test CER?

The labels of 25% of yo-cv train are kept (set L: those clips + dev + test); the other 75% are the untranscribed
audio U (written without text: the pipeline never sees them; the hidden labels are used for the report only).
Same start (`xl-tiny`, --init-head-from xl-tiny), same total updates per arm (N):
  a  labelled only: N updates on L
  b  one round:  N/2 on L -> pseudo-label U -> N/2 more on L + pseudo
  c  two rounds: N/2 on L -> pseudo-label U -> N/4 on L + pseudo -> pseudo-label U again -> N/4 on L + pseudo
  k  oracle: as b, but the clips b kept carry their hidden true text (what b would reach with perfect labels)
  o  oracle: as b, but all of U with its hidden true text (what U could give at this budget at best)
The oracle arms read the hidden labels: they bound what any pseudo-labelling could reach, they are not a method.
Pseudo-labels are decoded with a KenLM word 3-gram from lm-text/yo.txt (dev/test sentences removed; no yo-cv train
sentence is in it), its lexicon spelled from L's words only, tuned on dev for each model that labels U
(`--no-lm`: greedy pseudo-labels). Every arm's final model is scored on test greedy and with that LM, tuned on dev.
Also measured: each candidate confidence's Spearman correlation with the true CER on U (hidden labels).
Usage: python bench/selftrain.py [--updates 1000] [--arms abcko] [--keep-share 0.5] [--extra-weight 1] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench" / "_work" / "selftrain"
LRL = [sys.executable, "-m", "lrl"]
sys.path.insert(0, str(ROOT))
from labels import run  # noqa: E402  (bench/labels.py: run a command, its output to a log, wall seconds)


def split_data(data: Path, lab: Path, unl: Path, hidden: Path, share: float, seed: int = 0) -> None:
    """L = `share` of train (+ dev, test) with labels; U = the rest of train with empty text; hidden = U's labels."""
    import datasets
    import numpy as np

    dd = datasets.load_from_disk(str(data))
    n = len(dd["train"])
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(share * n))
    lab_idx, unl_idx = sorted(perm[:k].tolist()), sorted(perm[k:].tolist())
    datasets.DatasetDict({"train": dd["train"].select(lab_idx), "dev": dd["dev"], "test": dd["test"]}).save_to_disk(str(lab))
    u = dd["train"].select(unl_idx)
    hidden.write_text(json.dumps(dict(zip(u["id"], u["text"], strict=True)), ensure_ascii=False))
    u = u.map(lambda r: {"text": "", "sentence": ""})
    datasets.DatasetDict({"train": u}).save_to_disk(str(unl))
    for d in (lab, unl):
        shutil.copytree(data / "vocab", d / "vocab", dirs_exist_ok=True)


def train(data: Path, start: str, out: Path, updates: int, head: str, extra: Path | None, weight: float) -> float:
    cmd = [*LRL, "train", "run", "--data", data, "--checkpoint", start, "--out", out, "--max-steps", updates,
           "--set", "recipe=small-start", "--set", "data.eval_split=", "--set", "eval.save_steps=100000",
           "--set", "eval.save_total_limit=1", "--set", "data.test_split="]
    if head:
        cmd += ["--init-head-from", head]
    if extra is not None:
        cmd += ["--extra-data", extra, "--extra-weight", weight]
    shutil.rmtree(out, ignore_errors=True)
    return run(cmd, out.parent / f"{out.name}.train.log")


TUNE_GRID = ["--alphas", "0,0.5,1,1.5,2", "--betas", "-1,0,1,2,3", "--beam-widths", "32,64"]


def tune_lm(model: Path, lab: Path, lm: Path | None) -> None:
    """Install `lm` in `model`, alpha/beta tuned on L's dev split (never on test, never on U)."""
    if lm is not None:
        run([*LRL, "lm", "tune", model, lab, "--lm", lm, "--split", "dev", *TUNE_GRID], model.parent / f"{model.name}.tune.log")


def test_scores(model: Path, lab: Path, lm: Path | None) -> dict:
    tune_lm(model, lab, lm)
    run([*LRL, "evaluate", model, lab, "--split", "test", *([] if lm else ["--no-lm"])],
        model.parent / f"{model.name}.eval.log")
    s = json.loads((model / "eval-test" / "summary.json").read_text())
    return s


def with_true_text(src: Path, out: Path, hidden: dict) -> Path:
    """`src` (U, or a pseudo-label dataset of U) with each row's hidden true transcript as its text (oracle arms)."""
    import datasets

    dd = datasets.load_from_disk(str(src))
    rows = dd["train"].map(lambda r: {"text": hidden[r["id"]], "sentence": hidden[r["id"]]})
    shutil.rmtree(out, ignore_errors=True)
    datasets.DatasetDict({"train": rows}).save_to_disk(str(out))
    shutil.copytree(src / "vocab", out / "vocab")
    return out


ORACLE_ALL_WEIGHT = 10.0  # --extra-weight of arm o: U is about 3x L's hours, so all of it is used


def extra_used(model: Path) -> dict:
    """What `--extra-data` added to the train split (train_config.yaml `resolved.extra_data`)."""
    import yaml

    note = yaml.safe_load((model / "train_config.yaml").read_text())["resolved"]["extra_data"]
    return {"clips": note["extra_used"], "hours": note["extra_hours"], "labelled_hours": note["labelled_hours"]}


SHARES = (0.1, 0.2, 0.3, 0.5, 1.0)  # the true CER of the top share by each confidence: how good can a kept set be


PSEUDO_OPTS: list = []  # --confidence (auto: with --rank-on L, measured on its dev split)


def pseudo(model: Path, unl: Path, out: Path, hidden: dict, keep_share: float) -> dict:
    t = run([*LRL, "pseudo-label", model, unl, "--out", out, "--keep-share", keep_share, "--overwrite", *PSEUDO_OPTS],
            out.parent / f"{out.name}.log")
    return pseudo_stats(out, hidden, t)


def pseudo_stats(out: Path, hidden: dict, seconds: float) -> dict:
    """What `lrl pseudo-label` wrote to `out`, scored against the hidden labels (for the report only)."""
    from lrl.evaluate.confidence import CONFIDENCES, char_error_rate, spearman

    rep = json.loads((out / "pseudo_report.json").read_text())
    lines = (out / "pseudo_utterances.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    rows = [dict(zip(head, ln.split("\t"), strict=False)) for ln in lines[1:]]
    rows = [r for r in rows if r.get("token_posterior")]
    for r in rows:
        r["cer"], r["chars"] = char_error_rate(hidden[r["id"]], r.get("text", "")), len(hidden[r["id"]])

    def cer(rs: list[dict]) -> float:
        return sum(r["cer"] * r["chars"] for r in rs) / max(1, sum(r["chars"] for r in rs))

    def top(c: str, share: float) -> list[dict]:
        return sorted(rows, key=lambda r: -float(r[c]))[:max(1, int(share * len(rows)))]

    ranking = rep.get("confidence_ranking") or {}
    return {"seconds": round(seconds, 1), "in": rep["utterances_in"], "kept": rep["kept"], "kept_hours": rep["kept_hours"],
            "confidence": rep["config"]["confidence"], "dev_spearman": ranking.get("spearman"),
            "kept_true_cer": cer([r for r in rows if r["kept"] == "true"]), "all_true_cer": cer(rows),
            "spearman": {c: spearman([float(r[c]) for r in rows], [r["cer"] for r in rows]) for c in CONFIDENCES},
            "top_true_cer": {c: {str(sh): cer(top(c, sh)) for sh in SHARES} for c in CONFIDENCES}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=1000, help="total updates per arm (N)")
    ap.add_argument("--arms", default="abc")
    ap.add_argument("--keep-share", type=float, default=0.5)
    ap.add_argument("--extra-weight", type=float, default=1.0)
    ap.add_argument("--no-lm", action="store_true", help="greedy pseudo-labels and test scores only")
    ap.add_argument("--lm-unit", choices=("word", "char"), default="word",
                    help="the LM pseudo-labels are decoded (and test scored) with: word 3-gram or char 6-gram")
    ap.add_argument("--tune-metric", choices=("wer", "cer"), default="wer",
                    help="what `lm tune` minimises on dev for every model (the LM that decodes pseudo-labels and test)")
    ap.add_argument("--confidence", default="token_posterior",
                    help="pseudo-label --confidence (auto: picked by measurement on L's dev split, --rank-on)")
    ap.add_argument("--report", action="store_true", help="train nothing: rescore the pseudo-label dirs, rewrite the table")
    ap.add_argument("--tag", default="", help="a separate work dir and RESULTS.md section (selftrain-TAG)")
    ap.add_argument("--smoke", action="store_true", help="8 updates per arm: checks the pipeline, measures nothing")
    args = ap.parse_args()
    if args.smoke:
        args.updates = 8
    work = WORK / ("smoke" if args.smoke else f"run-{args.tag}" if args.tag else "run")
    work.mkdir(parents=True, exist_ok=True)
    data = WORK / "yo-data"
    if not (data / "summary.json").is_file():
        run([*LRL, "data", "prepare", SHARED / "yo-cv", "--out", data, "--language", "yo", "--no-card"], WORK / "prepare.log")
    lab, unl, hidden_f = WORK / "labelled", WORK / "unlabelled", WORK / "hidden_labels.json"
    if not hidden_f.is_file():
        split_data(data, lab, unl, hidden_f, 0.25)
    hidden = json.loads(hidden_f.read_text())
    lm = None if args.no_lm else WORK / ("yo-lm" if args.lm_unit == "word" else "yo-char-lm")
    if args.smoke:
        TUNE_GRID[:] = ["--alphas", "0.5,1.5", "--betas", "0,2", "--no-refine", "--grid-beam", "8", "--beam-widths", "8"]
    if lm is not None and not (lm / "lm_build.json").is_file():  # lexicon: L's train words (lab/vocab's train split)
        order = ["--order", "3"] if args.lm_unit == "word" else ["--order", "6", "--unit", "char"]
        run([*LRL, "lm", "build", SHARED / "lm-text" / "yo.txt", "--vocab", lab / "vocab", *order,
             "--exclude", SHARED / "yo-cv" / "dev.tsv", "--exclude", SHARED / "yo-cv" / "test.tsv", "--out", lm],
            WORK / "lm.log")
    from lrl.models.checkpoints import resolve_checkpoint

    xl = str(resolve_checkpoint("xl-tiny"))
    n = args.updates
    state_f = work / "state.json"
    state = json.loads(state_f.read_text()) if state_f.is_file() else {}
    settings = {"updates": n, "keep_share": args.keep_share, "extra_weight": args.extra_weight, "lm": lm is not None,
                "lm_unit": args.lm_unit}
    if args.tune_metric != "wer":
        settings["tune_metric"] = args.tune_metric
        TUNE_GRID.extend(["--metric", args.tune_metric])
    if args.confidence != "token_posterior":
        settings["confidence"] = args.confidence
        PSEUDO_OPTS.extend(["--confidence", args.confidence] + (["--rank-on", lab] if args.confidence == "auto" else []))
    if state.get("settings") != settings:  # arms run with other settings are not comparable: start over
        state = {"settings": settings}

    def save():
        state_f.write_text(json.dumps(state, indent=1))
        write_table(state, args)

    if args.report:  # the same settings' state, its pseudo-label dirs rescored (new columns need no retraining)
        state = json.loads(state_f.read_text())
        for key, dirs in (("r0", ["p1"]), ("b", ["p1"]), ("c", ["p1", "p2"])):
            if key == "r0" and key in state:
                state["r0"]["pseudo"] = pseudo_stats(work / "p1", hidden, state["r0"]["pseudo"]["seconds"])
            elif key in state:
                state[key]["rounds"] = [pseudo_stats(work / d, hidden, old["seconds"])
                                        for d, old in zip(dirs, state[key]["rounds"], strict=True)]
        state_f.write_text(json.dumps(state, indent=1))
        write_table(state, args)
        return
    if "a" in args.arms:
        w = train(lab, xl, work / "a", n, xl, None, 0)
        state["a"] = {"train_s": round(w, 1), "test": test_scores(work / "a", lab, lm)}
        save()
    if set(args.arms) & set("bcko"):
        w0 = train(lab, xl, work / "r0", n // 2, xl, None, 0)
        r0_test = test_scores(work / "r0", lab, lm)  # installs the dev-tuned LM the pseudo-labels are decoded with
        p1 = pseudo(work / "r0", unl, work / "p1", hidden, args.keep_share)
        state["r0"] = {"train_s": round(w0, 1), "pseudo": p1, "test": r0_test}
        save()
        if "b" in args.arms:
            w = train(lab, str(work / "r0"), work / "b", n - n // 2, "", work / "p1", args.extra_weight)
            state["b"] = {"train_s": round(w0 + w, 1), "rounds": [p1], "test": test_scores(work / "b", lab, lm)}
            save()
        if "c" in args.arms:
            w1 = train(lab, str(work / "r0"), work / "c1", n // 4, "", work / "p1", args.extra_weight)
            tune_lm(work / "c1", lab, lm)
            p2 = pseudo(work / "c1", unl, work / "p2", hidden, args.keep_share)
            w2 = train(lab, str(work / "c1"), work / "c", n - n // 2 - n // 4, "", work / "p2", args.extra_weight)
            state["c"] = {"train_s": round(w0 + w1 + w2, 1), "rounds": [p1, p2], "test": test_scores(work / "c", lab, lm)}
            save()
        for arm, src, weight in (("k", work / "p1", args.extra_weight), ("o", unl, ORACLE_ALL_WEIGHT)):
            if arm in args.arms:
                extra = with_true_text(src, work / f"{arm}-true", hidden)
                w = train(lab, str(work / "r0"), work / arm, n - n // 2, "", extra, weight)
                state[arm] = {"train_s": round(w0 + w, 1), "test": test_scores(work / arm, lab, lm),
                              "extra": extra_used(work / arm)}
                save()


def _cer_pair(p: dict) -> str:
    if p.get("oracle"):
        return "0 (true text)"
    return f"{p['kept_true_cer']:.1%} (all {p['all_true_cer']:.1%})"


def write_table(state: dict, args) -> None:
    from _results import update_section

    s = state["settings"]
    names = {"a": "a: labelled only", "b": "b: one round", "c": "c: two rounds",
             "k": "k: oracle, b's kept clips with true text", "o": "o: oracle, all of U with true text"}
    unit = "char 6-gram" if s.get("lm_unit") == "char" else "word 3-gram"
    lm_note = (f"pseudo-labels decoded with the {unit} tuned on dev for {s.get('tune_metric', 'wer').upper()} (C++ "
               "backend); test scored greedy and with that LM" if s.get("lm") else
               "pseudo-labels greedy; test scored greedy only")
    lines = [f"yo-cv, labels of 25% of train kept (L), the other 75% untranscribed (U, labels hidden, used only "
             f"for the true-CER columns). Start xl-tiny (--init-head-from xl-tiny), recipe small-start, **{s['updates']} "
             "updates per arm in total** (a small budget: 2 shared CPU cores), pseudo-labels kept: top "
             f"{s['keep_share']:.0%} by confidence ({s.get('confidence', 'token_posterior')}"
             + (", picked on L's dev split" if s.get("confidence") == "auto" else "")
             + f"), --extra-weight {s['extra_weight']:g}; {lm_note}.", "",
             "| arm | test CER greedy | test WER greedy | test CER LM | test WER LM | pseudo kept per round (of U) "
             "| their true CER | train wall s | pseudo-label wall s |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|"]
    nan = {"cer": float("nan"), "wer": float("nan")}
    for arm in "abcko":
        if arm not in state:
            if arm in "abc":
                lines.append(f"| {names[arm]} | not run | | | | | | | |")
            continue
        r = state[arm]
        rounds = r.get("rounds", [])
        if "extra" in r:  # an oracle arm: its extra clips, their text true
            e = r["extra"]
            rounds = [{"kept": e["clips"], "in": state["r0"]["pseudo"]["in"], "seconds": 0,
                       "kept_true_cer": 0.0, "oracle": True}]
        g, lmr = r["test"]["greedy"], r["test"].get("lm") or nan
        lines.append(f"| {names[arm]} | {g['cer']:.1%} | {g['wer']:.1%} | {lmr['cer']:.1%} | {lmr['wer']:.1%} | "
                     f"{' / '.join(str(p['kept']) + ' of ' + str(p['in']) for p in rounds) or '-'} | "
                     f"{' / '.join(_cer_pair(p) for p in rounds) or '-'} | "
                     f"{r['train_s']:.0f} | {sum(p['seconds'] for p in rounds):.0f} |")
    if "r0" in state:
        p = state["r0"]["pseudo"]
        t0 = state["r0"]["test"]
        shares = list(next(iter(p.get("top_true_cer", {}).values()), {}))
        lines += ["", f"Round-0 model (N/2 updates on L): test CER {t0['greedy']['cer']:.1%} greedy"
                  + (f", {t0['lm']['cer']:.1%} with the LM" if t0.get("lm") else "")
                  + ". Which confidence ranks its transcripts of U by true CER (Spearman; more negative = better), "
                  "and the true CER of the most confident share of U by each (what any keep-share could reach):",
                  "", "| confidence | Spearman vs true CER | " + " | ".join(f"top {float(x):.0%}" for x in shares) + " |",
                  "|---|---:|" + "---:|" * len(shares)]
        lines += [f"| {c} | {v:+.3f} | " + " | ".join(f"{p['top_true_cer'][c][x]:.1%}" for x in shares) + " |"
                  for c, v in p["spearman"].items()]
        if p.get("dev_spearman"):  # --confidence auto: what the measurement on L's dev split said and chose
            lines += ["", f"`--confidence auto` measured on L's dev split ({', '.join(f'{c} {v:+.2f}' for c, v in p['dev_spearman'].items() if v is not None)}) "
                      f"and kept by **{p['confidence']}**; on U (the table above) the best was "
                      f"{min(p['spearman'], key=lambda c: p['spearman'][c])}."]
    if "a" in state and ("b" in state or "c" in state):
        ca = state["a"]["test"]["greedy"]["cer"]
        rel = {k: state[k]["test"]["greedy"]["cer"] / ca - 1 for k in "bc" if k in state}
        oracle = {k: state[k]["test"]["greedy"]["cer"] / ca - 1 for k in "ko" if k in state}
        best = min(rel, key=rel.get)
        verdict = "meets" if rel[best] <= -0.10 else "misses"
        lines += ["", "Finding: test CER (greedy) relative to labelled only: "
                  + ", ".join(f"{names[k]} {v:+.1%}" for k, v in rel.items())
                  + f"; the best arm {verdict} the target (-10% or better)."]
        if all(state[k]["test"].get("lm") for k in ("a", *rel)):
            cl = state["a"]["test"]["lm"]["cer"]
            lines[-1] += " With the LM: " + ", ".join(
                f"{names[k]} {state[k]['test']['lm']['cer'] / cl - 1:+.1%}" for k in rel) + "."
        if oracle:
            lines.append("Oracles (U's hidden labels; bounds, not a method), test CER greedy relative to labelled only: "
                         + ", ".join(f"{names[k]} {v:+.1%}" for k, v in oracle.items()) + ".")
    if "a" in state and "r0" in state and state["r0"]["pseudo"].get("top_true_cer"):
        best_c, best_v = min(((c, v["0.1"]) for c, v in state["r0"]["pseudo"]["top_true_cer"].items()), key=lambda cv: cv[1])
        ca = state["a"]["test"]["greedy"]["cer"]
        kept = state["r0"]["pseudo"]["kept_true_cer"]
        why = (f"Reading: the kept pseudo-labels carry a true CER of {kept:.1%} (the most confident 10% of U, by "
               f"{best_c}, the best ranking: {best_v:.1%}), against {ca:.1%} test CER for the labelled-only model")
        if "k" in state and "b" in state:
            why += (f"; the same clips with their true text (k) reach {state['k']['test']['greedy']['cer']:.1%} and b "
                    f"{state['b']['test']['greedy']['cer']:.1%}: the gap between them is what the pseudo-labels' "
                    "errors cost")
        if "o" in state:
            why += (f"; all of U with its true text (o), the most this audio could give at this budget, reaches "
                    f"{state['o']['test']['greedy']['cer']:.1%}")
        lines.append(why + ".")
    if args.smoke:  # a smoke run checks the pipeline: it measures nothing, so RESULTS.md is left alone
        print("\n".join(lines))
        return
    png = plot(state, args.tag)
    if png:
        lines += ["", f"![self-training]({png.name})"]
    update_section("selftrain" + (f"-{args.tag}" if args.tag else ""), "\n".join(lines),
                   command(state, args))


def command(state: dict, args) -> str:
    """The command that trained what the state holds (a --report rewrite names the run, not itself)."""
    s = state["settings"]
    arms = "".join(a for a in "abcko" if a in state)
    return (f"python bench/selftrain.py --updates {s['updates']} --keep-share {s['keep_share']:g} "
            f"--extra-weight {s['extra_weight']:g} --arms {arms}"
            + ("" if s.get("lm") else " --no-lm") + (" --lm-unit char" if s.get("lm_unit") == "char" else "")
            + (f" --tune-metric {s['tune_metric']}" if "tune_metric" in s else "")
            + (f" --confidence {s['confidence']}" if "confidence" in s else "")
            + (f" --tag {args.tag}" if args.tag else "")
            + (" (pseudo-label columns rescored with --report)" if args.report else ""))


def plot(state: dict, tag: str = "") -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in "abcko" if a in state]
    if not arms:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(arms))
    ax.bar([i - 0.2 for i in x], [state[a]["test"]["greedy"]["cer"] for a in arms], 0.4, label="test CER greedy")
    if all(state[a]["test"].get("lm") for a in arms):
        ax.bar([i + 0.2 for i in x], [state[a]["test"]["lm"]["cer"] for a in arms], 0.4, label="test CER with LM")
    for i, a in enumerate(arms):
        for k, p in enumerate(state[a].get("rounds", [])):  # oracle arms (k, o) have none: their text is true
            ax.plot(i, p["kept_true_cer"], marker="v^"[k % 2], color="k", linestyle="none",
                    label="kept pseudo-labels' true CER" if (i, k) == (1, 0) or (len(arms) == 1 and k == 0) else None)
    ax.set_xticks(list(x), [{"a": "a: labelled", "b": "b: 1 round", "c": "c: 2 rounds", "k": "k: oracle\nkept",
                             "o": "o: oracle\nall U"}[a] for a in arms], fontsize=8)
    ax.set_ylabel("CER")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = ROOT / "bench" / f"selftrain{'-' + tag if tag else ''}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    main()
