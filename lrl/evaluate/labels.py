"""Finding bad transcripts (`lrl data check-labels`): each clip's transcript is scored against the acoustic
model (its CTC loss per character beyond the loss of the model's own greedy transcription, a Viterbi forced
alignment with per-character posteriors along the best path, the CER between transcript and free decoding),
ranked, and the kind of problem guessed (wrong text, truncated audio, extra or missing words). Writes
OUT/scores.tsv, OUT/suspects.tsv (the flagged clips, read by `lrl report`) and OUT/report.md, and optionally
a prepared dataset without the flagged clips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lrl.core.hf_datasets import save_dataset_dict
from lrl.core.io import LrlError, atomic_write_text

logger = logging.getLogger(__name__)

# Where `lrl report` looks for the suspects (lrl.report.collect reads the same names: id, score[, kind]).
SUSPECTS_DIR = "check-labels-{split}"  # under the model directory
SUSPECTS_FILE = "suspects.tsv"  # the flagged clips, most suspect first
SCORES_FILE = "scores.tsv"  # every clip, most suspect first, with the evidence
REPORT_FILE = "report.md"
IMPOSSIBLE = 100.0  # score added when the transcript cannot be aligned at all (more labels than frames allow)
LOW_POSTERIOR = 0.1  # a character whose best-path posterior is below this is "badly aligned"
CONCENTRATED = 0.7  # share of the badly aligned characters in one part of the transcript to call it located
SHORT_FREE = 0.7  # free decoding shorter than this share of the transcript: the audio holds less than the text
RATE_WEIGHT = 1.0  # nats/char per unit of ln(chars per second / the split's median) above the median
WRONG_CER = 0.5  # transcript vs free decoding CER from which the text is taken for another clip's ...
WRONG_CER_MARGIN = 0.2  # ... when it is also this far above the split's median CER (a weak model errs everywhere)
Kind = str  # "wrong_text" | "truncated" | "extra_words" | "missing_words" | "low_confidence"


@dataclass(frozen=True)
class CheckLabelsConfig:
    """What check-labels scores, how many clips it flags, and how the acoustic model runs."""

    split: str = "train"  # split of the prepared dataset to check
    flag_fraction: float = 0.1  # share of the split flagged as suspects (the top of the ranking)
    report_top: int = 20  # suspects listed in report.md
    batch_seconds: float = 60.0  # seconds of padded audio per forward pass
    cache: bool = True  # reuse cached log-probs (DATA/.lrl-cache/logits), shared with `lrl evaluate`
    threads: int = 0  # torch CPU threads; 0 = automatic (lrl.core.cpu.choose_threads)
    allow_pickle: bool = False  # also load pickle (pytorch_model.bin) weights: only from sources you trust

    def __post_init__(self) -> None:
        if not self.split:
            raise ValueError("split must be a split name such as 'train'")
        if not 0 < self.flag_fraction <= 1:
            raise ValueError(f"flag_fraction must be in (0, 1], got {self.flag_fraction}")
        if self.report_top < 1:
            raise ValueError(f"report_top must be >= 1, got {self.report_top}")

    def evaluate_config(self):
        from lrl.evaluate.scoring import EvaluateConfig

        return EvaluateConfig(split=self.split, batch_seconds=self.batch_seconds, cache=self.cache,
                              threads=self.threads, allow_pickle=self.allow_pickle)


@dataclass
class LabelCheck:
    """The evidence on one clip's transcript; `score` is higher for a less likely transcript."""

    id: str
    text: str
    free: str  # the model's greedy transcription
    duration: float  # seconds
    loss_per_char: float  # CTC loss of the transcript / its characters (inf: cannot be aligned)
    free_per_char: float  # CTC loss of the free decoding / the transcript's characters
    cer: float  # transcript vs free decoding
    rate_excess: float  # ln(chars per second / the split's median), 0 when below
    low_share: float  # share of characters with best-path posterior < LOW_POSTERIOR
    where: str  # where those lie: start, middle, end, spread, none
    extra_words: int  # transcript words the free decoding lacks (jiwer deletions)
    missing_words: int  # free-decoding words the transcript lacks (jiwer insertions)
    prefix_cer: float = 0.0  # free decoding vs the transcript's start of the same length (low: audio cut short)
    score: float = 0.0
    kind: Kind = ""
    details: str = ""
    flagged: bool = False


