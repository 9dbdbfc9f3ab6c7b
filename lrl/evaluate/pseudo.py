"""Self-training data: `pseudo_label` transcribes untranscribed audio (folders of audio files, or a prepared
split whose labels are never read) with a model and its tuned LM (greedy without one), cuts long recordings
at their quietest points (`segment`), scores each utterance (`lrl.evaluate.confidence`), keeps the confident
ones and writes them as a prepared dataset (the `lrl data prepare` layout, split train, vocab/ from the model,
columns `pseudo` and `confidence`) with a report of every utterance in, kept or dropped and why.
`measure_confidences` ranks the candidate confidences on a labelled split (Spearman vs true CER); with
`rank_on` the run does that first and, with `confidence="auto"`, keeps by the best-ranking one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lrl.core.constants import AUDIO_SUFFIXES, SAMPLE_RATE
from lrl.core.hf_datasets import save_dataset_dict
from lrl.core.io import LrlError, atomic_write_text, iter_files
from lrl.evaluate.confidence import (
    CONFIDENCES,
    DEFAULT_CONFIDENCE,
    Confidence,
    best_confidence,
    confidences,
    select,
)

logger = logging.getLogger(__name__)

REPORT_JSON = "pseudo_report.json"
REPORT_MD = "pseudo_report.md"
UTTERANCES_FILE = "pseudo_utterances.tsv"  # every utterance: id, source, start, seconds, confidences, kept, reason
ENERGY_HOP_SECONDS = 0.01  # frame hop of the energy curve segmentation cuts on
ENERGY_SMOOTH_SECONDS = 0.3  # the energy is averaged over this much audio: a cut lands in a pause, not a stop
BLOCK_SECONDS = 600.0  # audio decoded per block (memory stays bounded on long inputs)
AUTO = "auto"  # confidence: the one that ranks `rank_on`'s utterances best by true CER
RANK_MIN_UTTERANCES = 30  # fewer labelled utterances than this make a ranking a rough guide (warned)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How untranscribed audio becomes training data."""

    max_seconds: float = 20.0  # longer recordings are cut into utterances of at most this (s), at low-energy points
    min_seconds: float = 1.0  # utterances shorter than this (s) are dropped (too_short)
    confidence: Confidence | str = DEFAULT_CONFIDENCE  # the score utterances are ranked by, or "auto" (needs rank_on)
    rank_on: str | None = None  # a labelled prepared dataset: each confidence's Spearman vs true CER is measured on it
    rank_split: str = "dev"  # its split measured
    keep_share: float = 0.5  # keep this share of the scored utterances, most confident first (1 = all)
    min_confidence: float | None = None  # and only those with a confidence >= this (None: no threshold; the
    # scales differ: posteriors in [0, 1], agreement in [0, 1], beam a log score per frame, below 0)
    use_lm: bool = True  # decode with the model's LM (MODEL/language_model, decoder.json) when it has one
    split: str = "train"  # the split read from a prepared dataset given as input (its text is never read)
    batch_seconds: float = 60.0  # padded audio per forward pass (s)
    allow_pickle: bool = False  # also load pickle (pytorch_model.bin) weights: only from sources you trust
    overwrite: bool = False  # replace an existing --out

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0 (s), got {self.max_seconds}")
        if not 0 <= self.min_seconds < self.max_seconds / 2:
            raise ValueError(f"min_seconds must be in [0, max_seconds/2 = {self.max_seconds / 2:g}) s, got {self.min_seconds}")
        if self.confidence not in (*CONFIDENCES, AUTO):
            raise ValueError(f"confidence must be one of {[*CONFIDENCES, AUTO]}, got {self.confidence!r}")
        if self.confidence == AUTO and not self.rank_on:
            raise ValueError("confidence auto picks by measurement: give rank_on (--rank-on), a prepared dataset "
                             "with transcripts (e.g. your labelled data; its dev split is measured)")
        if not 0 < self.keep_share <= 1:
            raise ValueError(f"keep_share must be in (0, 1], got {self.keep_share}")
        if self.min_confidence is not None and not math.isfinite(self.min_confidence):
            raise ValueError(f"min_confidence must be a finite number, got {self.min_confidence}")
        if not self.batch_seconds > 0:
            raise ValueError(f"batch_seconds must be > 0 (s), got {self.batch_seconds}")


