"""Scoring a model on a prepared split: `EvaluateConfig`, WER/CER with jiwer (`score`, `word_errors`), and
`evaluate`, which decodes the split's cached log-probs greedily and with the LM side by side, counts every
row it does not score with its reason, and writes OUT/utterances.tsv and OUT/summary.json.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lrl.core.io import LrlError, atomic_write_text
from lrl.evaluate.inference import CHUNK_SECONDS, STRIDE_SECONDS, load_decoder, split_log_probs, warn_if_flat
from lrl.evaluate.transcribe import TranscribeConfig

UTTERANCES_FILE = "utterances.tsv"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` decodes and how the acoustic model is run."""

    split: str = "test"  # split of the prepared dataset
    batch_seconds: float = 60.0  # audio per forward pass (utterances sorted by length, padded)
    max_utterances: int | None = None  # evaluate only the first N utterances of the split (quick looks)
    cache: bool = True  # reuse cached log-probs (DATA/.lrl-cache/logits/<key>.npz)
    threads: int = 0  # torch CPU threads; 0 = automatic (lrl.core.cpu.choose_threads)
    lm_workers: int = 0  # processes for LM decoding; 0 = all cores
    chunk_seconds: float = CHUNK_SECONDS  # clips longer than this run in overlapping chunks, as `lrl transcribe`
    stride_seconds: float = STRIDE_SECONDS  # context on each side of a chunk, dropped when merging
    allow_pickle: bool = False  # also load pickle (pytorch_model.bin) weights: only from sources you trust

    def __post_init__(self) -> None:
        self.chunking()  # validates chunk_seconds / stride_seconds
        if not self.split:
            raise ValueError("split must be a split name such as 'test' or 'dev'")
        if self.batch_seconds <= 0:
            raise ValueError(f"batch_seconds must be > 0, got {self.batch_seconds}")
        if self.max_utterances is not None and self.max_utterances < 1:
            raise ValueError(f"max_utterances must be >= 1 or None, got {self.max_utterances}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = default), got {self.threads}")
        if self.lm_workers < 0:
            raise ValueError(f"lm_workers must be >= 0 (0 = all cores), got {self.lm_workers}")

    def chunking(self) -> TranscribeConfig:
        return TranscribeConfig(chunk_seconds=self.chunk_seconds, stride_seconds=self.stride_seconds)


# -- scoring ---------------------------------------------------------------------------------------
@dataclass
class Score:
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    ref_words: int


def score(refs: list[str], hyps: list[str]) -> Score:
    """Corpus WER/CER with jiwer (refs/hyps already normalised); empty references are allowed."""
    import jiwer

    if not refs:
        return Score(0.0, 0.0, 0, 0, 0, 0)
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    n = w.hits + w.substitutions + w.deletions
    return Score(float(w.wer), float(c.cer), w.substitutions, w.deletions, w.insertions, n)


def word_errors(ref: str, hyp: str) -> int:
    import jiwer

    w = jiwer.process_words(ref, hyp)
    return w.substitutions + w.deletions + w.insertions


