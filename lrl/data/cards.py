"""Statistics and data cards of a prepared dataset: clips, hours and speakers per split, duration and
chars-per-second histograms (PNG, matplotlib Agg), the character inventory and the skip counts, written
as a Hugging Face dataset card whose YAML header comes from huggingface_hub's DatasetCardData.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from lrl.core.io import LrlError

logger = logging.getLogger(__name__)

HIST_BINS = 30  # bars per histogram
CARD_DIR = "data_cards"  # the card's folder inside the prepared dataset directory, unless one is given
SOURCE_NOTE = "SOURCE.md"  # a corpus' own description, quoted in the card when found beside it
# Hugging Face size categories (number of clips), smallest first.
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>1M")


def dataset_stats(directory: str | Path) -> dict:
    """Per split: clips, hours, speakers, durations and chars/s (lists), character counts; plus summary.json."""
    from lrl.data.prepare import SUMMARY_FILE, load_prepared

    directory = Path(directory)
    dd, vocab = load_prepared(directory)
    summary_file = directory / SUMMARY_FILE
    if not summary_file.is_file():
        raise LrlError(f"{directory}: no {SUMMARY_FILE}; re-run `lrl data prepare`")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    splits = {}
    for name, ds in dd.items():
        durations = [float(d) for d in ds["duration"]]
        texts = list(ds["text"])
        speakers = Counter(ds["speaker"])
        locales = Counter(ds["locale"]) if "locale" in ds.column_names else Counter()
        splits[name] = {
            "clips": len(ds),
            "hours": sum(durations) / 3600,
            "speakers": len(speakers),
            "durations": durations,
            "chars_per_second": [len(t) / d for t, d in zip(texts, durations, strict=True) if d > 0],
            "chars": Counter("".join(texts).replace(" ", "")),
            "locales": locales,
        }
    return {"splits": splits, "summary": summary, "vocab": vocab}


def _plot(stats: dict, key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    values = [v for s in stats["splits"].values() for v in s[key]]
    bins = HIST_BINS if values else 1
    for name, s in stats["splits"].items():
        if s[key]:
            ax.hist(s[key], bins=bins, range=(min(values), max(values)), alpha=0.6, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("clips")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _median(values: list[float]) -> float:
    v = sorted(values)
    return (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2 if v else 0.0


def _command(source: str, out: str, config: dict) -> str:
    """The `lrl data prepare` command line that gives this config (options that differ from the defaults)."""
    from lrl.data.prepare import PrepareConfig

    default = PrepareConfig().to_dict()
    parts = ["lrl data prepare", source, "--out", out]
    for key, value in config.items():
        if key in ("num_proc", "overwrite") or key not in default or json.dumps(value) == json.dumps(default[key]):
            continue
        opt = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(opt if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            parts += [opt, ",".join(value)]
        else:
            parts += [opt, str(value)]
    return " ".join(parts)


def write_card(directory: str | Path, card_dir: str | Path | None = None, name: str | None = None,
               language: str | None = None, licence: str | None = None) -> Path:
    """Write `card_dir/<name>.md` (a Hugging Face dataset card) and its two PNGs; returns the card's path.
    `card_dir` defaults to DIRECTORY/data_cards, so the card travels with the dataset."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from lrl.core.text import char_display, char_name

    stats = dataset_stats(directory)
    summary, splits = stats["summary"], stats["splits"]
    config = summary.get("config", {})
    source = Path(summary.get("source", str(directory)))
    name = name or (source.parent.name if source.is_file() else source.name) or Path(directory).name
    locales = sum((s["locales"] for s in splits.values()), Counter())
    language = language or config.get("language") or (locales.most_common(1)[0][0] if locales else None)
    licence = licence or config.get("licence")
    card_dir = Path(card_dir) if card_dir is not None else Path(directory) / CARD_DIR
    card_dir.mkdir(parents=True, exist_ok=True)
    _plot(stats, "durations", "clip duration (s)", card_dir / f"{name}_durations.png")
    _plot(stats, "chars_per_second", "transcript characters per second", card_dir / f"{name}_chars_per_second.png")

    data = DatasetCardData(
        language=[language] if language else None, license=licence or "unknown", pretty_name=name,
        size_categories=[size_category(sum(s["clips"] for s in splits.values()))],
        task_categories=["automatic-speech-recognition"], tags=["lrl", "speech"],
    )
    sk = summary.get("splits", {})
    body = [
        f"# {name}", "",
        f"Prepared by `lrl data prepare` from `{summary.get('source')}` ({summary.get('source_kind')}): "
        f"16 kHz mono float32 audio, normalised transcripts (vocabulary: {summary['vocab']['source']}, "
        f"{summary['vocab']['size']} tokens).", "",
        "## Splits", "",
        "| split | clips | hours | speakers | median duration (s) | median chars/s | rows read | skipped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for split, s in splits.items():
        info = sk.get(split, {})
        body.append(f"| {split} | {s['clips']} | {s['hours']:.3f} | {s['speakers']} | {_median(s['durations']):.2f} | "
                    f"{_median(s['chars_per_second']):.1f} | {info.get('read', '?')} | {sum(info.get('skipped', {}).values())} |")
    shares = [f"{split}: " + ", ".join(f"{spk or '(none)'} {share:.0%}" for spk, share in info["top_speakers"][:3])
              for split, info in sk.items() if info.get("top_speakers")]
    if shares:
        body += ["", "Largest speakers' share of each split's audio (speaker ids cut to 16 characters): "
                 + "; ".join(shares) + "."]
    body += ["", f"![durations]({name}_durations.png)", "", f"![chars per second]({name}_chars_per_second.png)", ""]
    reasons = sorted({r for info in sk.values() for r in info.get("skipped", {})})
    body += ["## Skipped rows", ""]
    if reasons:
        body += ["| split | " + " | ".join(reasons) + " |", "|---|" + "---:|" * len(reasons)]
        for split, info in sk.items():
            body.append(f"| {split} | " + " | ".join(str(info.get("skipped", {}).get(r, 0)) for r in reasons) + " |")
    else:
        body.append("None: every row read was kept.")
    body += ["", "Each skipped row is listed with its detail in `skipped.tsv` of the prepared dataset.", ""]
    unfiltered = {split: info["kept_unfiltered"] for split, info in sk.items() if info.get("kept_unfiltered")}
    if unfiltered:
        body += ["## Kept for scoring", "",
                 "Rows of evaluation splits that training's filters would drop, kept because a recogniser in use "
                 "meets them (characters outside the vocabulary stay in the reference and count as errors; long "
                 "clips are scored in chunks; `--filter-eval` drops them): "
                 + "; ".join(f"{split}: " + ", ".join(f"{n} {r}" for r, n in c.items()) for split, c in unfiltered.items())
                 + ".", ""]
    if summary.get("warnings"):
        body += ["## Warnings", "", *[f"- {w}" for w in summary["warnings"]], ""]
    chars = sum((s["chars"] for s in splits.values()), Counter())
    known = set(stats["vocab"].chars)
    body += ["## Character inventory", "", "| char | code point | name | count | in vocab |", "|---|---|---|---:|---|"]
    for ch, n in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
        body.append(f"| {char_display(ch)} | U+{ord(ch):04X} | {char_name(ch)} | {n} | {'yes' if ch in known else 'no'} |")
    body += ["", "## Source and licence", "", f"- source: `{summary.get('source')}`",
             f"- licence: {licence or 'unknown (pass --licence)'}"]
    note = (source if source.is_dir() else source.parent) / SOURCE_NOTE
    if note.is_file():
        body += ["", *["> " + line for line in note.read_text(encoding="utf-8").strip().splitlines()]]
    cfg = {k: v for k, v in config.items() if k not in ("num_proc", "overwrite")}
    body += ["", "## Preparation", "", "```bash", _command(summary.get("source", "SRC"), Path(directory).name, config),
             "```", "", "```json", json.dumps(cfg, indent=1, ensure_ascii=False), "```", ""]

    path = card_dir / f"{name}.md"
    DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).save(path)
    logger.info("data card written to %s", path)
    return path
