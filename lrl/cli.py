"""The `lrl` command line: maps options to configs and calls one library function per command.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `lrl --help` is instant.
User errors (LrlError, ValueError, FileNotFoundError, ImportError) print one line and exit 1; any other
exception prints one line and exits 2, Ctrl-C exits 130; set LRL_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import click
import typer

# Choices and defaults come from the library (its Literal types, config dataclasses and function signatures);
# these modules import no torch/transformers/datasets at module level.
from lrl.augment.preview import preview as _preview
from lrl.augment.specaugment import SpecPreset
from lrl.augment.wave import WavePreset
from lrl.core.cpu import set_openmp_env
from lrl.core.text import DigitPolicy, NormalizerConfig, UnicodeForm
from lrl.data.merge import merge_shards as _merge_shards
from lrl.data.prepare import OovPolicy, PrepareConfig
from lrl.data.vocab import RarePolicy, VocabBuildConfig
from lrl.decode.lm import KENLM_MAX_ORDER, BinaryType, LMBuildConfig, LMUnit
from lrl.decode.lm import OOVPolicy as LMOOVPolicy
from lrl.demo import DemoConfig, DemoStart
from lrl.evaluate.confidence import Confidence
from lrl.evaluate.labels import CheckLabelsConfig
from lrl.evaluate.pseudo import AUTO, PseudoLabelConfig
from lrl.evaluate.scoring import EvaluateConfig
from lrl.evaluate.scoring import evaluate as _evaluate
from lrl.evaluate.select import SELECTION_FILE, GroupBy, SelectConfig
from lrl.evaluate.transcribe import TranscribeConfig, TranscribeFailure
from lrl.evaluate.transcribe import iter_transcripts as _iter_transcripts
from lrl.evaluate.tuning import OTHER, Metric, TuneConfig
from lrl.evaluate.tuning import tune as _tune
from lrl.models.checkpoints import TinySize
from lrl.models.checkpoints import init_tiny as _init_tiny
from lrl.models.checkpoints import load_for_ctc as _load_for_ctc
from lrl.report import REPORT_FILE, ReportConfig
from lrl.report.audio import AudioMode
from lrl.train.batching import find_max_seconds as _find_max_seconds
from lrl.train.build_start import StartConfig
from lrl.train.pretrain import FreshSize, PretrainConfig
from lrl.train.pretrain import run_pretraining as _run_pretraining

set_openmp_env()  # before any command loads torch: idle OpenMP threads sleep instead of spinning (lrl.core.cpu)
app = typer.Typer(
    name="lrl",
    help="Speech recognition for low-resource languages: vocab -> data -> augment -> train -> lm -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
vocab_app = typer.Typer(help="Character vocabularies: build from training transcripts, audit other text.", no_args_is_help=True)
data_app = typer.Typer(help="Prepare Common Voice-style corpora and manifests into 16 kHz datasets; data cards.", no_args_is_help=True)
augment_app = typer.Typer(help="Waveform augmentation and SpecAugment presets, with a preview.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tune a Wav2Vec2 checkpoint with CTC.", no_args_is_help=True)
lm_app = typer.Typer(help="KenLM n-gram language models for beam-search decoding.", no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")
app.add_typer(data_app, name="data")
app.add_typer(augment_app, name="augment")
app.add_typer(train_app, name="train")
app.add_typer(lm_app, name="lm")

logger = logging.getLogger("lrl")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler bound to the current `sys.stderr` at every record: a caller that swaps stderr (a test
    runner, a notebook) never leaves the handler writing to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()  # writes to whatever sys.stderr is at each record, not the stream of the first call
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "datasets", "numba"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


EXIT_USER_ERROR = 1  # an error the user can fix (bad input, missing file or extra)
EXIT_UNEXPECTED = 2  # any other exception: a bug or an environment fault, shown as one line
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


def _user_errors(fn):
    """Turn every exception into one line on stderr (no traceback unless LRL_DEBUG=1): errors a user can fix
    exit 1, anything unexpected exits 2 and says so, Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lrl.core.io import LrlError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException, SystemExit):  # Typer's own exits and usage errors
            raise
        except (LrlError, ValueError, FileNotFoundError, ImportError, NotADirectoryError) as e:
            if os.environ.get("LRL_DEBUG"):
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            if os.environ.get("LRL_DEBUG"):
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:  # noqa: BLE001 - the last resort: no traceback reaches the user
            if os.environ.get("LRL_DEBUG"):
                raise
            typer.echo(f"error: {type(e).__name__}: {e} (unexpected; LRL_DEBUG=1 shows the traceback)", err=True)
            raise typer.Exit(EXIT_UNEXPECTED) from None

    return wrapper


def _choices(name: str, values: Any) -> type[Enum]:
    """A `str, Enum` of Typer choices from the library's `Literal` type (or names such as a preset table's keys),
    so the library stays the one place that lists them."""
    names = get_args(values) if get_origin(values) is Literal else tuple(values)
    return Enum(name, {v: v for v in names}, type=str, module=__name__)