# -- alignment -------------------------------------------------------------------------------------
def forced_align(logp: np.ndarray, labels: list[int], blank: int = 0) -> np.ndarray | None:
    """The Viterbi CTC alignment of `labels` to log-probs (frames, vocab): for each frame, the index of the
    label it emits (-1: blank). None when the labels need more frames than there are."""
    T, L = len(logp), len(labels)
    if L == 0:
        return np.full(T, -1)
    ext = np.full(2 * L + 1, blank)
    ext[1::2] = labels
    S = len(ext)
    skip = np.zeros(S, bool)  # s may come from s-2: a label differing from the label two states back
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = logp[:, ext]  # (T, S)
    delta = np.full(S, -np.inf)
    delta[:2] = emit[0, :2]
    back = np.zeros((T, S), np.int8)
    for t in range(1, T):
        c1 = np.concatenate([[-np.inf], delta[:-1]])
        c2 = np.where(skip, np.concatenate([[-np.inf, -np.inf], delta[:-2]]), -np.inf)
        stack = np.stack([delta, c1, c2])
        back[t] = stack.argmax(0)
        delta = stack.max(0) + emit[t]
    end = S - 1 if S == 1 or delta[S - 1] >= delta[S - 2] else S - 2
    if not np.isfinite(delta[end]):
        return None
    states = np.empty(T, np.int64)
    s = end
    for t in range(T - 1, -1, -1):
        states[t] = s
        s -= back[t, s]
    return np.where(states % 2 == 1, states // 2, -1)


def char_posteriors(logp: np.ndarray, labels: list[int], path: np.ndarray) -> np.ndarray:
    """Per label: its highest posterior over the frames the alignment gives it."""
    post = np.zeros(len(labels))
    frames = np.flatnonzero(path >= 0)
    np.maximum.at(post, path[frames], np.exp(logp[frames, np.asarray(labels)[path[frames]]]))
    return post


def _where(low: np.ndarray) -> str:
    """Where the badly aligned characters lie: start / end when CONCENTRATED of them are in that half, middle
    when they are in the middle third, else spread (none: there are none)."""
    if not low.any():
        return "none"
    pos = (np.flatnonzero(low) + 0.5) / len(low)
    for name, share in (("end", (pos > 0.5).mean()), ("start", (pos < 0.5).mean()),
                        ("middle", ((pos > 1 / 3) & (pos < 2 / 3)).mean())):
        if share >= CONCENTRATED:
            return name
    return "spread"


def _ctc_loss(logp: np.ndarray, labels: list[int]) -> float:
    import torch

    lp = torch.from_numpy(np.ascontiguousarray(logp, dtype=np.float32)).unsqueeze(1)
    target = torch.tensor([labels], dtype=torch.long) if labels else torch.zeros((1, 0), dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(lp, target, torch.tensor([len(logp)]), torch.tensor([len(labels)]),
                                        blank=0, reduction="none", zero_infinity=False)
    return float(loss[0])


def _greedy(logp: np.ndarray) -> list[int]:
    best = logp.argmax(axis=1)
    keep = np.concatenate([[True], best[1:] != best[:-1]]) & (best != 0)
    return [int(i) for i in best[keep]]


# -- scoring ---------------------------------------------------------------------------------------
def check_clips(ids: list[str], texts: list[str], durations: list[float], logps: list[np.ndarray], vocab,
                config: CheckLabelsConfig | None = None) -> list[LabelCheck]:
    """Score every clip's transcript against its log-probs and rank them, most suspect first; the top
    `flag_fraction` are flagged. Score (nats/char): CTC loss of the transcript minus that of the model's
    own greedy transcription, per transcript character, plus RATE_WEIGHT x how far its characters per
    second exceed the split's median (ln), plus IMPOSSIBLE when the transcript cannot be aligned at all."""
    import jiwer

    config = config or CheckLabelsConfig()
    rates = [len(t) / d for t, d in zip(texts, durations, strict=True) if d > 0 and t]
    median_rate = float(np.median(rates)) if rates else 1.0
    checks = []
    for cid, text, dur, logp in zip(ids, texts, durations, logps, strict=True):
        labels, free_ids = vocab.encode(text), _greedy(logp)
        free = vocab.decode(free_ids)
        n = max(len(labels), 1)
        loss, free_loss = _ctc_loss(logp, labels), _ctc_loss(logp, free_ids)
        path = forced_align(logp, labels) if math.isfinite(loss) else None
        low = char_posteriors(logp, labels, path) < LOW_POSTERIOR if path is not None else np.ones(len(labels), bool)
        rate = len(text) / dur if dur > 0 else median_rate
        if text.strip():
            w = jiwer.process_words(text, free or "")  # an empty hypothesis: every word deleted
            cer, extra, missing = float(jiwer.cer(text, free or "")), w.deletions, w.insertions
            prefix_cer = float(jiwer.cer(text[: max(len(free), 1)], free or ""))
        else:
            cer, extra, missing = (0.0 if not free else 1.0), 0, len(free.split())
            prefix_cer = cer
        checks.append(LabelCheck(cid, text, free, dur, loss / n, free_loss / n, cer,
                                 max(0.0, math.log(max(rate, 1e-9) / median_rate)), float(low.mean()) if len(low) else 0.0,
                                 _where(low) if path is not None else "all", extra, missing, prefix_cer))
    median_cer = float(np.median([c.cer for c in checks])) if checks else 0.0
    for c in checks:
        excess = (c.loss_per_char - c.free_per_char) if math.isfinite(c.loss_per_char) else IMPOSSIBLE
        c.score = round(float(excess + RATE_WEIGHT * c.rate_excess), 4)
        c.kind, c.details = _kind(c, median_cer)
    checks.sort(key=lambda c: -c.score)
    for c in checks[: max(1, round(config.flag_fraction * len(checks)))] if checks else []:
        c.flagged = True
    return checks


def _kind(c: LabelCheck, median_cer: float) -> tuple[Kind, str]:
    """The problem a clip most likely has, and the evidence in one line."""
    evidence = (f"CER vs free decoding {c.cer:.2f}; {c.low_share:.0%} of characters badly aligned ({c.where}); "
                f"{c.extra_words} extra / {c.missing_words} missing word(s)")
    def wrong(cer: float) -> bool:
        return cer >= WRONG_CER and cer >= median_cer + WRONG_CER_MARGIN

    # truncated: the audio holds less than the transcript, and what it holds is the transcript's start
    short = len(c.free) < SHORT_FREE * len(c.text) or not math.isfinite(c.loss_per_char)
    if short and (not wrong(c.prefix_cer) or c.where == "end"):
        if not math.isfinite(c.loss_per_char):
            return "truncated", f"the transcript needs more frames than the {c.duration:.2f} s of audio give; " + evidence
        return "truncated", f"the end of the transcript has no audio ({len(c.free)} of {len(c.text)} characters decoded); " + evidence
    if wrong(c.cer) or not math.isfinite(c.loss_per_char):
        return "wrong_text", evidence + (f"; more text than the {c.duration:.2f} s of audio can hold"
                                         if not math.isfinite(c.loss_per_char) else "")
    if c.extra_words > c.missing_words:
        return "extra_words", evidence
    if c.missing_words > c.extra_words:
        return "missing_words", evidence
    return "low_confidence", evidence


# -- the command -----------------------------------------------------------------------------------
@dataclass
class CheckLabelsResult:
    checks: list[LabelCheck]  # most suspect first
    out_dir: Path
    clean_dir: Path | None = None
    non_finite: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[LabelCheck]:
        return [c for c in self.checks if c.flagged]

    def line(self) -> str:
        kinds: dict[str, int] = {}
        for c in self.flagged:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
        by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1]))
        return (f"{len(self.flagged)} of {len(self.checks)} clips flagged ({by_kind}): {self.out_dir / SUSPECTS_FILE}, "
                f"{self.out_dir / REPORT_FILE}" + (f"; cleaned dataset: {self.clean_dir}" if self.clean_dir else ""))


