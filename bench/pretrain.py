"""Continued-pretraining bench on real Yoruba audio (yo-cv), tiny-small model from a fresh init.

1. Gumbel schedule: the recipe's per-update decay (0.999995, baseline) against a decay that reaches the
   floor within the run (--gumbel-min-at-step = steps, candidate), same seeds, runs interleaved ABAB.
   Scored on held-out dev crops (fixed masks/negatives, eval mode): contrastive loss and perplexity.
2. Speed: full model (baseline) against a frozen conv front end (candidate), interleaved ABAB, median
   seconds per update from pretrain_log.csv.

    .venv/bin/python bench/pretrain.py [--steps 80] [--train-clips 150]
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from _results import update_section  # noqa: E402

from lrl.core.io import read_table  # noqa: E402
from lrl.models.checkpoints import init_tiny  # noqa: E402
from lrl.train.pretrain import PretrainConfig, collect_crops, make_batch, probe_metrics, run_pretraining  # noqa: E402

YO = ROOT.parent / "shared" / "data" / "yo-cv"


def clip_paths(split: str, n: int) -> list[Path]:
    _, rows = read_table(YO / f"{split}.tsv")
    return [YO / "clips" / r["path"] for r in rows[:n]]


def dev_score(model_dir: Path, dev_crops, cfg: PretrainConfig) -> dict:
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining

    net = Wav2Vec2ForPreTraining.from_pretrained(str(model_dir))
    fe = Wav2Vec2FeatureExtractor.from_pretrained(str(model_dir))
    net.config.apply_spec_augment = True
    scores = []
    for b in range(0, len(dev_crops), 8):
        batch = make_batch(net, fe, dev_crops[b:b + 8], cfg, seed=(1234, b))
        scores.append(probe_metrics(net, batch))
    return {k: statistics.mean(s[k] for s in scores) for k in scores[0]}


def log_rows(out: Path) -> list[dict]:
    with open(out / "pretrain_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--train-clips", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    base = PretrainConfig(
        max_steps=args.steps, batch_size=4, learning_rate=5e-4, warmup_steps=max(1, args.steps // 10),
        max_seconds=4.0, min_seconds=2.0, save_every=0, probe_crops=0, log_every=args.steps,
    )
    train = clip_paths("train", args.train_clips)
    dev_crops, _ = collect_crops(clip_paths("dev", 8), base)
    dev_crops = dev_crops[:16]
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))

    # one fresh tiny-small model per seed, scored on dev before any update; both arms start from it
    inits = {seed: init_tiny(tmp / f"init-{seed}", "small", seed=seed) for seed in range(args.seeds)}
    before = {seed: dev_score(d, dev_crops, base) for seed, d in inits.items()}

    arms = {"recipe decay 0.999995 (baseline)": base, f"min at step {args.steps} (candidate)": replace(base, gumbel_min_at_step=args.steps)}
    results: dict[str, list[dict]] = {k: [] for k in arms}
    for seed in range(args.seeds):
        for name, cfg in arms.items():  # ABAB
            out = tmp / f"{len(results[name])}-{name.split()[0]}-{seed}"
            r = run_pretraining(train, out, replace(cfg, seed=seed), model=inits[seed])
            dev = dev_score(out, dev_crops, base)
            rows = log_rows(out)
            results[name].append({
                "seed": seed, "crops": r.inputs.crops, "minutes": r.inputs.seconds / 60,
                "dev_before": before[seed]["contrastive"], "ppl_before": before[seed]["perplexity"], "dev_contrastive": dev["contrastive"], "dev_perplexity": dev["perplexity"],
                "train_first": r.first_contrastive, "train_last": r.last_contrastive,
                "temp_end": r.final_temperature,
                "s_per_step": statistics.median(float(x["seconds"]) for x in rows[2:]),
            })
            print(name, results[name][-1], flush=True)

    lines = [
        f"yo-cv: {len(train)} train clips -> {results[next(iter(results))][0]['crops']} crops of 2-4 s "
        f"({results[next(iter(results))][0]['minutes']:.1f} min); dev: {len(dev_crops)} crops from 8 dev clips, "
        f"fixed masks/negatives, eval mode. tiny-small fresh init per seed, {args.steps} updates x 4 crops, lr 5e-4. "
        "Perplexity is of 2 x 160 codes; a collapsed codebook would also lower the dev loss, so read both.",
        "",
        "| schedule | seed | final temperature | train contrastive first10 -> last10 | dev contrastive fresh -> trained | dev perplexity fresh -> trained | s/update |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in results.items():
        for x in rs:
            lines.append(
                f"| {name} | {x['seed']} | {x['temp_end']:.3f} | {x['train_first']:.3f} -> {x['train_last']:.3f} | "
                f"{x['dev_before']:.3f} -> {x['dev_contrastive']:.3f} | {x['ppl_before']:.1f} -> {x['dev_perplexity']:.1f} | "
                f"{x['s_per_step']:.2f} |"
            )
    (a, ra), (b, rb) = results.items()
    ratio = statistics.median(y["dev_contrastive"] / x["dev_contrastive"] for x, y in zip(ra, rb, strict=True))
    lines += ["", f"Median dev-contrastive ratio candidate/baseline (paired by seed): **{ratio:.3f}**; trained/fresh: "
              f"baseline {statistics.median(x['dev_contrastive'] / x['dev_before'] for x in ra):.3f}, "
              f"candidate {statistics.median(x['dev_contrastive'] / x['dev_before'] for x in rb):.3f}."]

    # speed: frozen conv front end vs full, ABAB
    speed = {"full (baseline)": [], "frozen conv (candidate)": []}
    short = replace(base, max_steps=12, gumbel_min_at_step=12)
    for rep in range(2):
        for name, frozen in (("full (baseline)", False), ("frozen conv (candidate)", True)):
            out = tmp / f"speed-{rep}-{frozen}"
            run_pretraining(train[:30], out, replace(short, freeze_feature_encoder=frozen, seed=rep), model=inits[0])
            speed[name].append(statistics.median(float(x["seconds"]) for x in log_rows(out)[2:]))
    ratios = [f / u for u, f in zip(speed["full (baseline)"], speed["frozen conv (candidate)"], strict=True)]
    lines += [
        "", "| conv front end | median s/update per repeat |", "|---|---|",
        *(f"| {k} | {', '.join(f'{v:.2f}' for v in vs)} |" for k, vs in speed.items()),
        "", f"Frozen/full time ratio (median of pairs): **{statistics.median(ratios):.2f}**. "
        f"Bench wall time {(time.time() - t0) / 60:.1f} min on the shared 2-core machine.",
    ]
    md = "\n".join(lines)
    print(md)
    update_section("pretrain", md)


if __name__ == "__main__":
    main()
