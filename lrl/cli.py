"""The `lrl` command line: maps options to configs and calls one library function per command.

Heavy imports (torch, transformers, datasets) happen inside the commands, so `lrl --help` is instant.
User errors (LrlError, ValueError, FileNotFoundError, ImportError) print one line and exit 1;
set LRL_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

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


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "datasets", "numba"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _user_errors(fn):
    """Turn the errors a user can fix into one clear line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lrl.io import LrlError

        try:
            return fn(*args, **kwargs)
        except (LrlError, ValueError, FileNotFoundError, ImportError, NotADirectoryError) as e:
            if os.environ.get("LRL_DEBUG"):
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _not_built(what: str, issue: int) -> None:
    typer.echo(f"`lrl {what}` is not built yet (tracked in issue #{issue}).", err=True)
    raise typer.Exit(2)


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
class UnicodeFormOpt(str, Enum):
    NFC = "NFC"
    NFKC = "NFKC"
    NFD = "NFD"
    NFKD = "NFKD"


class DigitsOpt(str, Enum):
    keep = "keep"
    drop = "drop"
    error = "error"


class RareOpt(str, Enum):
    keep = "keep"
    exclude = "exclude"


@vocab_app.command("build")
@_user_errors
def vocab_build(
    transcripts: Annotated[list[Path], typer.Argument(help="Training transcripts: CV TSV, TSV/CSV/JSONL manifest or text file.", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory for tokenizer, normaliser and report.")],
    text_column: Annotated[Optional[str], typer.Option(help="Transcript column of a manifest (default: sentence, text, ...).")] = None,
    language: Annotated[Optional[str], typer.Option(help="ISO 639 code; 'tr'/'az' lowercase I to dotless ı.")] = None,
    unicode_form: Annotated[UnicodeFormOpt, typer.Option(help="Unicode normal form of model text.")] = UnicodeFormOpt.NFC,
    lowercase: Annotated[bool, typer.Option(help="Lowercase the text.")] = True,
    keep: Annotated[str, typer.Option(help="Punctuation characters kept as letters (apostrophe look-alikes fold to ').")] = "'",
    digits: Annotated[DigitsOpt, typer.Option(help="Sentences with digits: keep, drop the sentence, or error.")] = DigitsOpt.keep,
    min_count: Annotated[int, typer.Option(help="Characters seen fewer times are rare.", min=1)] = 1,
    rare: Annotated[RareOpt, typer.Option(help="Rare characters: keep as tokens, or exclude (become [UNK] / dropped by data).")] = RareOpt.exclude,
    script: Annotated[Optional[str], typer.Option(help="Expected script, e.g. Latin (default: that of most letters).")] = None,
    alphabet: Annotated[Optional[Path], typer.Option(help="Curated alphabet file: characters (whitespace-separated or one per line).", exists=True, dir_okay=False)] = None,
) -> None:
    """Build a character vocabulary from TRAINING transcripts only (never dev/test)."""
    from lrl.io import read_text_lines
    from lrl.text import NormalizerConfig
    from lrl.vocab import VocabBuildConfig, build_vocab, read_transcripts, write_report

    norm = NormalizerConfig(
        unicode_form=unicode_form.value, lowercase=lowercase, language=language, keep=keep, digits=digits.value
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
    text_column: Annotated[Optional[str], typer.Option(help="Transcript column of a manifest.")] = None,
) -> None:
    """Coverage of a vocabulary over other text: OOV character rate, which characters, examples."""
    from lrl.vocab import Vocab, audit, format_audit, read_transcripts

    vocab = Vocab.load(vocab_dir)
    for p in texts:
        typer.echo(format_audit(audit(vocab, read_transcripts(p, text_column)), str(p)))


# ---------------------------------------------------------------------------------------------------
# stages not built yet
# ---------------------------------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare() -> None:
    """Prepare a Common Voice folder or a manifest into a 16 kHz dataset."""
    _not_built("data prepare", 3)


@data_app.command("card")
def data_card() -> None:
    """Write a data card for a prepared dataset."""
    _not_built("data card", 3)


@augment_app.command("preview")
def augment_preview() -> None:
    """Write augmented WAVs and before/after pictures for a clip."""
    _not_built("augment preview", 4)


@train_app.command("run")
def train_run() -> None:
    """Fine-tune a Wav2Vec2 checkpoint with CTC."""
    _not_built("train", 5)


@lm_app.command("build")
def lm_build() -> None:
    """Build a KenLM n-gram from text normalised with the vocabulary's normaliser."""
    _not_built("lm build", 6)


@lm_app.command("tune")
def lm_tune() -> None:
    """Tune alpha/beta on cached dev log-probs."""
    _not_built("lm tune", 6)


@app.command()
def pretrain() -> None:
    """Continue wav2vec 2.0 self-supervised pretraining on unlabeled audio."""
    _not_built("pretrain", 7)


@app.command()
def evaluate() -> None:
    """WER/CER of a model on a prepared split, greedy and with an LM."""
    _not_built("evaluate", 6)


@app.command()
def transcribe() -> None:
    """Transcribe audio files or folders."""
    _not_built("transcribe", 6)


@app.command()
def demo() -> None:
    """The whole path on a small synthesised corpus."""
    _not_built("demo", 8)