def check_labels(model_dir: str | Path, data_dir: str | Path, config: CheckLabelsConfig | None = None,
                 out_dir: str | Path | None = None, write_clean: str | Path | None = None) -> CheckLabelsResult:
    """Check the transcripts of `config.split` of a prepared dataset with a trained model; write the scores,
    the suspects and a report into `out_dir` (default MODEL/check-labels-SPLIT) and, with `write_clean`, a
    prepared dataset without the flagged clips."""
    from lrl.data.shards import refuse_shard
    from lrl.evaluate.inference import check_model, split_log_probs

    config = config or CheckLabelsConfig()
    if write_clean is not None:
        if Path(write_clean).exists():
            raise LrlError(f"{write_clean} already exists: --write-clean needs a new directory")
        # a cleaned copy of one shard of n would lose its shard record and pass for the whole corpus
        refuse_shard(data_dir, "run check-labels --write-clean on")
    vocab = check_model(model_dir, config.allow_pickle)
    s = split_log_probs(model_dir, data_dir, config.evaluate_config())
    checks = check_clips(s.ids, s.refs, s.durations, s.logps, vocab, config)
    out = Path(out_dir) if out_dir else Path(model_dir) / SUSPECTS_DIR.format(split=config.split)
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(out, checks)
    atomic_write_text(out / REPORT_FILE, _report(checks, model_dir, data_dir, config))
    result = CheckLabelsResult(checks, out, non_finite=s.non_finite)
    if write_clean is not None:
        result.clean_dir = write_clean_dataset(data_dir, write_clean, config.split, {c.id for c in result.flagged})
    return result