def _arg_defaults(fn: Callable) -> dict[str, Any]:
    """The default argument values of a library function, for options that map to its arguments."""
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _csv(values: Iterable) -> str:
    """A default tuple as the comma-separated text its option takes ("0,0.5,1")."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# Option choices: the library's Literal types. Option defaults: its config dataclasses (read where the option
# is declared) and these library functions' signatures.
UnicodeFormOpt = _choices("UnicodeFormOpt", UnicodeForm)
DigitsOpt = _choices("DigitsOpt", DigitPolicy)
RareOpt = _choices("RareOpt", RarePolicy)
OovOpt = _choices("OovOpt", OovPolicy)
WavePresetOpt = _choices("WavePresetOpt", WavePreset)
SpecPresetOpt = _choices("SpecPresetOpt", SpecPreset)
TinySizeOpt = _choices("TinySizeOpt", TinySize)
LMBinaryOpt = _choices("LMBinaryOpt", BinaryType)
LMOOVOpt = _choices("LMOOVOpt", LMOOVPolicy)
ConfidenceOpt = _choices("ConfidenceOpt", (*get_args(Confidence), AUTO))
MetricOpt = _choices("MetricOpt", Metric)
LMUnitOpt = _choices("LMUnitOpt", LMUnit)
FreshOpt = _choices("FreshOpt", FreshSize)
DemoStartOpt = _choices("DemoStartOpt", DemoStart)
AudioModeOpt = _choices("AudioModeOpt", AudioMode)
GroupByOpt = _choices("GroupByOpt", GroupBy)
_PREVIEW = _arg_defaults(_preview)
_INIT_TINY = _arg_defaults(_init_tiny)
_FIND_BATCH = _arg_defaults(_find_max_seconds)
_LOAD_FOR_CTC = _arg_defaults(_load_for_ctc)
_TUNE = _arg_defaults(_tune)
_EVALUATE = _arg_defaults(_evaluate)
_PRETRAIN = _arg_defaults(_run_pretraining)
_MERGE = _arg_defaults(_merge_shards)


# ---------------------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------------------
@app.command()
def doctor() -> None:
    """Check the installation: Python packages, ffmpeg, espeak-ng, KenLM binaries."""
    from lrl.doctor import run_checks

    ok = True
    for check in run_checks():
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        typer.echo(f"[{mark}] {check.name:<14} {check.detail}")
        if not check.ok and check.fix:
            typer.echo(f"       fix: {check.fix}")
        ok &= check.ok or not check.required
    raise typer.Exit(0 if ok else 1)


# ---------------------------------------------------------------------------------------------------
# vocab
# ---------------------------------------------------------------------------------------------------
@vocab_app.command("build")
@_user_errors
def vocab_build(
    transcripts: Annotated[list[Path], typer.Argument(help="Training transcripts: CV TSV, TSV/CSV/JSONL manifest or text file.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for tokenizer, normaliser and report.")],
    text_column: Annotated[str | None, typer.Option(help="Transcript column of a manifest (default: sentence, text, ...).")] = None,
    language: Annotated[str | None, typer.Option(help="ISO 639 code; 'tr'/'az' lowercase I to dotless ı.")] = NormalizerConfig.language,
    unicode_form: Annotated[UnicodeFormOpt, typer.Option(help="Unicode normal form of model text.")] = UnicodeFormOpt(NormalizerConfig.unicode_form),
    lowercase: Annotated[bool, typer.Option(help="Lowercase the text.")] = NormalizerConfig.lowercase,
    keep: Annotated[str, typer.Option(help="Punctuation characters kept as letters (apostrophe look-alikes fold to ').")] = NormalizerConfig.keep,
    digits: Annotated[DigitsOpt, typer.Option(help="Sentences with digits: keep, drop the sentence, or error.")] = DigitsOpt(NormalizerConfig.digits),
    keep_format: Annotated[str | None, typer.Option(help="Format characters (Unicode Cf: ZWNJ, ZWJ...) kept in the text, e.g. $'\\u200c'; others are dropped. Default: the language's (ZWNJ for fa).")] = NormalizerConfig.keep_format,
    min_count: Annotated[int, typer.Option(help="Characters seen fewer times are rare.", min=1)] = VocabBuildConfig.min_count,
    rare: Annotated[RareOpt, typer.Option(help="Rare characters: keep as tokens, or exclude (become [UNK] / dropped by data).")] = RareOpt(VocabBuildConfig.rare),
    script: Annotated[str | None, typer.Option(help="Expected script, e.g. Latin (default: that of most letters).")] = VocabBuildConfig.script,
    alphabet: Annotated[Path | None, typer.Option(help="Curated alphabet file: characters (whitespace-separated or one per line).", exists=True, dir_okay=False)] = None,
) -> None:
    """Build a character vocabulary from TRAINING transcripts only (never dev/test)."""
    from lrl.core.io import read_text_lines
    from lrl.data.vocab import build_vocab, read_transcripts, write_report

    norm = NormalizerConfig(
        unicode_form=unicode_form.value, lowercase=lowercase, language=language, keep=keep, digits=digits.value,
        keep_format=keep_format,
    )
    alpha = None
    if alphabet is not None:
        alpha = tuple(ch for line in read_text_lines(alphabet) for tok in line.split() for ch in tok)
    cfg = VocabBuildConfig(min_count=min_count, rare=rare.value, script=script, alphabet=alpha)
    sentences = [s for p in transcripts for s in read_transcripts(p, text_column)]
    result = build_vocab(sentences, norm, cfg)
    result.vocab.save(out)
    report = write_report(result, out, sources=[str(p) for p in transcripts])
    st = result.stats
    typer.echo(
        f"{len(result.vocab)} tokens ({len(result.vocab.chars)} characters) from {st.sentences} sentences "
        f"({st.empty} empty, {st.dropped_digits} dropped for digits) -> {out}"
    )
    if result.excluded:
        typer.echo(f"excluded (rare or outside the alphabet): {' '.join(result.excluded)}")
    if result.outside_alphabet:
        typer.echo(f"in the data but not in the alphabet: {' '.join(result.outside_alphabet)}")
    typer.echo(f"report: {report}")


@vocab_app.command("audit")
@_user_errors
def vocab_audit(
    vocab_dir: Annotated[Path, typer.Argument(help="A directory written by `lrl vocab build`.", exists=True, file_okay=False)],
    texts: Annotated[list[Path], typer.Argument(help="Text to check: dev/test TSVs, an LM corpus...", exists=True, dir_okay=False)],
    text_column: Annotated[str | None, typer.Option(help="Transcript column of a manifest.")] = None,
) -> None:
    """Coverage of a vocabulary over other text: OOV character rate, which characters, examples."""
    from lrl.data.vocab import Vocab, audit, format_audit, read_transcripts

    vocab = Vocab.load(vocab_dir)
    for p in texts:
        typer.echo(format_audit(audit(vocab, read_transcripts(p, text_column)), str(p)))


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
@data_app.command("prepare")
@_user_errors
def data_prepare(
    src: Annotated[Path, typer.Argument(help="A Common Voice folder, a TSV/CSV/JSONL manifest (paths relative to it), or a folder of audio + same-named .txt.", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset directory (DatasetDict + vocab/ + skipped.tsv + summary.json).")],
    vocab: Annotated[Path | None, typer.Option("--vocab", help="Use this vocabulary (from `lrl vocab build`) instead of building one from train.", exists=True, file_okay=False)] = None,
    splits: Annotated[str, typer.Option(help="Comma-separated splits to prepare.")] = _csv(PrepareConfig.splits),
    train_from_validated: Annotated[bool, typer.Option(help="CV: train = validated.tsv minus dev/test clips and sentences.")] = PrepareConfig.train_from_validated,
    min_duration: Annotated[float, typer.Option(help="Shortest clip kept, seconds.")] = PrepareConfig.min_duration,
    max_duration: Annotated[float, typer.Option(help="Longest clip kept, seconds.")] = PrepareConfig.max_duration,
    max_chars_per_second: Annotated[float, typer.Option(help="Skip transcripts longer than this per second of audio (CTC needs frames >= labels).")] = PrepareConfig.max_chars_per_second,
    oov: Annotated[OovOpt, typer.Option(help="Transcripts with characters outside the vocabulary: drop the row, or keep it ([UNK]).")] = OovOpt(PrepareConfig.oov),
    filter_eval: Annotated[bool, typer.Option(help="Apply the content filters (OOV, duration, chars/s) to dev/test too; by default only train drops such rows and dev/test keep them for scoring.")] = PrepareConfig.filter_eval,
    check_votes: Annotated[bool, typer.Option(help="CV: skip rows with down_votes >= up_votes.")] = PrepareConfig.check_votes,
    text_column: Annotated[str | None, typer.Option(help="Manifest transcript column (default: sentence, text, ...).")] = PrepareConfig.text_column,
    audio_column: Annotated[str | None, typer.Option(help="Manifest audio path column (default: path, audio, ...).")] = PrepareConfig.audio_column,
    num_proc: Annotated[int, typer.Option(help="Decoding processes.", min=1)] = PrepareConfig.num_proc,
    language: Annotated[str | None, typer.Option(help="ISO 639 code: normaliser of a vocab built here, and the card.")] = PrepareConfig.language,
    licence: Annotated[str | None, typer.Option("--licence", "--license", help="Corpus licence for the data card, e.g. cc0-1.0, mit.")] = PrepareConfig.licence,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output prepared from other inputs.")] = PrepareConfig.overwrite,
    shard: Annotated[str | None, typer.Option(help="Decode only part I/N of the rows (I counts from 0: 0/4 .. 3/4), with the vocabulary of all of them; run the N parts on N machines or processes, each with its own --out, then `lrl data merge`.")] = None,
    card: Annotated[bool, typer.Option(help="Write a data card at the end.")] = True,
    card_dir: Annotated[Path | None, typer.Option(help="Where the data card goes (<name>.md + PNGs); default OUT/data_cards.")] = None,
    name: Annotated[str | None, typer.Option(help="Card name (default: the source folder's name).")] = None,
) -> None:
    """Prepare a Common Voice folder, a manifest or an audio folder into a 16 kHz dataset."""
    from lrl.data.prepare import prepare
    from lrl.data.shards import Shard

    try:
        part = Shard.parse(shard) if shard is not None else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--shard") from None
    cfg = PrepareConfig(
        splits=tuple(s.strip() for s in splits.split(",") if s.strip()), train_from_validated=train_from_validated,
        min_duration=min_duration, max_duration=max_duration, max_chars_per_second=max_chars_per_second,
        oov=oov.value, filter_eval=filter_eval, check_votes=check_votes, language=language, licence=licence, text_column=text_column,
        audio_column=audio_column, num_proc=num_proc, overwrite=overwrite,
    )
    summary = prepare(src, out, cfg, vocab_dir=vocab, shard=part)
    _echo_prepared(summary, out, "already prepared from identical inputs, reused")
    if part is not None:
        typer.echo(f"shard {part}: when all {part.count} are prepared, `lrl data merge SHARD_DIR... --out DIR` joins them")
    if card:
        _echo_card(out, card_dir, name)


def _echo_prepared(summary: dict, out: Path, reused: str) -> None:
    """What `data prepare` and `data merge` print of the dataset they wrote (or reused)."""
    from lrl.data.prepare import format_summary

    if summary.get("reused"):
        typer.echo(f"{out}: {reused}")
    for line in format_summary(summary):
        typer.echo(line)
    t = summary["total"]
    typer.echo(f"total: {t['kept']} kept + {t['skipped']} skipped = {t['read']} read -> {out} (skipped rows: {out / 'skipped.tsv'})")


def _echo_card(out: Path, card_dir: Path | None, name: str | None) -> None:
    from lrl.data.cards import write_card

    typer.echo(f"card: {write_card(out, card_dir, name=name)}")


@data_app.command("merge")
@_user_errors
def data_merge(
    shards: Annotated[list[Path], typer.Argument(help="The N folders `lrl data prepare --shard I/N` wrote, each shard once, in any order.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset directory: one prepared dataset, as `lrl data prepare` writes, for `lrl train run --data`.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output prepared or merged from other inputs.")] = _MERGE["overwrite"],
    card: Annotated[bool, typer.Option(help="Write a data card at the end.")] = True,
    card_dir: Annotated[Path | None, typer.Option(help="Where the data card goes (<name>.md + PNGs); default OUT/data_cards.")] = None,
    name: Annotated[str | None, typer.Option(help="Card name (default: the source folder's name).")] = None,
) -> None:
    """Join the shards of one `lrl data prepare --shard I/N` run into one prepared dataset (checks that all N are there once)."""
    summary = _merge_shards(shards, out, overwrite=overwrite)
    _echo_prepared(summary, out, "already merged from these shards, reused")
    if card:
        _echo_card(out, card_dir, name)


@data_app.command("card")
@_user_errors
def data_card(
    dataset: Annotated[Path, typer.Argument(help="A directory written by `lrl data prepare`.", exists=True, file_okay=False)],
    card_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for <name>.md and its PNGs; default DATASET/data_cards.")] = None,
    name: Annotated[str | None, typer.Option(help="Card name (default: the source folder's name).")] = None,
    language: Annotated[str | None, typer.Option(help="ISO 639 code (default: from the prepare config).")] = None,
    licence: Annotated[str | None, typer.Option("--licence", "--license", help="Licence id (default: from the prepare config).")] = None,
) -> None:
    """Write a Hugging Face dataset card (hours, speakers, histograms, characters, skips) for a prepared dataset."""
    from lrl.data.cards import write_card

    typer.echo(f"card: {write_card(dataset, card_dir, name=name, language=language, licence=licence)}")


@data_app.command("check-labels")
@_user_errors
def data_check_labels(
    model: Annotated[Path, typer.Argument(help="A trained model directory (`lrl train run`), ideally trained on this data.", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory (`lrl data prepare`).", exists=True, file_okay=False)],
    split: Annotated[str, typer.Option(help="Split whose transcripts are checked.")] = CheckLabelsConfig.split,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for suspects.tsv, scores.tsv and report.md (default MODEL/check-labels-SPLIT, where `lrl report` finds them).", file_okay=False)] = None,
    flag_fraction: Annotated[float, typer.Option(help="Share of the split flagged as suspects (the top of the ranking).", min=0.0, max=1.0)] = CheckLabelsConfig.flag_fraction,
    write_clean: Annotated[Path | None, typer.Option("--write-clean", help="Also write a prepared dataset without the flagged clips here (trainable with `lrl train run`).", file_okay=False)] = None,
    report_top: Annotated[int, typer.Option(help="Suspects listed in report.md.", min=1)] = CheckLabelsConfig.report_top,
    batch_seconds: Annotated[float, typer.Option(help="Seconds of padded audio per forward pass.")] = CheckLabelsConfig.batch_seconds,
    cache: Annotated[bool, typer.Option(help="Reuse/keep log-probs in DATA/.lrl-cache/logits (shared with `lrl evaluate`).")] = CheckLabelsConfig.cache,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0 = automatic).", min=0)] = CheckLabelsConfig.threads,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = CheckLabelsConfig.allow_pickle,
) -> None:
    """Find bad transcripts: rank a split's clips by how unlikely the model finds their transcript (forced
    alignment vs its own transcription) and guess the problem (wrong text, truncated audio, extra/missing words)."""
    from lrl.evaluate.labels import check_labels

    cfg = CheckLabelsConfig(split=split, flag_fraction=flag_fraction, report_top=report_top, batch_seconds=batch_seconds,
                            cache=cache, threads=threads, allow_pickle=allow_pickle)
    typer.echo(check_labels(model, data, cfg, out_dir=out, write_clean=write_clean).line())


@data_app.command("select")
@_user_errors
def data_select(
    model: Annotated[Path, typer.Argument(help="Model directory (Wav2Vec2ForCTC + processor + normalizer.json).", exists=True, file_okay=False)],
    audio: Annotated[list[Path], typer.Argument(help="Untranscribed audio files or folders (searched recursively).", exists=True)],
    hours: Annotated[float, typer.Option(help="Transcription budget: the chosen clips add up to at most this many hours.", min=0.0)] = SelectConfig.hours,
    out: Annotated[Path, typer.Option("--out", "-o", help="The ordered list to write (TSV: path, duration, score, cumulative_hours, group).", dir_okay=False)] = Path(SELECTION_FILE),
    max_group_share: Annotated[float, typer.Option(help="Most of the hours one group (folder: speaker/session) may take; 1 = no cap.", min=0.0, max=1.0)] = SelectConfig.max_group_share,
    group_by: Annotated[GroupByOpt, typer.Option(help="What a group is: the clip's folder, or none (no diversity cap).")] = GroupByOpt(SelectConfig.group_by),
    batch_seconds: Annotated[float, typer.Option(help="Seconds of padded audio per forward pass.")] = SelectConfig.batch_seconds,
    chunk_seconds: Annotated[float, typer.Option(help="Clips longer than this are run in overlapping chunks of this many seconds.")] = SelectConfig.chunk_seconds,
    stride_seconds: Annotated[float, typer.Option(help="Overlap on each side of a chunk, dropped when merging.")] = SelectConfig.stride_seconds,
    threads: Annotated[int, typer.Option(help="Torch CPU threads (0 = automatic).", min=0)] = SelectConfig.threads,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = SelectConfig.allow_pickle,
) -> None:
    """Choose what to transcribe next: the clips the model is least sure of, spread over groups, up to H hours."""
    from lrl.evaluate.select import select

    cfg = SelectConfig(hours=hours, max_group_share=max_group_share, group_by=GroupByOpt(group_by).value,
                       batch_seconds=batch_seconds, chunk_seconds=chunk_seconds, stride_seconds=stride_seconds,
                       threads=threads, allow_pickle=allow_pickle)
    chosen = select(model, audio, cfg, out=out)
    total = chosen[-1].cumulative_hours if chosen else 0.0
    typer.echo(f"{len(chosen)} clips, {total:.2f} h of {hours:g} h, most uncertain first: {out}")


# ---------------------------------------------------------------------------------------------------
# augment
# ---------------------------------------------------------------------------------------------------
@augment_app.command("preview")
@_user_errors
def augment_preview(
    audio: Annotated[Path, typer.Argument(help="An audio file (any format ffmpeg reads).", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for the WAVs and PNGs.")],
    preset: Annotated[WavePresetOpt, typer.Option(help="Waveform augmentation preset.")] = WavePresetOpt("strong"),
    config: Annotated[Path | None, typer.Option(help="A TOML file whose [augment] table (a preset and/or transforms as tables) replaces --preset.", exists=True, dir_okay=False)] = None,
    n: Annotated[int, typer.Option("--n", help="Number of augmented versions.", min=1, max=50)] = _PREVIEW["n"],
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same outputs).", min=0)] = _PREVIEW["seed"],
    specaugment: Annotated[SpecPresetOpt, typer.Option(help="SpecAugment preset drawn over the model's frames.")] = SpecPresetOpt("low-resource"),
    model: Annotated[Path | None, typer.Option(help="Model dir whose config.json gives frames and hidden size (default: wav2vec 2.0 layout).", exists=True, file_okay=False)] = None,
) -> None:
    """Write DIR/<stem>_aug<i>.wav and .png (waveform + log-mel before/after) and DIR/<stem>_specaugment.png."""
    from lrl.augment.specaugment import SpecAugmentConfig
    from lrl.augment.wave import WaveAugmentConfig

    wave = WaveAugmentConfig.from_toml(config) if config else WaveAugmentConfig.preset(preset.value)
    model_config = None
    if model is not None:
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(model)
    result = _preview(audio, out, wave, n=n, seed=seed, specaugment=SpecAugmentConfig.preset(specaugment.value),
                     model_config=model_config)
    lengths = ", ".join(f"{d:.2f}" for d in result.durations)
    typer.echo(f"{len(result.wavs)} augmented clips of {audio.name} ({result.source_seconds:.2f} s -> {lengths} s) in {out}")
    typer.echo(f"pictures: {result.pngs[0].name} ... {result.pngs[-1].name}, {result.specaugment_png.name}")


@augment_app.command("presets")
def augment_presets() -> None:
    """List the waveform and SpecAugment presets with their settings."""
    from lrl.augment.specaugment import SPEC_PRESETS, SpecAugmentConfig
    from lrl.augment.wave import WAVE_PRESETS, WaveAugmentConfig

    typer.echo("waveform presets (training: data.augment = \"light\"; preview --config: an [augment] table of a preset and/or transforms):")
    for name in WAVE_PRESETS:
        d = WaveAugmentConfig.preset(name).to_dict()
        typer.echo(f"  {name}:" + ("" if d else " no augmentation"))
        for key, fields in d.items():
            typer.echo(f"    {key}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    typer.echo("SpecAugment presets (Wav2Vec2Config fields; `for_hours` picks 10min < 0.5 h <= low-resource < 30 h <= medium):")
    for name in SPEC_PRESETS:
        kw = SpecAugmentConfig.preset(name).to_model_kwargs()
        typer.echo(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in kw.items()))


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------
@train_app.command("run")
@_user_errors
def train_run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config: TOML or YAML with [data] [model] [optim] [freeze] [batching] [eval] tables.", exists=True, dir_okay=False)] = None,
    data: Annotated[Path | None, typer.Option(help="Prepared dataset directory (`lrl data prepare`). Sets data.path.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Starting checkpoint: hub id or local dir (pretraining, bare or CTC Wav2Vec2). Sets model.checkpoint.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory. Sets output_dir.")] = None,
    init_head_from: Annotated[str | None, typer.Option(help="A fine-tuned CTC model dir: copy its head rows for shared characters.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = False,
    adapter_lang: Annotated[str | None, typer.Option(help="MMS adapter mode: train adapters + head only, save adapter.<lang>.safetensors.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer updates. Sets optim.max_steps.", min=1)] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of the top layer. Sets optim.lr.")] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Seconds of padded audio per batch. Sets batching.max_seconds.")] = None,
    extra_data: Annotated[Path | None, typer.Option(help="A second prepared dataset trained on beside --data (`lrl pseudo-label` output). Sets data.extra_path.", exists=True, file_okay=False)] = None,
    extra_weight: Annotated[float | None, typer.Option(help="Use at most this x the labelled train hours of --extra-data, most confident rows first. Sets data.extra_weight (default 1.0).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in the output directory.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any config key: --set optim.layer_decay=0.8 (repeatable).")] = None,
) -> None:
    """Fine-tune a Wav2Vec2 checkpoint with CTC (multi-process: torchrun --nproc_per_node=N -m lrl train run ...).

    Every setting (layer-wise LR decay, progressive unfreezing, the LR schedule, batching, SpecAugment...)
    is a config key: `lrl train config > run.toml` prints them all with their defaults and meanings; pass
    the edited file with -c, or single keys with --set. Keys left at "auto" (LR, warm-up, conv freezing,
    SpecAugment) come from the recipe lrl picks for the start and the amount of data (--set recipe=NAME)."""
    from lrl.train.config import load_config, parse_overrides
    from lrl.train.trainer import train

    overrides = parse_overrides(set_ or [])
    named = {"data.path": data, "model.checkpoint": checkpoint, "output_dir": out, "model.init_head_from": init_head_from,
             "model.adapter_lang": adapter_lang, "optim.max_steps": max_steps, "optim.lr": lr,
             "batching.max_seconds": max_seconds, "data.extra_path": extra_data, "data.extra_weight": extra_weight}
    overrides.update({k: str(v) if isinstance(v, Path) else v for k, v in named.items() if v is not None})
    if allow_pickle:
        overrides["model.allow_pickle"] = True
    if resume:
        overrides["resume"] = True
    result = train(load_config(config, overrides))
    m = result.metrics
    scores = ", ".join(f"{k} {m[k]:.4f}" for k in ("eval_wer", "eval_cer", "test_wer", "test_cer") if k in m)
    typer.echo(f"{result.global_step} updates -> {result.output_dir}" + (f" ({scores})" if scores else ""))
    if result.best_checkpoint:
        typer.echo(f"best checkpoint by dev WER: {result.best_checkpoint}")
    if result.nonfinite_skipped:
        typer.echo(f"non-finite losses skipped: {result.nonfinite_skipped}")


@train_app.command("config")
def train_config() -> None:
    """Print the complete default run configuration as annotated TOML (save it, edit it, pass it with -c)."""
    from lrl.train.config import default_config_toml

    typer.echo(default_config_toml(), nl=False)


@train_app.command("init-tiny")
@_user_errors
def train_init_tiny(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    size: Annotated[TinySizeOpt, typer.Option(help="test (~36k parameters) or small (2.5M, trains on CPU in minutes).")] = TinySizeOpt(_INIT_TINY["size"]),
    seed: Annotated[int, typer.Option(help="Random seed of the initialisation.")] = _INIT_TINY["seed"],
) -> None:
    """Write a small randomly initialised Wav2Vec2ForPreTraining checkpoint with the XLS-R structure."""
    typer.echo(f"wrote {_init_tiny(out, size.value, seed)}")


@train_app.command("build-start")
@_user_errors
def train_build_start(
    out: Annotated[Path, typer.Argument(help="Directory to write the start to (model + processor + card).")],
    lang: Annotated[list[str], typer.Option("--lang", help="LANG=SENTENCE_FILE (one sentence per line) or sw=grammar; repeatable. Languages: cy eu ga-IE mt de en sw.")],
    minutes: Annotated[float, typer.Option(help="Wall-clock minutes of CTC training (the LR schedule is fitted to them).", min=0.1)] = StartConfig.minutes,
    per_language: Annotated[int, typer.Option(help="Synthesised training utterances per language.", min=1)] = StartConfig.n_per_language,
    work: Annotated[Path | None, typer.Option(help="Directory for the corpus, dataset and run (default: OUT-work beside OUT; reused).")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="Store fp32 weights (default fp16: half the size, loaded as fp32).")] = not StartConfig.half,
    seed: Annotated[int, typer.Option(help="Seed of the corpus, the initialisation and training.")] = StartConfig.seed,
) -> None:
    """Build a tiny cross-lingual start the way XLS-R/MMS are built, but small: CTC on espeak-ng speech in
    several languages. `make xl-start` rebuilds the shipped `xl-tiny` with this command."""
    from lrl.train.build_start import build_crosslingual_start

    texts = {}
    for item in lang:
        code, sep, src = item.partition("=")
        if not sep or not code or not src:
            raise typer.BadParameter(f"--lang takes LANG=SENTENCE_FILE or sw=grammar, got {item!r}")
        if src != "grammar" and not Path(src).is_file():
            raise typer.BadParameter(f"--lang {item}: no such sentence file {src!r}")
        texts[code] = src
    cfg = StartConfig(texts=texts, n_per_language=per_language, minutes=minutes, seed=seed, half=not fp32)
    typer.echo(f"wrote {build_crosslingual_start(out, cfg, work)}")


@train_app.command("find-batch")
@_user_errors
def train_find_batch(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint to size batches for (hub id or local dir).")],
    vocab_size: Annotated[int, typer.Option(help="Outputs of the CTC head.", min=2)] = 64,
    memory_fraction: Annotated[float, typer.Option(help="Share of the available memory to plan for.", min=0.01, max=1.0)] = _FIND_BATCH["memory_fraction"],
    budget_mib: Annotated[int | None, typer.Option(help="Plan for this many MiB instead of a share of the available memory.", min=1)] = None,
    clip_seconds: Annotated[float, typer.Option(help="Clip length measured (use your longest clips: attention grows with length; --data measures at its longest train clip).", min=0.5)] = _FIND_BATCH["clip_seconds"],
    data: Annotated[Path | None, typer.Option("--data", help="Prepared dataset to size for: the probe clip becomes its longest train clip (if longer than --clip-seconds) and the head its vocabulary's size.", exists=True, file_okay=False)] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights.")] = _LOAD_FOR_CTC["allow_pickle"],
) -> None:
    """Largest batching.max_seconds whose training step fits the memory at hand. The memory per audio second
    grows with clip length (attention is quadratic in it), so measure at your longest clips: pass --data."""
    probe = f"{clip_seconds:g} s clips"
    if data is not None:
        from lrl.data.prepare import load_prepared

        dd, vocab = load_prepared(data)
        if "train" not in dd or len(dd["train"]) == 0:
            raise ValueError(f"{data} has no train rows to size batches for")
        longest = float(max(dd["train"]["duration"]))
        vocab_size = len(vocab.tokens)
        if longest > clip_seconds:
            clip_seconds = longest
        probe = f"{clip_seconds:g} s clips (longest train clip of {data}: {longest:.1f} s)"
    model = _load_for_ctc(checkpoint, vocab_size, 0, allow_pickle)
    model.freeze_feature_encoder()
    est = _find_max_seconds(model, budget_mib * 2**20 if budget_mib else None, memory_fraction, clip_seconds)
    typer.echo(
        f"max_seconds {est.max_seconds:g} (budget {est.budget_bytes / 2**20:.0f} MiB: "
        f"{est.fixed_bytes / 2**20:.1f} MiB weights+grads+AdamW, {est.bytes_per_second / 2**20:.2f} MiB per audio second, "
        f"measured on {probe})"
    )


# ---------------------------------------------------------------------------------------------------
# lm
# ---------------------------------------------------------------------------------------------------
@lm_app.command("build")
@_user_errors
def lm_build(
    texts: Annotated[list[Path], typer.Argument(help="LM text: text files (one sentence a line), TSV/CSV/JSONL manifests or prepared dataset dirs.", exists=True)],
    vocab: Annotated[Path, typer.Option("--vocab", help="The model's vocabulary dir (`lrl vocab build`, DATA/vocab or a model dir): its normaliser and characters.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dir: language_model/ (lm.bin, unigrams.txt, attrs.json), alphabet.json, lm_build.json.")],
    order: Annotated[int, typer.Option("--order", "-n", help=f"N-gram order (2..{KENLM_MAX_ORDER}).")] = LMBuildConfig.order,
    unit: Annotated[LMUnitOpt, typer.Option(help="word: n-grams over words; char: over characters with | between words (decoded lexicon-free by the C++ backend, pip install 'lrl[fast]').")] = LMUnitOpt(LMBuildConfig.unit),
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", help="Dev/test transcripts (TSV, text or prepared dataset dir) to REMOVE from the LM text. Repeatable.", exists=True)] = None,
    heldout: Annotated[list[Path] | None, typer.Option("--heldout", help="Dev/test transcripts only checked for overlap (warned about). Repeatable.", exists=True)] = None,
    lexicon: Annotated[list[Path] | None, typer.Option("--lexicon", help="Training transcripts whose words the C++ word search may spell beside the LM's (language_model/lexicon.txt; the train split next to DATA/vocab is read too). Repeatable.", exists=True)] = None,
    oov: Annotated[LMOOVOpt, typer.Option(help="Sentences with characters outside the vocabulary: strip-marks (remove combining marks the vocabulary lacks, then drop what is still outside), or drop.")] = LMOOVOpt(LMBuildConfig.oov),
    memory: Annotated[str, typer.Option("--memory", "-S", help="lmplz -S sorting memory: a percentage of RAM or a size (2G).")] = LMBuildConfig.memory,
    prune: Annotated[str | None, typer.Option(help="lmplz --prune thresholds per order, comma-separated, e.g. 0,0,1.")] = None,
    discount_fallback: Annotated[bool, typer.Option(help="lmplz --discount_fallback (needed for small corpora).")] = LMBuildConfig.discount_fallback,
    binary: Annotated[LMBinaryOpt, typer.Option(help="build_binary structure (none: keep the ARPA as the model).")] = LMBinaryOpt(LMBuildConfig.binary),
    keep_arpa: Annotated[bool, typer.Option(help="Keep OUT/lm.arpa beside the binary.")] = LMBuildConfig.keep_arpa,
) -> None:
    """Build a KenLM n-gram from text normalised with the vocabulary's normaliser."""
    from lrl.core.text import char_display
    from lrl.decode.lm import build_lm

    cfg = LMBuildConfig(
        order=order, unit=unit.value, memory=memory, prune=tuple(int(x) for x in prune.split(",")) if prune else (),
        discount_fallback=discount_fallback, binary=binary.value, keep_arpa=keep_arpa, oov=oov.value,
    )
    r = build_lm(texts, vocab, out, cfg, exclude=exclude or (), heldout=heldout or (), lexicon=lexicon or ())
    t = r.text
    typer.echo(
        f"{len(t.sentences)} of {t.read} sentences kept; dropped: {t.oov} with characters outside the vocabulary, "
        f"{t.empty} empty, {t.digits} digits, {t.excluded} excluded"
        + (f"; {t.stripped} kept after stripping marks" if t.stripped else "")
    )
    if t.oov_chars:
        typer.echo("characters outside the vocabulary: " + " ".join(f"{char_display(c)}:{n}" for c, n in t.oov_chars.most_common(10)))
    if t.heldout_overlap:
        typer.echo(f"WARNING: {t.heldout_overlap} LM sentences are dev/test transcripts: pass them to --exclude")
    counts = " ".join(f"{n}-grams={c}" for n, c in sorted(r.ngram_counts.items()))
    typer.echo(f"{order}-gram LM ({counts}, {r.n_unigrams} unigrams) in {r.seconds:.1f}s -> {r.model_path}")


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None


