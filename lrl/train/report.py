"""What a finished fine-tuning run leaves for people: the metrics CSV's name and reader, the training curves
(train loss, dev WER/CER against updates) as a PNG, and the model card README.md with the eval table and
how to load the model.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lrl.core.io import atomic_write_text
from lrl.train.config import CONFIG_FILE, TrainConfig

METRICS_FILE = "metrics.csv"  # one row per log/eval event of the run (lrl.train.callbacks.RunLogCallback)
CURVES_FILE = "training_curves.png"


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's metrics.csv ([] when there is none yet)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def plot_curves(metrics_csv: Path, png: Path) -> Path | None:
    """training_curves.png: train loss (left) and dev WER/CER (right) against updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)
    if not rows:
        return None

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    x, y = series("loss")
    a.plot(x, y, label="train loss")
    x, y = series("eval_loss")
    if x:
        a.plot(x, y, "o-", label="dev loss")
    a.set_xlabel("update")
    a.set_ylabel("CTC loss")
    a.set_yscale("log")
    a.legend()
    for key, label in (("eval_wer", "dev WER"), ("eval_cer", "dev CER")):
        x, y = series(key)
        if x:
            b.plot(x, y, "o-", label=label)
    b.set_xlabel("update")
    b.set_ylim(0, max(1.05, b.get_ylim()[1]))
    b.set_ylabel("error rate")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    else:  # a run without dev evaluation: say so rather than leave an empty panel
        b.text(0.5, 0.5, "no dev evaluation in this run", ha="center", va="center", transform=b.transAxes)
    fig.suptitle(metrics_csv.parent.name)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def write_model_card(out: Path, cfg: TrainConfig, metrics: dict, state, freeze_history, nonfinite: int) -> Path:
    """README.md: what was trained on what, the eval table, how to use it."""
    lines = [
        f"# {out.name}",
        "",
        f"Wav2Vec2 CTC model fine-tuned with `lrl train` from `{cfg.model.checkpoint}` on `{cfg.data.path}` "
        f"({state.global_step} updates, best checkpoint by dev WER: `{state.best_model_checkpoint or 'n/a'}`).",
        "",
        "| split | WER | CER | loss |",
        "|---|---|---|---|",
    ]
    for prefix, split in (("eval", cfg.data.eval_split), ("test", cfg.data.test_split)):
        if f"{prefix}_wer" in metrics:
            lines.append(f"| {split} | {metrics[f'{prefix}_wer']:.4f} | {metrics[f'{prefix}_cer']:.4f} | "
                         f"{metrics.get(f'{prefix}_loss', float('nan')):.4f} |")
    lines += [
        "",
        "Greedy decoding (no language model), WER/CER with jiwer on text normalised by `normalizer.json`.",
        "",
        "## Training",
        "",
        f"- LR {cfg.optim.lr:g} ({cfg.optim.schedule}, warmup {cfg.optim.warmup_steps}), layer decay "
        f"{cfg.optim.layer_decay:g}, head x{cfg.optim.head_lr_mult:g}; dynamic batches of <= {cfg.batching.max_seconds:g} s of audio",
        "- freeze schedule (step: trainable / total parameters): "
        + ", ".join(f"{s}: {t:,}/{n:,}" for s, t, n in freeze_history),
        f"- non-finite losses skipped: {nonfinite}",
        f"- full config: `{CONFIG_FILE}`; curves: `{CURVES_FILE}`; log: `{METRICS_FILE}`, TensorBoard in `runs/`",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        f'asr = pipeline("automatic-speech-recognition", model="{out}")',
        'print(asr(audio_16khz_float32_numpy)["text"])',
        "```",
        "",
    ]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path