def _cell(x) -> str:
    return " ".join(str(x).split())


def _write_tables(out: Path, checks: list[LabelCheck]) -> None:
    head = ["id", "score", "kind", "details"]
    atomic_write_text(out / SUSPECTS_FILE, "\t".join(head) + "\n" + "".join(
        f"{_cell(c.id)}\t{c.score}\t{c.kind}\t{_cell(c.details)}\n" for c in checks if c.flagged))
    more = ["flagged", "loss_per_char", "free_per_char", "cer", "text", "free"]
    atomic_write_text(out / SCORES_FILE, "\t".join(head + more) + "\n" + "".join(
        f"{_cell(c.id)}\t{c.score}\t{c.kind}\t{_cell(c.details)}\t{int(c.flagged)}\t{c.loss_per_char:.4f}\t"
        f"{c.free_per_char:.4f}\t{c.cer:.4f}\t{_cell(c.text)}\t{_cell(c.free)}\n" for c in checks))


def _report(checks: list[LabelCheck], model_dir, data_dir, config: CheckLabelsConfig) -> str:
    flagged = [c for c in checks if c.flagged]
    kinds: dict[str, int] = {}
    for c in flagged:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    lines = [f"# check-labels: {Path(data_dir).name}/{config.split}", "",
             f"Model `{model_dir}`; {len(flagged)} of {len(checks)} clips flagged (top {config.flag_fraction:.0%}): "
             + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1])) + ".", "",
             "Score: CTC loss of the transcript minus that of the model's own greedy transcription, in nats per "
             "transcript character, plus the excess of characters per second over the split's median (ln); "
             f"+{IMPOSSIBLE:g} when the transcript cannot be aligned at all. Listen to the clips from the top.", "",
             "| # | id | score | kind | transcript | model heard | evidence |", "|---|---|---|---|---|---|---|"]
    for i, c in enumerate(flagged[: config.report_top], 1):
        cells = [str(i), c.id, f"{c.score:.2f}", c.kind, c.text, c.free or "(nothing)", c.details]
        lines.append("| " + " | ".join(_cell(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def write_clean_dataset(data_dir: str | Path, out: str | Path, split: str, drop: set[str]) -> Path:
    """A copy of the prepared dataset `data_dir` (same layout: DatasetDict, vocab/, summary.json, marker)
    whose `split` lacks the clips in `drop`; written beside `out` and renamed into place."""
    from lrl.data import guard
    from lrl.data.prepare import FORMAT_VERSION, SUMMARY_FILE, VOCAB_DIR, load_prepared

    data_dir, out = Path(data_dir), Path(out)
    if out.exists():
        raise LrlError(f"{out} already exists: --write-clean needs a new directory")
    dd, _ = load_prepared(data_dir)
    ids = [str(x) for x in dd[split]["id"]]
    dd[split] = dd[split].select([i for i, x in enumerate(ids) if x not in drop])
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        save_dataset_dict(dd, tmp)
        shutil.copytree(data_dir / VOCAB_DIR, tmp / VOCAB_DIR)
        summary = json.loads((data_dir / SUMMARY_FILE).read_text()) if (data_dir / SUMMARY_FILE).is_file() else {}
        summary["check_labels"] = {"source": str(data_dir), "split": split, "removed": len(ids) - len(dd[split]),
                                   "removed_ids": sorted(drop & set(ids))}
        atomic_write_text(tmp / SUMMARY_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        guard.write_marker(tmp, FORMAT_VERSION)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("%s: %s without %d flagged clip(s)", out, split, len(ids) - len(dd[split]))
    return out
