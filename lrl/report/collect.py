"""Reading one run's files into plain dataclasses: `collect` finds the evaluation folder of a RUN (an
eval-<split> folder, a model folder or a demo output), reads utterances.tsv and summary.json, and the
artefacts around them: training curves, the alpha/beta heatmap, the model, data and LM it came from,
the speakers of the prepared split and, when `lrl data check-labels` ran, its suspects (SUSPECTS_FILE).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lrl.core.io import LrlError, read_table
from lrl.decode.decoder import DECODER_FILE
from lrl.evaluate.labels import SUSPECTS_DIR, SUSPECTS_FILE  # check-labels writes them; one definition
from lrl.evaluate.scoring import SUMMARY_FILE, UTTERANCES_FILE
from lrl.train.config import CONFIG_FILE as TRAIN_CONFIG_FILE
from lrl.train.report import CURVES_FILE

logger = logging.getLogger(__name__)

# The suspects of `lrl data check-labels` that a report marks (SUSPECTS_DIR/SUSPECTS_FILE of
# lrl.evaluate.labels): a TSV with a header holding at least `id` (the utterance id of the prepared split)
# and `score` (a float, higher = more likely a bad transcript); an optional `kind` column (e.g. "wrong
# text", "truncated audio") is shown beside the score. Looked for at MODEL/check-labels-<split>/ unless a
# path is given.
HEATMAP_FILE = "heatmap.png"  # written by lrl.evaluate.tuning.tune into MODEL/tune-<split>/


@dataclass
class Utterance:
    id: str
    duration: float  # seconds
    ref: str
    greedy: str
    lm: str | None  # None when the run was evaluated without an LM
    speaker: str = ""
    suspect: float | None = None  # check-labels score (higher = more suspect); None when not flagged
    suspect_kind: str = ""


@dataclass
class Run:
    name: str  # short label shown in the page (the model folder's name)
    eval_dir: Path
    split: str
    summary: dict  # summary.json as written by lrl.evaluate.scoring.evaluate
    utterances: list[Utterance]
    model_dir: Path | None = None
    data_dir: Path | None = None  # the prepared dataset (None when it is not found any more)
    curves_png: Path | None = None
    heatmap_png: Path | None = None
    provenance: dict[str, str] = field(default_factory=dict)  # label -> value (model, start, data, LM...)

    @property
    def has_lm(self) -> bool:
        return bool(self.utterances) and self.utterances[0].lm is not None


def find_eval_dir(path: str | Path, split: str = "test") -> Path:
    """The folder holding utterances.tsv + summary.json for RUN: RUN itself, RUN/eval-<split>, or
    RUN/model/eval-<split> (a demo output)."""
    path = Path(path)
    for cand in (path, path / f"eval-{split}", path / "model" / f"eval-{split}"):
        if (cand / UTTERANCES_FILE).is_file() and (cand / SUMMARY_FILE).is_file():
            return cand
    others = sorted(p.name for p in path.glob("eval-*") if p.is_dir()) if path.is_dir() else []
    hint = f" (found {', '.join(others)}: pass --split)" if others else ""
    raise LrlError(f"{path}: no {UTTERANCES_FILE} and {SUMMARY_FILE} here or in eval-{split}/{hint}; "
                   f"run `lrl evaluate MODEL DATA --split {split}` first")


def _resolve(stored: str | None, *bases: Path) -> Path | None:
    """A path recorded in a summary (absolute, or relative to where the command ran) that still exists."""
    if not stored:
        return None
    p = Path(stored)
    for cand in [p] + ([b / p for b in bases] if not p.is_absolute() else []):
        if cand.exists():
            return cand
    return None


def read_suspects(path: Path) -> dict[str, tuple[float, str]]:
    """id -> (score, kind) from a check-labels suspects TSV (see SUSPECTS_FILE)."""
    header, rows = read_table(path)
    if "id" not in header or "score" not in header:
        raise LrlError(f"{path}: a suspects file needs the columns id and score (tab-separated, with a header); "
                       f"found {header}")
    out = {}
    for r in rows:
        try:
            out[r["id"]] = (float(r["score"]), r.get("kind", ""))
        except ValueError as e:
            raise LrlError(f"{path}: score {r['score']!r} of {r['id']!r} is not a number") from e
    return out


def _speakers(data_dir: Path, split: str) -> dict[str, str]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(data_dir))[split]
    except (FileNotFoundError, KeyError) as e:
        logger.warning("speakers not read from %s split %s: %s", data_dir, split, e)
        return {}
    if "speaker" not in ds.column_names:
        return {}
    cols = ds.select_columns(["id", "speaker"])
    return dict(zip(cols["id"], (s or "" for s in cols["speaker"]), strict=True))


def _provenance(summary: dict, model_dir: Path | None, data_dir: Path | None) -> dict[str, str]:
    prov = {"model": summary.get("model", ""), "data": summary.get("data", "")}
    if model_dir and (model_dir / TRAIN_CONFIG_FILE).is_file():
        import yaml

        try:
            cfg = yaml.safe_load((model_dir / TRAIN_CONFIG_FILE).read_text(encoding="utf-8")) or {}
            model = cfg.get("model") or {}
            prov["start checkpoint"] = str(model.get("checkpoint", ""))
            prov["recipe"] = str(cfg.get("recipe", ""))
            prov["updates"] = str((cfg.get("optim") or {}).get("max_steps", ""))
        except (yaml.YAMLError, AttributeError) as e:
            logger.warning("%s not read: %s", model_dir / TRAIN_CONFIG_FILE, e)
    if data_dir and (data_dir / SUMMARY_FILE).is_file():
        rec = json.loads((data_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        prov["data source"] = f"{rec.get('source', '')} ({rec.get('source_kind', '')})"
        lang = (rec.get("config") or {}).get("language")
        if lang:
            prov["language"] = str(lang)
    dec = summary.get("decoder") or {}
    if dec:
        prov["LM"] = f"{dec.get('lm')} (alpha {dec.get('alpha')}, beta {dec.get('beta')}, beam {dec.get('beam_width')})"
        if model_dir and (model_dir / DECODER_FILE).is_file():
            tuned = json.loads((model_dir / DECODER_FILE).read_text(encoding="utf-8"))
            if tuned.get("lm_source") or tuned.get("tuned_on"):
                prov["LM source / tuned on"] = f"{tuned.get('lm_source', '')} / {tuned.get('tuned_on', '')}"
    else:
        prov["LM"] = "none (greedy only)"
    prov["counts"] = summary.get("counts", "")
    return {k: v for k, v in prov.items() if v}


def collect(run: str | Path, split: str = "test", data: str | Path | None = None,
            suspects: str | Path | None = None) -> Run:
    """Everything a report shows about RUN (see `find_eval_dir`). `data` overrides the dataset recorded in
    summary.json (for speakers and audio); `suspects` a check-labels TSV (default: looked for beside the model)."""
    eval_dir = find_eval_dir(run, split)
    summary = json.loads((eval_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    split = summary.get("split", split)
    model_dir = _resolve(summary.get("model"), eval_dir.parent.parent) or (
        eval_dir.parent if eval_dir.name.startswith("eval-") else None)
    data_dir = Path(data) if data else _resolve(summary.get("data"), eval_dir.parent.parent, eval_dir.parent)
    if data_dir is None and summary.get("data"):
        logger.warning("the dataset %s recorded in %s is not found: no audio and no speakers in the report "
                       "(pass --data DIR)", summary["data"], eval_dir / SUMMARY_FILE)

    header, rows = read_table(eval_dir / UTTERANCES_FILE)
    has_lm = "lm" in header
    utts = [Utterance(id=r["id"], duration=float(r["duration"]), ref=r["ref"], greedy=r["greedy"],
                      lm=r["lm"] if has_lm else None) for r in rows]
    if data_dir is not None:
        spk = _speakers(data_dir, split)
        for u in utts:
            u.speaker = spk.get(u.id, "")

    sus_path = Path(suspects) if suspects else (
        model_dir / SUSPECTS_DIR.format(split=split) / SUSPECTS_FILE if model_dir else None)
    if sus_path is not None and sus_path.is_file():
        flagged = read_suspects(sus_path)
        for u in utts:
            if u.id in flagged:
                u.suspect, u.suspect_kind = flagged[u.id]
    elif suspects:
        raise LrlError(f"{suspects}: no such suspects file")

    curves = heatmap = None
    if model_dir is not None:
        curves = model_dir / CURVES_FILE if (model_dir / CURVES_FILE).is_file() else None
        maps = sorted(model_dir.glob(f"tune-*/{HEATMAP_FILE}"), key=lambda p: (p.parent.name != "tune-dev", p))
        heatmap = maps[0] if maps else None
    name = model_dir.name if model_dir else eval_dir.parent.name
    if name == "model" and model_dir is not None:  # a demo output: name it after the demo folder
        name = model_dir.parent.name
    return Run(name=name, eval_dir=eval_dir, split=split, summary=summary, utterances=utts, model_dir=model_dir,
               data_dir=data_dir, curves_png=curves, heatmap_png=heatmap,
               provenance=_provenance(summary, model_dir, data_dir))