# -- evaluate ------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    split: str
    n: int  # utterances scored
    not_scored: dict  # rows of the split not scored, per reason: what `lrl data prepare` skipped (skipped.tsv),
    # empty_reference (empty under the model's normaliser), max_utterances (left out by --max-utterances),
    # non_finite (NaN/Inf samples)
    greedy: Score
    lm: Score | None
    rtf_model: float  # model seconds per audio second (from when the log-probs were computed)
    rtf_greedy: float
    rtf_lm: float | None
    cached: bool
    decoder: dict = field(default_factory=dict)
    out_dir: Path | None = None
    chunked: int = 0  # scored clips longer than chunk_seconds, run in overlapping chunks
    kept_unfiltered: dict = field(default_factory=dict)  # rows prepare kept that training's filters would drop
    prepare_record: bool = True  # False: no summary.json, so rows dropped before the dataset are not counted

    def counts(self) -> str:
        """'test: 347 scored, 3 not scored (truncated 2, empty_text 1)'."""
        why = ", ".join(f"{r} {n}" for r, n in self.not_scored.items())
        line = f"{self.split}: {self.n} scored, {sum(self.not_scored.values())} not scored" + (f" ({why})" if why else "")
        if not self.prepare_record:
            line += " (no prepare summary.json: rows dropped before the dataset are unknown)"
        if self.kept_unfiltered:
            line += "; kept for scoring though training would drop them: " + ", ".join(
                f"{r} {n}" for r, n in self.kept_unfiltered.items())
        if self.chunked:
            line += f"; {self.chunked} long clip(s) scored in chunks"
        return line

    def table(self) -> str:
        rows = [("greedy", self.greedy, self.rtf_greedy)]
        if self.lm is not None:
            rows.append(("LM beam", self.lm, self.rtf_lm))
        lines = ["| decoding | WER | CER | sub | del | ins | RTF |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s, rtf in rows:
            lines.append(f"| {name} | {s.wer:.2%} | {s.cer:.2%} | {s.substitutions} | {s.deletions} | "
                         f"{s.insertions} | {rtf:.3g} |")
        lines.append(f"| model forward{' (cached)' if self.cached else ''} | | | | | | {self.rtf_model:.3g} |")
        return "\n".join(lines)


def evaluate(
    model_dir: str | Path,
    data_dir: str | Path,
    config: EvaluateConfig | None = None,
    lm: str | Path | None = None,
    use_lm: bool = True,
    out_dir: str | Path | None = None,
) -> EvalResult:
    """WER/CER of a model on a split, greedy and (when an LM is given or installed in the model dir) with
    beam search, written to OUT/utterances.tsv and OUT/summary.json (OUT defaults to MODEL/eval-<split>).
    Every row of the split is scored or counted in `not_scored` with its reason."""
    from lrl.core.text import Normalizer
    from lrl.data.prepare import split_record
    from lrl.data.shards import refuse_shard
    from lrl.data.vocab import Vocab

    config = config or EvaluateConfig()
    model_dir = Path(model_dir)
    refuse_shard(data_dir, "evaluate on")  # one shard of n: a score of 1/n of the split that reads like the whole
    logps = split_log_probs(model_dir, data_dir, config)
    norm = Normalizer(Vocab.load(model_dir).normalizer)
    decoder = load_decoder(model_dir, lm=lm, workers=config.lm_workers, use_lm=use_lm)
    with_lm = use_lm and decoder.has_lm
    if with_lm:
        warn_if_flat(logps.logps)

    record = split_record(data_dir, config.split)
    not_scored = Counter(record.get("skipped", {}) if record else {})
    not_scored["non_finite"] += len(logps.non_finite)
    not_scored["max_utterances"] = max(0, logps.split_rows - len(logps.ids) - len(logps.non_finite))
    keep, refs = [], []
    for i, r in enumerate(logps.refs):
        text = norm(r)
        if not text:
            not_scored["empty_reference"] += 1
            continue
        keep.append(i)
        refs.append(text)
    if not keep:
        raise LrlError(f"no utterance with a non-empty reference in split {config.split!r}")
    audio = sum(logps.durations[i] for i in keep)

    t0 = time.perf_counter()
    greedy = [norm(decoder.greedy(logps.logps[i]).text) or "" for i in keep]
    t_greedy = time.perf_counter() - t0
    lm_hyps, t_lm = None, None
    if with_lm:
        t0 = time.perf_counter()
        with decoder:
            lm_hyps = [norm(h.text) or "" for h in decoder.decode_batch([logps.logps[i] for i in keep])]
        t_lm = time.perf_counter() - t0

    out_dir = Path(out_dir) if out_dir else model_dir / f"eval-{config.split}"
    lines = ["id\tduration\tref\tgreedy\tgreedy_errors" + ("\tlm\tlm_errors" if with_lm else "")]
    for j, i in enumerate(keep):
        row = [logps.ids[i], f"{logps.durations[i]:.2f}", refs[j], greedy[j], str(word_errors(refs[j], greedy[j]))]
        if lm_hyps is not None:
            row += [lm_hyps[j], str(word_errors(refs[j], lm_hyps[j]))]
        lines.append("\t".join(x.replace("\t", " ") for x in row))
    atomic_write_text(out_dir / UTTERANCES_FILE, "\n".join(lines) + "\n")

    res = EvalResult(
        split=config.split, n=len(keep), not_scored={k: v for k, v in sorted(not_scored.items()) if v},
        greedy=score(refs, greedy), lm=score(refs, lm_hyps) if lm_hyps is not None else None,
        rtf_model=logps.model_seconds / max(logps.audio_seconds, 1e-9), rtf_greedy=t_greedy / audio,
        rtf_lm=t_lm / audio if t_lm is not None else None, cached=logps.cached,
        decoder={"lm": str(decoder.lm_path) if with_lm else None, **{k: getattr(decoder.config, k) for k in (
            "alpha", "beta", "beam_width")}} if with_lm else {},
        out_dir=out_dir, chunked=sum(logps.durations[i] > config.chunk_seconds for i in keep),
        kept_unfiltered=dict(record.get("kept_unfiltered", {})) if record else {}, prepare_record=record is not None,
    )
    summary = {k: v for k, v in asdict(res).items() if k != "out_dir"}
    summary.update(model=str(model_dir), data=str(data_dir), audio_seconds=audio, cache_key=logps.key,
                   counts=res.counts())
    atomic_write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    return res