@lm_app.command("tune")
@_user_errors
def lm_tune(
    model: Annotated[Path, typer.Argument(help="Model directory (Wav2Vec2ForCTC + processor + normalizer.json).", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory (`lrl data prepare`).", exists=True, file_okay=False)],
    lm: Annotated[list[Path] | None, typer.Option("--lm", help="LM from `lrl lm build` (default: MODEL/language_model). Repeat it to compare LMs (word vs char): the best dev score (--metric) wins.", exists=True)] = None,
    split: Annotated[str, typer.Option(help="Split to tune on (never test).")] = _TUNE["split"],
    metric: Annotated[MetricOpt, typer.Option(help="What the search minimises: wer, or cer for scripts written without spaces between words (Thai, Chinese, Japanese...) and for transcripts that become training targets (`lrl pseudo-label`).")] = MetricOpt(TuneConfig.metric),
    alphas: Annotated[str, typer.Option(help="Coarse grid of alpha (LM weight), comma-separated.")] = _csv(TuneConfig.alphas),
    betas: Annotated[str, typer.Option(help="Coarse grid of beta (word insertion bonus), comma-separated.")] = _csv(TuneConfig.betas),
    refine: Annotated[bool, typer.Option(help="Refine around the best point at half steps.")] = TuneConfig.refine,
    refine_rounds: Annotated[int, typer.Option(help="Refinement rounds, each at half the previous step (0 = auto: 3 with the C++ backend, 1 with pyctcdecode).", min=0)] = TuneConfig.refine_rounds,
    grid_beam: Annotated[int, typer.Option(help="Beam width during the grid search.", min=1)] = TuneConfig.grid_beam,
    beam_widths: Annotated[str, typer.Option(help="Beam widths tried at the best (alpha, beta); the smallest with the best score wins.")] = _csv(TuneConfig.beam_widths),
    workers: Annotated[int, typer.Option(help="Decoding processes (0 = all cores).", min=0)] = TuneConfig.workers,
    install: Annotated[bool, typer.Option(help="Copy the LM into MODEL/language_model with the tuned attrs.json (HF-loadable).")] = _TUNE["install"],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = _TUNE["allow_pickle"],
) -> None:
    """Tune alpha/beta (and beam width) on cached dev log-probs; write MODEL/decoder.json and a heatmap."""
    cfg = TuneConfig(
        alphas=_floats(alphas, "--alphas"), betas=_floats(betas, "--betas"), refine=refine, refine_rounds=refine_rounds, grid_beam=grid_beam,
        beam_widths=tuple(int(b) for b in _floats(beam_widths, "--beam-widths")), workers=workers, metric=metric.value,
    )
    r, out = _tune(model, data, lm=lm or None, split=split, config=cfg, install=install, allow_pickle=allow_pickle)
    b = r.best
    d = r.default
    if lm and len(lm) > 1:
        typer.echo(f"best of {len(lm)} LMs: {r.lm} ({r.backend}); all in {out}/lms.tsv")
    m, other = r.metric, OTHER[r.metric]
    typer.echo(f"{split} {m.upper()}: greedy {r.greedy(m):.2%} | defaults alpha={d.alpha:g} beta={d.beta:g} {d.score(m):.2%} | "
               f"tuned alpha={b.alpha:g} beta={b.beta:g} beam={b.beam_width} {b.score(m):.2%} "
               f"({other.upper()} {b.score(other):.2%})")
    typer.echo("beams: " + ", ".join(f"{p.beam_width}: {p.score(m):.2%} in {p.seconds:.1f}s" for p in r.beams))
    typer.echo(f"wrote {model / 'decoder.json'}; grid and heatmap: {out}/grid.tsv {out}/heatmap.png")


# ---------------------------------------------------------------------------------------------------
# pretrain, evaluate, transcribe, demo
# ---------------------------------------------------------------------------------------------------
@app.command()
@_user_errors
def pretrain(
    audio: Annotated[list[Path], typer.Argument(help="Audio files, folders of audio (searched recursively) or prepared datasets (labels ignored).", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory: the model, checkpoint-<step>/, pretrain_log.csv.")],
    model: Annotated[str | None, typer.Option(help="Checkpoint to continue: hub id or local directory (safetensors).")] = None,
    fresh: Annotated[FreshOpt | None, typer.Option(help="Start from a fresh random tiny model instead of --model.")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer updates in total.", min=1)] = PretrainConfig.max_steps,
    batch_size: Annotated[int, typer.Option(help="Crops per micro-batch.", min=1)] = PretrainConfig.batch_size,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per update.", min=1)] = PretrainConfig.grad_accum,
    lr: Annotated[float, typer.Option(help="Peak learning rate (after warmup, then linear decay).")] = PretrainConfig.learning_rate,
    warmup: Annotated[int, typer.Option(help="Warmup updates.", min=0)] = PretrainConfig.warmup_steps,
    max_seconds: Annotated[float, typer.Option(help="Longer audio is cut into crops of at most this many seconds.")] = PretrainConfig.max_seconds,
    min_seconds: Annotated[float, typer.Option(help="Crops and files shorter than this are dropped (counted).")] = PretrainConfig.min_seconds,
    mask_prob: Annotated[float, typer.Option(help="Share of frames starting a masked span.")] = PretrainConfig.mask_time_prob,
    mask_length: Annotated[int, typer.Option(help="Frames per masked span (20 ms each).", min=1)] = PretrainConfig.mask_time_length,
    negatives: Annotated[int, typer.Option(help="Distractors per masked frame.", min=1)] = PretrainConfig.num_negatives,
    diversity_weight: Annotated[float, typer.Option(help="Weight of the codebook diversity loss.")] = PretrainConfig.diversity_weight,
    gumbel_decay: Annotated[float, typer.Option(help="Per-update Gumbel temperature factor (2.0 -> 0.5).")] = PretrainConfig.gumbel_decay,
    gumbel_min_at_step: Annotated[int | None, typer.Option(help="Reach the minimum temperature at this update (overrides --gumbel-decay).")] = PretrainConfig.gumbel_min_at_step,
    split: Annotated[list[str], typer.Option(help="Split(s) of a prepared dataset to read (repeatable).")] = list(PretrainConfig.splits),  # noqa: B006 - typer copies it
    freeze_feature_encoder: Annotated[bool, typer.Option(help="Keep the conv front end fixed (faster on CPU).")] = PretrainConfig.freeze_feature_encoder,
    save_every: Annotated[int, typer.Option(help="Updates between resumable checkpoints (0 = none).", min=0)] = PretrainConfig.save_every,
    max_minutes: Annotated[float, typer.Option(help="Stop after this many wall-clock minutes (0 = no limit).", min=0)] = PretrainConfig.max_minutes,
    seed: Annotated[int, typer.Option(help="Seed of data order, masks, negatives and Gumbel noise.")] = PretrainConfig.seed,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard scalars to OUT/runs.")] = PretrainConfig.tensorboard,
    resume: Annotated[bool, typer.Option(help="Continue from the newest OUT/checkpoint-<step> (schedule included).")] = _PRETRAIN["resume"],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = _PRETRAIN["allow_pickle"],
) -> None:
    """Continue wav2vec 2.0 self-supervised pretraining on unlabeled audio."""
    cfg = PretrainConfig(
        max_steps=steps, batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, warmup_steps=warmup,
        max_seconds=max_seconds, min_seconds=min_seconds, mask_time_prob=mask_prob, mask_time_length=mask_length,
        num_negatives=negatives, diversity_weight=diversity_weight, gumbel_decay=gumbel_decay,
        gumbel_min_at_step=gumbel_min_at_step, splits=tuple(split), freeze_feature_encoder=freeze_feature_encoder,
        save_every=save_every, seed=seed, tensorboard=tensorboard, max_minutes=max_minutes,
    )
    if not resume and (model is None) == (fresh is None):
        raise typer.BadParameter("give --model CKPT or --fresh tiny-test|tiny-small (or --resume)")
    r = _run_pretraining(
        audio, out, cfg, model=model, fresh=fresh.value if fresh else None, resume=resume, allow_pickle=allow_pickle
    )
    i = r.inputs
    typer.echo(
        f"{i.crops} crops ({i.seconds / 60:.1f} min) from {i.files} files + {i.dataset_rows} dataset rows; "
        f"dropped {i.too_short} too short, {i.short_tails} short tails, {i.unreadable} unreadable"
    )
    typer.echo(
        f"updates {r.start_step}->{r.steps}: contrastive {r.first_contrastive:.3f} -> {r.last_contrastive:.3f}, "
        f"perplexity {r.final_perplexity:.1f}, temperature {r.final_temperature:.3f}"
        + (" (codebook collapse warned)" if r.collapse_warned else "")
    )
    if r.probe_before is not None and r.probe_after is not None:
        typer.echo(f"fixed probe batch contrastive loss: {r.probe_before:.3f} -> {r.probe_after:.3f}")
    typer.echo(f"model: {r.out} (loads with Wav2Vec2ForCTC.from_pretrained); log: {r.out / 'pretrain_log.csv'}")


@app.command()
@_user_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model directory (Wav2Vec2ForCTC + processor + normalizer.json).", exists=True, file_okay=False)],
    data: Annotated[Path, typer.Argument(help="Prepared dataset directory (`lrl data prepare`).", exists=True, file_okay=False)],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = EvaluateConfig.split,
    lm: Annotated[Path | None, typer.Option("--lm", help="LM from `lrl lm build` (default: MODEL/language_model if tuned/installed).", exists=True)] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Greedy decoding only.")] = not _EVALUATE["use_lm"],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output dir for utterances.tsv and summary.json (default MODEL/eval-SPLIT).")] = None,
    max_utterances: Annotated[int | None, typer.Option(help="Only the first N utterances.", min=1)] = EvaluateConfig.max_utterances,
    batch_seconds: Annotated[float, typer.Option(help="Seconds of padded audio per forward pass.")] = EvaluateConfig.batch_seconds,
    cache: Annotated[bool, typer.Option(help="Reuse/keep log-probs in DATA/.lrl-cache/logits.")] = EvaluateConfig.cache,
    workers: Annotated[int, typer.Option(help="LM decoding processes (0 = all cores).", min=0)] = EvaluateConfig.lm_workers,
    chunk_seconds: Annotated[float, typer.Option(help="Clips longer than this are run in overlapping chunks of this many seconds.")] = EvaluateConfig.chunk_seconds,
    stride_seconds: Annotated[float, typer.Option(help="Overlap on each side of a chunk, dropped when merging.")] = EvaluateConfig.stride_seconds,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = EvaluateConfig.allow_pickle,
    report: Annotated[bool, typer.Option(help=f"Also write OUT/{REPORT_FILE}, the error-analysis page (`lrl report`, audio embedded).")] = True,
) -> None:
    """WER/CER of a model on a prepared split, greedy and with an LM; rows not scored are counted with their reason."""
    cfg = EvaluateConfig(split=split, batch_seconds=batch_seconds, max_utterances=max_utterances, cache=cache, lm_workers=workers,
                         chunk_seconds=chunk_seconds, stride_seconds=stride_seconds, allow_pickle=allow_pickle)
    r = _evaluate(model, data, cfg, lm=lm, use_lm=not no_lm, out_dir=out)
    typer.echo(r.counts() + ("; log-probs from the cache" if r.cached else ""))
    if r.decoder:
        typer.echo(f"LM {r.decoder['lm']} alpha={r.decoder['alpha']:g} beta={r.decoder['beta']:g} beam={r.decoder['beam_width']}")
    typer.echo(r.table())
    typer.echo(f"per utterance: {r.out_dir / 'utterances.tsv'}")
    if report:
        from lrl.report import write_report

        typer.echo("report: " + write_report([r.out_dir], r.out_dir / REPORT_FILE, ReportConfig(split=split, data=str(data))).line())


@app.command()
@_user_errors
def transcribe(
    model: Annotated[Path, typer.Argument(help="Model directory (Wav2Vec2ForCTC + processor + normalizer.json).", exists=True, file_okay=False)],
    audio: Annotated[list[Path], typer.Argument(help="Audio files or folders (searched recursively).", exists=True)],
    lm: Annotated[Path | None, typer.Option("--lm", help="LM from `lrl lm build` (default: MODEL/language_model).", exists=True)] = None,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Greedy decoding only.")] = not TranscribeConfig.use_lm,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per file, with word timestamps.")] = False,
    chunk_seconds: Annotated[float, typer.Option(help="Long audio is decoded in chunks of this many seconds.")] = TranscribeConfig.chunk_seconds,
    stride_seconds: Annotated[float, typer.Option(help="Overlap on each side of a chunk, dropped when merging.")] = TranscribeConfig.stride_seconds,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = TranscribeConfig.allow_pickle,
) -> None:
    """Transcribe audio files or folders: one line (or JSON object) per file as it is done; a file that cannot
    be read is reported on stderr, the others go on, and the exit code is 1 if any failed."""
    import json

    cfg = TranscribeConfig(chunk_seconds=chunk_seconds, stride_seconds=stride_seconds, use_lm=not no_lm,
                           allow_pickle=allow_pickle)
    total = failed = 0
    for t in _iter_transcripts(model, audio, cfg, lm=lm):
        total += 1
        if isinstance(t, TranscribeFailure):
            failed += 1
            typer.echo(f"error: {t.error}", err=True)
        else:  # typer.echo flushes: each result is out before the next file is read
            typer.echo(json.dumps(t.to_dict(), ensure_ascii=False) if json_out else f"{t.path}\t{t.text}")
    if failed:
        if total > 1:
            typer.echo(f"error: {failed} of {total} files could not be transcribed", err=True)
        raise typer.Exit(1)