def segment(wave: np.ndarray, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """(start, end) samples of utterances of at most `max_seconds` covering `wave`: each cut is the quietest
    point (energy averaged over ENERGY_SMOOTH_SECONDS) in the second half of the window still to cut."""
    n, most = len(wave), int(max_seconds * sample_rate)
    if n <= most:
        return [(0, n)]
    hop = max(1, int(ENERGY_HOP_SECONDS * sample_rate))
    frames = n // hop
    energy = np.square(wave[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    k = max(1, int(ENERGY_SMOOTH_SECONDS / ENERGY_HOP_SECONDS))
    energy = np.convolve(energy, np.ones(k) / k, mode="same")
    cuts, start = [], 0
    while n - start > most:
        lo, hi = (start + most // 2) // hop, (start + most) // hop
        cut = (lo + int(np.argmin(energy[lo:hi]))) * hop if hi > lo else start + most
        cuts.append((start, cut))
        start = cut
    return [*cuts, (start, n)]


# -- inputs ---------------------------------------------------------------------------------------------
@dataclass
class _Utt:
    id: str
    source: str  # file path, or DATASET:split:row
    start: int  # samples
    end: int
    speaker: str = ""


def _sources(inputs: list[str | Path], split: str):
    """(name, loader) per input item: audio files under folders, rows of a prepared split (audio and
    id/speaker columns only: the labels are never read). A folder without audio is an error naming it."""
    from lrl.core.hf_datasets import is_saved_dataset

    for p in map(Path, inputs):
        if is_saved_dataset(p):
            import datasets

            dd = datasets.load_from_disk(str(p))
            ds = dd[split] if isinstance(dd, datasets.DatasetDict) and split in dd else dd
            if isinstance(ds, datasets.DatasetDict):
                raise LrlError(f"{p} has no split {split!r} (it has {sorted(ds)}): choose one with --split")
            cols = [c for c in ("id", "audio", "speaker") if c in ds.column_names]
            ds = ds.select_columns(cols).with_format("numpy")
            for i in range(len(ds)):
                yield f"{p}:{split}:{i}", (lambda i=i, ds=ds: ds[i])
        elif p.is_dir():
            found = list(iter_files(p, AUDIO_SUFFIXES))
            if not found:
                logger.warning("%s: no audio files (%s) under it", p, " ".join(AUDIO_SUFFIXES))
            for f in found:
                yield str(f), (lambda f=f: {"path": f})
        elif p.is_file():
            yield str(p), (lambda p=p: {"path": p})
        else:
            raise LrlError(f"{p}: no such file or directory (expected audio folders/files or a prepared dataset)")


def _load(item: dict) -> np.ndarray:
    from lrl.core.audio import load_audio

    wave = load_audio(item["path"], SAMPLE_RATE) if "path" in item else np.asarray(item["audio"], np.float32)
    if not len(wave) or not np.isfinite(wave).all():
        raise LrlError("empty audio" if not len(wave) else "NaN/Inf samples")
    return wave


def _utterances(inputs, config: PseudoLabelConfig, dropped: list[dict]):
    """(utterance, waveform) of every segment of every readable input; unreadable/too-short ones go to `dropped`."""
    for name, loader in _sources(inputs, config.split):
        try:
            item = loader()
            wave = _load(item)
        except Exception as e:  # noqa: BLE001 - one odd file must not end a run over thousands
            dropped.append({"id": name, "source": name, "reason": "unreadable", "detail": " ".join(str(e).split())[:200]})
            continue
        base = str(item.get("id", Path(name).stem))
        spans = segment(wave, config.max_seconds)
        for k, (s, e) in enumerate(spans):
            uid = base if len(spans) == 1 else f"{base}_{k:04d}"
            if e - s < config.min_seconds * SAMPLE_RATE:
                dropped.append({"id": uid, "source": name, "reason": "too_short", "seconds": round((e - s) / SAMPLE_RATE, 3)})
                continue
            yield _Utt(uid, name, s, e, str(item.get("speaker", "") or "")), wave[s:e]


# -- the run --------------------------------------------------------------------------------------------
def pseudo_label(model_dir: str | Path, inputs: list[str | Path], out: str | Path,
                 config: PseudoLabelConfig | None = None) -> dict:
    """Transcribe `inputs`, keep the confident utterances, write the dataset and report into `out`. Returns
    the report (also in OUT/pseudo_report.json and .md). Unreadable files are reported, not fatal."""
    from lrl.data.vocab import Vocab
    from lrl.evaluate.inference import AcousticModel, load_decoder

    config = config or PseudoLabelConfig()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise LrlError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    ranking = None
    if config.rank_on:
        ranking = rank_confidences(model_dir, config)
        config = replace(config, confidence=ranking["chosen"])
    am = AcousticModel(model_dir, allow_pickle=config.allow_pickle)
    decoder = load_decoder(model_dir, use_lm=config.use_lm)
    vocab = Vocab.load(model_dir)
    lm_tuned_for = _lm_tuned_for(model_dir) if decoder.has_lm else None
    if decoder.has_lm and lm_tuned_for != "cer":
        logger.warning("the LM's weights %s, not for CER: pseudo-labels become character targets, and on yo-cv a "
                       "CER-tuned LM gave 8-11%% lower test CER than a WER-tuned one (bench/RESULTS.md tune_metric): "
                       "consider `lrl lm tune %s DATA --metric cer` first",
                       f"were tuned for {lm_tuned_for.upper()}" if lm_tuned_for else "were not tuned by lrl", model_dir)
    dropped: list[dict] = []
    utts: list[_Utt] = []
    rows: list[dict] = []
    with decoder:
        block: list[tuple[_Utt, np.ndarray]] = []
        for u, w in [*_utterances(inputs, config, dropped), (None, None)]:
            if u is not None:
                block.append((u, w))
            if block and (u is None or sum(len(x) for _, x in block) > BLOCK_SECONDS * SAMPLE_RATE):
                rows += _score_block(am, decoder, [w for _, w in block])
                utts += [x for x, _ in block]
                block = []
    scores = [r[config.confidence] for r in rows]
    sel = select(scores, [r["text"] for r in rows], config.keep_share,
                 -math.inf if config.min_confidence is None else config.min_confidence)
    for r, reason in zip(rows, sel.reasons, strict=True):
        r["kept"], r["reason"] = not reason, reason
    tmp = out.with_name(f".{out.name}.pseudo-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kept = [(u, r) for u, r in zip(utts, rows, strict=True) if r["kept"]]
    _write_dataset(tmp, kept, config)
    vocab.save(tmp / "vocab")
    report = _report(model_dir, inputs, config, decoder.has_lm, utts, rows, dropped)
    report["lm_tuned_for"] = lm_tuned_for
    if ranking is not None:
        report["confidence_ranking"] = ranking
    _write_report(tmp, report, utts, rows, dropped)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return report


def _lm_tuned_for(model_dir: str | Path) -> str | None:
    """What `lrl lm tune` minimised for this model's LM weights ("wer" before --metric existed), None untuned."""
    from lrl.decode.decoder import read_decoder_json

    saved = read_decoder_json(model_dir)
    return saved.get("tuned_for", "wer" if "dev_wer" in saved else None) if saved else None


def rank_confidences(model_dir: str | Path, config: PseudoLabelConfig) -> dict:
    """Measure every confidence on `config.rank_on` (decoded as the run will decode) and say which one
    the run keeps by: the given one, or with "auto" the best-ranking; the default when none ranks, or when the
    best leads the default by less than 1/sqrt(n-2) of Spearman's rho (a lead that few utterances can't show:
    on yo-cv's 70 dev clips beam led token_posterior by 0.003, and on the 394 unlabelled clips token_posterior
    ranked clearly better, -0.39 vs -0.27; bench/RESULTS.md selftrain-cer)."""
    from lrl.data.prepare import load_prepared
    from lrl.evaluate.scoring import EvaluateConfig

    dd, _ = load_prepared(config.rank_on)
    if config.rank_split not in dd:
        raise LrlError(f"{config.rank_on} has no split {config.rank_split!r} (it has {sorted(dd)}): choose one with "
                       "--rank-split")
    m = measure_confidences(model_dir, config.rank_on, EvaluateConfig(
        split=config.rank_split, batch_seconds=config.batch_seconds, allow_pickle=config.allow_pickle), config.use_lm)
    if m["utterances"] < 3:
        raise LrlError(f"{config.rank_on} [{config.rank_split}] has {m['utterances']} utterance(s): "
                       "a confidence ranking needs at least 3 (30 or more to be worth much); use a larger split")
    best = best_confidence(m["spearman"])
    margin = 1 / math.sqrt(m["utterances"] - 2)  # ~ the standard error of a rank correlation over n pairs
    default_rho = m["spearman"].get(DEFAULT_CONFIDENCE, math.nan)
    if config.confidence != AUTO:
        chosen, rule = config.confidence, "given (--confidence)"
    elif best is not None and (best == DEFAULT_CONFIDENCE or not default_rho < 0
                               or m["spearman"][best] < default_rho - margin):
        chosen, rule = best, "auto: the most negative Spearman correlation with true CER"
    elif best is not None:  # a lead within the noise of this many utterances: keep the default
        chosen = DEFAULT_CONFIDENCE
        rule = (f"auto: {best} led the default by {default_rho - m['spearman'][best]:.3f}, within the noise of "
                f"{m['utterances']} utterances (1/sqrt(n-2) = {margin:.3f}): the default")
    else:
        chosen, rule = DEFAULT_CONFIDENCE, "auto, but no confidence fell as CER rose: the default"
        logger.warning("no confidence ranked the %d utterances of %s[%s] by CER (Spearman %s): keeping by %s",
                       m["utterances"], config.rank_on, config.rank_split, m["spearman"], chosen)
    if m["utterances"] < RANK_MIN_UTTERANCES:
        logger.warning("the confidence ranking rests on %d utterances of %s[%s]: a rough guide (%d or more is "
                       "better)", m["utterances"], config.rank_on, config.rank_split, RANK_MIN_UTTERANCES)
    logger.info("confidence ranking on %s[%s]: %s -> %s", config.rank_on, config.rank_split,
                {c: round(v, 3) for c, v in m["spearman"].items()}, chosen)
    return {"data": str(config.rank_on), "split": config.rank_split, "utterances": m["utterances"],
            "decoding": m["decoding"], "spearman": {c: v if math.isfinite(v) else None for c, v in m["spearman"].items()},
            "best": best, "chosen": chosen, "rule": rule}


def _score_block(am, decoder, waves: list[np.ndarray]) -> list[dict]:
    logps = am.log_probs(waves)
    greedy = [decoder.greedy(lp) for lp in logps]
    lm = decoder.decode_batch(logps) if decoder.has_lm else [None] * len(logps)
    out = []
    for lp, g, h in zip(logps, greedy, lm, strict=True):
        c = confidences(lp, g.text, h.text if h else None, h.lm_score if h else None, decoder.blank_id)
        out.append({"text": (h or g).text, "greedy_text": g.text, **c})
    return out


def _write_dataset(directory: Path, kept: list, config: PseudoLabelConfig) -> None:
    """The kept utterances as a saved DatasetDict (split train) with public `datasets` API; audio read again
    per utterance so only kept audio is held."""
    import datasets

    sources = dict(_sources(sorted({u.source.rsplit(":", 2)[0] if ":" in u.source and not Path(u.source).exists()
                                     else u.source for u, _ in kept}), config.split))
    cols: dict[str, list] = {k: [] for k in ("id", "audio", "text", "sentence", "duration", "speaker", "source",
                                             "start", "pseudo", "confidence", "greedy_text")}
    for u, r in kept:
        wave = _load(sources[u.source]())[u.start:u.end]
        for k, v in (("id", u.id), ("audio", wave), ("text", r["text"]), ("sentence", r["text"]),
                     ("duration", len(wave) / SAMPLE_RATE), ("speaker", u.speaker), ("source", u.source),
                     ("start", u.start / SAMPLE_RATE), ("pseudo", True), ("confidence", r[config.confidence]),
                     ("greedy_text", r["greedy_text"])):
            cols[k].append(v)
    s, f64 = datasets.Value("string"), datasets.Value("float64")
    features = datasets.Features({"id": s, "audio": datasets.List(datasets.Value("float32")), "text": s, "sentence": s,
                                  "duration": f64, "speaker": s, "source": s, "start": f64,
                                  "pseudo": datasets.Value("bool"), "confidence": f64, "greedy_text": s})
    ds = datasets.Dataset.from_dict(cols, features=features)
    save_dataset_dict(datasets.DatasetDict({"train": ds}), directory)  # loadable even when nothing was kept


def _report(model_dir, inputs, config, has_lm, utts, rows, dropped) -> dict:
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    for r in rows:
        if r["reason"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    kept = [(u, r) for u, r in zip(utts, rows, strict=True) if r["kept"]]
    return {
        "model": str(model_dir), "inputs": [str(i) for i in inputs], "decoding": "lm" if has_lm else "greedy",
        "config": asdict(config), "utterances_in": len(rows) + len(dropped), "scored": len(rows), "kept": len(kept),
        "kept_hours": round(sum((u.end - u.start) for u, _ in kept) / SAMPLE_RATE / 3600, 4),
        "dropped": dict(sorted(reasons.items())),
        "unreadable": [{"source": d["source"], "detail": d.get("detail", "")} for d in dropped if d["reason"] == "unreadable"],
        "confidence_kept_min": min((r[config.confidence] for _, r in kept), default=None),
    }


def _write_report(directory: Path, report: dict, utts, rows, dropped) -> None:
    atomic_write_text(directory / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# Pseudo-labels from {report['model']}", "",
             f"- decoding: {report['decoding']}; confidence: {report['config']['confidence']}; keep share "
             f"{report['config']['keep_share']:g}, min confidence "
             f"{'none' if report['config']['min_confidence'] is None else format(report['config']['min_confidence'], 'g')}",
             *([f"- the LM's weights were tuned for {report['lm_tuned_for'].upper()}: for character targets "
                "`lrl lm tune --metric cer` decodes with fewer character errors"]
               if report.get("lm_tuned_for") not in (None, "cer") else []),
             f"- utterances in: {report['utterances_in']}; scored: {report['scored']}; kept: {report['kept']} "
             f"({report['kept_hours']:.3f} h)", "", "| dropped because | utterances |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in report["dropped"].items()] or ["| (none) | 0 |"]
    if rk := report.get("confidence_ranking"):
        lines += ["", f"Confidence ranking on {rk['data']} [{rk['split']}] ({rk['utterances']} utterances, "
                  f"{rk['decoding']} decoding; Spearman with true CER, more negative = better): "
                  f"kept by **{rk['chosen']}** ({rk['rule']})", "", "| confidence | Spearman |", "|---|---:|"]
        lines += [f"| {c} | {'n/a (constant)' if v is None else f'{v:+.3f}'} |" for c, v in rk["spearman"].items()]
    if report["unreadable"]:
        lines += ["", "Unreadable inputs:", *[f"- {d['source']}: {d['detail']}" for d in report["unreadable"][:50]]]
    atomic_write_text(directory / REPORT_MD, "\n".join(lines) + "\n")
    head = ["id", "source", "start", "seconds", *CONFIDENCES, "kept", "reason", "text"]
    body = ["\t".join(head)]
    for u, r in zip(utts, rows, strict=True):
        vals = [u.id, u.source, f"{u.start / SAMPLE_RATE:.2f}", f"{(u.end - u.start) / SAMPLE_RATE:.2f}",
                *[f"{r[c]:.4f}" for c in CONFIDENCES], str(r["kept"]).lower(), r["reason"], r["text"]]
        body.append("\t".join(v.replace("\t", " ").replace("\n", " ") for v in vals))
    body += ["\t".join([d["id"], d["source"], "", str(d.get("seconds", "")), *[""] * len(CONFIDENCES), "false",
                        d["reason"], ""]) for d in dropped]
    atomic_write_text(directory / UTTERANCES_FILE, "\n".join(body) + "\n")


def measure_confidences(model_dir: str | Path, data_dir: str | Path, config, use_lm: bool = True) -> dict:
    """On a labelled split (`config`: the EvaluateConfig its log-probs are computed with, cached in DATA): each
    candidate confidence's Spearman correlation with the utterances' true CER (the more negative, the better
    it ranks), plus the per-utterance rows. For choosing `confidence`."""
    from lrl.evaluate.confidence import char_error_rate, spearman
    from lrl.evaluate.inference import load_decoder, split_log_probs

    split = config.split
    s = split_log_probs(model_dir, data_dir, config)
    with load_decoder(model_dir, use_lm=use_lm) as decoder:
        greedy = [decoder.greedy(lp) for lp in s.logps]
        lm = decoder.decode_batch(s.logps) if decoder.has_lm else [None] * len(s.logps)
        rows = [{"cer": char_error_rate(ref, (h or g).text),
                 **confidences(lp, g.text, h.text if h else None, h.lm_score if h else None, decoder.blank_id)}
                for lp, g, h, ref in zip(s.logps, greedy, lm, s.refs, strict=True)]
    cer = [r["cer"] for r in rows]
    return {"split": split, "utterances": len(rows), "decoding": "lm" if decoder.has_lm else "greedy",
            "spearman": {c: spearman([r[c] for r in rows], cer) for c in CONFIDENCES}, "rows": rows}