@app.command("pseudo-label")
@_user_errors
def pseudo_label(
    model: Annotated[Path, typer.Argument(help="Model directory (Wav2Vec2ForCTC + vocab; its tuned LM is used when present).", exists=True, file_okay=False)],
    audio: Annotated[list[Path], typer.Argument(help="Untranscribed audio: files, folders (searched recursively) or a prepared dataset (its labels are never read).", exists=True)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the pseudo-labelled dataset (`lrl data prepare` layout) and its report.")],
    keep_share: Annotated[float, typer.Option(help="Keep this share of the utterances, most confident first (1 = all).")] = PseudoLabelConfig.keep_share,
    min_confidence: Annotated[float | None, typer.Option(help="Keep only utterances with at least this confidence (its scale: token_posterior, posterior, agreement in [0, 1]; beam a log score per frame, below 0). Default: no threshold.")] = PseudoLabelConfig.min_confidence,
    confidence: Annotated[ConfidenceOpt, typer.Option(help="Confidence utterances are ranked by (token_posterior: works without an LM; with an LM and a stronger model agreement ranked better: bench/RESULTS.md selftrain). auto: the one that ranks --rank-on's utterances best by true CER.")] = ConfidenceOpt(PseudoLabelConfig.confidence),
    rank_on: Annotated[Path | None, typer.Option(help="A prepared dataset with transcripts (e.g. your labelled data): every confidence's Spearman correlation with true CER is measured on its --rank-split and reported; --confidence auto keeps by the best. Its log-probs are cached in DATA/.lrl-cache, as `lrl evaluate` does.", exists=True, file_okay=False)] = None,
    rank_split: Annotated[str, typer.Option(help="Split of --rank-on measured (never the one you report test scores on).")] = PseudoLabelConfig.rank_split,
    max_seconds: Annotated[float, typer.Option(help="Longer recordings are cut into utterances of at most this many seconds, at quiet points.")] = PseudoLabelConfig.max_seconds,
    min_seconds: Annotated[float, typer.Option(help="Utterances shorter than this many seconds are dropped.")] = PseudoLabelConfig.min_seconds,
    no_lm: Annotated[bool, typer.Option("--no-lm", help="Greedy decoding even when the model has an LM.")] = not PseudoLabelConfig.use_lm,
    split: Annotated[str, typer.Option(help="Split read from a prepared dataset given as AUDIO.")] = PseudoLabelConfig.split,
    batch_seconds: Annotated[float, typer.Option(help="Seconds of padded audio per forward pass.")] = PseudoLabelConfig.batch_seconds,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickle (.bin) weights: only from sources you trust.")] = PseudoLabelConfig.allow_pickle,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = PseudoLabelConfig.overwrite,
) -> None:
    """Transcribe untranscribed audio with MODEL (and its LM), keep the confident utterances and write them as a
    dataset for `lrl train run --extra-data` (self-training). Unreadable files are reported, not fatal."""
    from lrl.evaluate.pseudo import REPORT_MD
    from lrl.evaluate.pseudo import pseudo_label as run

    cfg = PseudoLabelConfig(max_seconds=max_seconds, min_seconds=min_seconds, confidence=confidence.value,
                            keep_share=keep_share, min_confidence=min_confidence, use_lm=not no_lm, split=split,
                            rank_on=str(rank_on) if rank_on else None, rank_split=rank_split,
                            batch_seconds=batch_seconds, allow_pickle=allow_pickle, overwrite=overwrite)
    r = run(model, audio, out, cfg)
    drops = ", ".join(f"{k} {v}" for k, v in r["dropped"].items()) or "none"
    if rk := r.get("confidence_ranking"):
        typer.echo(f"confidence ranking on {rk['data']} [{rk['split']}], {rk['utterances']} utterances (Spearman with "
                   "true CER): " + ", ".join(f"{c} {'n/a' if v is None else f'{v:+.2f}'}" for c, v in rk["spearman"].items())
                   + f" -> keeping by {rk['chosen']}")
    typer.echo(f"{r['kept']} of {r['utterances_in']} utterances kept ({r['kept_hours']:.3f} h, {r['decoding']} decoding; "
               f"dropped: {drops}) -> {out} (report: {out / REPORT_MD})")


@app.command()
@_user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated runs: MODEL/eval-SPLIT folders, model folders or demo outputs; several are shown side by side.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write (one self-contained page).", dir_okay=False)] = Path(REPORT_FILE),
    split: Annotated[str, typer.Option(help="Split of each run (RUN/eval-SPLIT).")] = ReportConfig.split,
    audio: Annotated[AudioModeOpt, typer.Option(help="embed: clips in the page (MP3 16 kHz, 24 kbit/s, less when a long split would pass 8 MB); link: OUT's _audio/ folder beside it; none: no players.")] = AudioModeOpt(ReportConfig.audio),
    data: Annotated[Path | None, typer.Option("--data", help="Prepared dataset with the audio and speakers (default: the one recorded in summary.json).", exists=True, file_okay=False)] = None,
    suspects: Annotated[Path | None, typer.Option("--suspects", help="`lrl data check-labels` suspects TSV (id, score[, kind]) to mark (default: MODEL/check-labels-SPLIT/suspects.tsv if present).", exists=True, dir_okay=False)] = None,
    top_confusions: Annotated[int, typer.Option(help="Character substitutions in the confusion heatmap.", min=1)] = ReportConfig.top_confusions,
    top_words: Annotated[int, typer.Option(help="Word errors listed.", min=1)] = ReportConfig.top_words,
    top_speakers: Annotated[int, typer.Option(help="Speakers in the WER-by-speaker chart.", min=1)] = ReportConfig.top_speakers,
) -> None:
    """An error-analysis page that opens offline: summary, curves, LM heatmap, WER by length and speaker,
    confusions, and every utterance with audio and aligned hypotheses (sortable, filterable)."""
    from lrl.report import write_report

    cfg = ReportConfig(split=split, audio=AudioModeOpt(audio).value, data=str(data) if data else None,
                       suspects=str(suspects) if suspects else None, top_confusions=top_confusions,
                       top_words=top_words, top_speakers=top_speakers)
    typer.echo(write_report(runs, out, cfg).line())


@app.command()
@_user_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where every artefact of the demo goes.")] = Path(DemoConfig.out),
    train_steps: Annotated[int, typer.Option(help="CTC fine-tuning updates (a fixed count: a busy machine takes longer, with the same result).", min=1)] = DemoConfig.train_steps,
    start: Annotated[DemoStartOpt, typer.Option(help="xl-tiny: the shipped cross-lingual start (head rows transferred); scratch: a random tiny model.")] = DemoStartOpt(DemoConfig.start),
    pretrain_steps: Annotated[int, typer.Option(help="Self-supervised updates on the training audio before fine-tuning (0 = skip).", min=0)] = DemoConfig.pretrain_steps,
    n_train: Annotated[int, typer.Option(help="Synthesised training utterances.", min=1)] = DemoConfig.n_train,
    seed: Annotated[int, typer.Option(help="Seed of corpus, model and training.")] = DemoConfig.seed,
) -> None:
    """The whole path on a Swahili corpus lrl synthesises with espeak-ng (no data to download):
    vocab -> data -> augment -> (pretrain) -> train from the shipped cross-lingual start -> LM -> tune ->
    evaluate, then a results table."""
    from lrl.demo import rerun_commands, run_demo

    cfg = DemoConfig(out=str(out), train_steps=train_steps,
                     pretrain_steps=pretrain_steps, n_train=n_train, seed=seed, start=DemoStartOpt(start).value)
    res = run_demo(cfg, say=typer.echo)
    typer.echo(f"\nResults on the synthesised test set ({res.n_test} sentences unseen in training and LM text):\n")
    typer.echo(res.eval_table)
    if res.greedy and res.lm:
        gain = (res.greedy["wer"] - res.lm["wer"]) / res.greedy["wer"] if res.greedy["wer"] else 0.0
        typer.echo(f"\nLM: alpha={res.decoder.get('alpha')} beta={res.decoder.get('beta')} (tuned on dev); "
                   f"relative WER change with the LM: {-gain:+.1%}")
    typer.echo("\nStage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.stage_seconds.items()))
    typer.echo("\nArtefacts:")
    for what, where in res.artefacts.items():
        typer.echo(f"  {what:<48} {where}")
    typer.echo("\nThe same stages on your own data:")
    for cmd in rerun_commands(res):
        typer.echo(f"  {cmd}")
