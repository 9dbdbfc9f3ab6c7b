"""KenLM n-gram language models for CTC beam search: LM text normalised with the vocabulary's own
normaliser (sentences with characters outside the vocabulary dropped and counted, dev/test overlap
warned about or excluded), `lmplz` + `build_binary`, the unigram list, and the directory layout that
pyctcdecode and `Wav2Vec2ProcessorWithLM` load (`alphabet.json` + `language_model/`), plus the training
transcripts' words (`lexicon.txt`) that the C++ word search spells beside the LM's unigrams.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from lrl.core.io import LrlError, atomic_write_text
from lrl.core.procs import parent_death_hook, sigterm_as_interrupt
from lrl.core.text import Normalizer, char_display, char_name
from lrl.data.vocab import Vocab, normalize_lines, read_transcripts
from lrl.decode.constants import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_UNK_SCORE_OFFSET

logger = logging.getLogger(__name__)

LM_DIR = "language_model"  # pyctcdecode's BeamSearchDecoderCTC._LANGUAGE_MODEL_SERIALIZED_DIRECTORY
ALPHABET_FILE = "alphabet.json"  # pyctcdecode's BeamSearchDecoderCTC._ALPHABET_SERIALIZED_FILENAME
ATTRS_FILE = "attrs.json"  # pyctcdecode's LanguageModel._ATTRS_SERIALIZED_FILENAME
UNIGRAMS_FILE = "unigrams.txt"  # pyctcdecode's LanguageModel._UNIGRAMS_SERIALIZED_FILENAME
LEXICON_FILE = "lexicon.txt"  # lrl's: training-transcript words the C++ word search may spell (pyctcdecode ignores it)
REPORT_FILE = "lm_build.json"
CORPUS_FILE = "corpus.txt"
ARPA_FILE = "lm.arpa"
KENLM_LOG = "kenlm.log"  # lmplz/build_binary's own progress output (stderr), kept out of the terminal
KENLM_MAX_ORDER = 6  # lmplz/build_binary, the kenlm module and flashlight-text's wheels: KENLM_MAX_ORDER=6
CHAR_BOUNDARY = "|"  # the word boundary of character LMs (wav2vec2's word delimiter token)
SETUP_HINT = (
    "run `bash scripts/setup.sh` (it builds lmplz and build_binary from the kenlm sdist into .venv/bin), "
    "or build them yourself: apt-get install libboost-program-options-dev libboost-system-dev "
    "libboost-thread-dev libboost-test-dev cmake; pip download --no-deps --no-binary kenlm kenlm -d src; "
    "in the unpacked sdist: mkdir build && cd build && cmake .. -DCMAKE_BUILD_TYPE=Release && "
    "make -j2 lmplz build_binary; put build/bin on PATH"
)
SPECIAL_WORDS = ("<s>", "</s>", "<unk>")

BinaryType = Literal["probing", "trie", "none"]
LMUnit = Literal["word", "char"]
OOVPolicy = Literal["drop", "strip-marks"]
OOV_POLICIES: tuple[OOVPolicy, ...] = get_args(OOVPolicy)
# Above this share of LM sentences dropped for characters outside the vocabulary, the drop is a warning
# (with the policy that would keep more); below it, info. A few percent of foreign names, loanwords and
# stray symbols is normal in web/CV text; more means the text and the vocabulary disagree on a convention
# (tone marks, apostrophes, another script) and the LM is silently built from a fraction of its text.
OOV_WARN_SHARE = 0.05


@dataclass(frozen=True)
class LMBuildConfig:
    """How `build_lm` turns text into a KenLM model."""

    order: int = 3  # n-gram order (2..KENLM_MAX_ORDER); word 3-5, char 6 (8-10 need KenLM rebuilt for them)
    unit: LMUnit = "word"  # "char": n-grams over characters with CHAR_BOUNDARY between words (decoded
    # lexicon-free by the flashlight backend; open vocabulary, for agglutinative languages and little text)
    memory: str = "10%"  # lmplz -S: sorting memory (percent of RAM or a size like 1G); lmplz's own default is 80%
    prune: tuple[int, ...] = ()  # lmplz --prune count thresholds per order, e.g. (0, 0, 1); first must be 0
    discount_fallback: bool = True  # lmplz --discount_fallback: needed on small corpora ("discount out of range")
    binary: BinaryType = "probing"  # build_binary data structure; "none" keeps only the ARPA file
    keep_arpa: bool = True  # keep OUT/lm.arpa beside the binary (readable, but as large as the model)
    min_word_count: int = 1  # words seen fewer times are left out of unigrams.txt (they stay in the LM)
    alpha: float = DEFAULT_ALPHA  # LM weight written to attrs.json (tune it with `lrl lm tune`)
    beta: float = DEFAULT_BETA  # word insertion bonus written to attrs.json
    unk_score_offset: float = DEFAULT_UNK_SCORE_OFFSET  # log-score offset for words outside the unigrams
    oov: OOVPolicy = "strip-marks"  # sentences with characters outside the vocabulary: first strip the
    # combining marks the vocabulary lacks and drop only what is still OOV ("strip-marks"), or drop ("drop").
    # strip-marks is the default because it only removes marks the model cannot write (the vocabulary comes
    # from its training transcripts), and only when every base letter left is in the vocabulary: the result
    # is the model's own spelling (yo-cv writes ọ without tone, yo.txt ọ̀), while a word that keeps the mark
    # could never be decoded. Dropping instead lost 82% of the Yoruba LM text. What was stripped is logged
    # and written to lm_build.json (text.stripped, text.stripped_marks); --oov drop restores dropping.

    def __post_init__(self) -> None:
        if self.unit not in get_args(LMUnit):
            raise ValueError(f"unit must be one of {list(get_args(LMUnit))}, got {self.unit!r}")
        if not 2 <= self.order <= KENLM_MAX_ORDER:
            raise ValueError(f"order must be in 2..{KENLM_MAX_ORDER}, got {self.order}")
        if self.prune:
            if len(self.prune) > self.order:
                raise ValueError(f"prune must give at most order={self.order} thresholds, got {self.prune}")
            if self.prune[0] != 0:
                raise ValueError(f"prune must start with 0 (unigrams cannot be pruned), got {self.prune}")
            if any(b < a for a, b in zip(self.prune, self.prune[1:], strict=False)) or min(self.prune) < 0:
                raise ValueError(f"prune thresholds must be >= 0 and non-decreasing, got {self.prune}")
        if self.binary not in get_args(BinaryType):
            raise ValueError(f"binary must be one of {list(get_args(BinaryType))}, got {self.binary!r}")
        if self.binary == "none" and not self.keep_arpa:
            raise ValueError("binary='none' needs keep_arpa=True (the ARPA file is then the model)")
        if self.oov not in OOV_POLICIES:
            raise ValueError(f"oov must be one of {list(OOV_POLICIES)}, got {self.oov!r}")
        if self.min_word_count < 1:
            raise ValueError(f"min_word_count must be >= 1, got {self.min_word_count}")
        if not self.alpha >= 0:  # the same bounds as lrl.decode.decoder.DecoderConfig, which reads attrs.json
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if not abs(self.beta) < float("inf"):
            raise ValueError(f"beta must be a finite number, got {self.beta}")
        if not self.unk_score_offset <= 0:
            raise ValueError(f"unk_score_offset must be <= 0, got {self.unk_score_offset}")
        m = self.memory.strip()
        if not m or not (m[:-1] if m[-1] in "%kKmMgGtT" else m).replace(".", "", 1).isdigit():
            raise ValueError(f"memory must be like '10%' or '2G', got {self.memory!r}")


# -- text ------------------------------------------------------------------------------------------
@dataclass
class LMText:
    """Normalised LM sentences and why the others were dropped."""

    sentences: list[str] = field(default_factory=list)
    read: int = 0
    empty: int = 0  # empty after normalisation
    digits: int = 0  # dropped by the normaliser's digit policy
    oov: int = 0  # held a character outside the vocabulary
    oov_chars: Counter = field(default_factory=Counter)
    excluded: int = 0  # equal to an --exclude sentence (dev/test)
    heldout_overlap: int = 0  # equal to a dev/test transcript and NOT excluded
    stripped: int = 0  # kept after stripping combining marks outside the vocabulary (oov="strip-marks")
    stripped_marks: Counter = field(default_factory=Counter)  # the marks removed, with counts
    kept_by_policy: Counter = field(default_factory=Counter)  # sentences each OOV policy would keep
    overlap_examples: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        skip = ("sentences", "oov_chars", "stripped_marks", "kept_by_policy", "overlap_examples")
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        d["kept"] = len(self.sentences)
        d["oov_chars"] = dict(self.oov_chars.most_common(20))
        d["stripped_marks"] = {f"U+{ord(c):04X} {char_name(c)}": n for c, n in self.stripped_marks.most_common()}
        d["kept_by_policy"] = {p: self.kept_by_policy[p] for p in OOV_POLICIES}
        d["overlap_examples"] = self.overlap_examples[:5]
        return d


def prepare_text(
    lines: Iterable[str],
    vocab: Vocab,
    exclude: Iterable[str] = (),
    heldout: Iterable[str] = (),
    oov: OOVPolicy = "strip-marks",
) -> LMText:
    """Normalise LM `lines`; drop (and count) empty lines, digit drops and sentences with characters the
    vocabulary lacks; drop sentences equal to an `exclude` sentence; count (and warn about) sentences equal
    to a `heldout` (dev/test) transcript that were not excluded. Both lists are normalised the same way.
    With oov="strip-marks", combining marks outside the vocabulary are removed first (ẹ́ -> ẹ when the
    vocabulary has ẹ but no combining acute) and only sentences still holding OOV characters are dropped.
    `kept_by_policy` counts what every policy would keep, so the caller can name a better one."""
    import unicodedata

    norm = Normalizer(vocab.normalizer)
    excl = {t for t in (norm(s) for s in exclude) if t}
    held = {t for t in (norm(s) for s in heldout) if t} - excl
    out = LMText()
    known = set(vocab.chars) | {" "}
    seen: Counter = Counter()
    for text in normalize_lines(lines, norm, seen):
        bad = [ch for ch in text if ch not in known]
        stripped = _strip_marks(text, known) if bad else text
        strip_bad = [ch for ch in stripped if ch not in known] if bad else []
        outcome = {"drop": None if bad else text, "strip-marks": None if strip_bad else stripped}
        for policy, kept in outcome.items():
            if kept is not None and kept not in excl:
                out.kept_by_policy[policy] += 1
        if outcome[oov] is None:
            out.oov += 1
            out.oov_chars.update(strip_bad if oov == "strip-marks" else bad)  # what still blocked the sentence
            continue
        if outcome[oov] != text:
            out.stripped += 1
            out.stripped_marks.update(
                Counter(unicodedata.normalize("NFD", text)) - Counter(unicodedata.normalize("NFD", outcome[oov])))
            text = outcome[oov]
        if text in excl:
            out.excluded += 1
            continue
        if text in held:
            out.heldout_overlap += 1
            if len(out.overlap_examples) < 5:
                out.overlap_examples.append(text)
        out.sentences.append(text)
    out.read, out.digits, out.empty = seen["read"], seen["digits"], seen["empty"]
    return out


def _strip_marks(text: str, known: set[str]) -> str:
    """Remove combining marks that are not in `known`, also from inside precomposed characters."""
    import unicodedata

    out = []
    for ch in text:
        if ch in known:
            out.append(ch)
        elif unicodedata.combining(ch):
            continue
        else:
            decomposed = unicodedata.normalize("NFD", ch)
            base = "".join(c for c in decomposed if not unicodedata.combining(c) or c in known)
            base = unicodedata.normalize("NFC", base)
            out.append(base if all(c in known for c in base) else ch)
    return " ".join("".join(out).split())


def read_sentences(paths: Sequence[str | Path], dataset_splits: Sequence[str] = ("train",)) -> list[str]:
    """Sentences from text files (one a line), CV TSVs / manifests (their transcript column), or prepared
    dataset directories (the `text` of `dataset_splits`: train for LM text, dev+test for --exclude)."""
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(_dataset_texts(p, splits=dataset_splits))
        else:
            out.extend(read_transcripts(p))
    return out


def _dataset_texts(data_dir: Path, splits: Sequence[str] | None) -> list[str]:
    if not (data_dir / "dataset_dict.json").is_file():
        raise LrlError(
            f"{data_dir} is not a prepared dataset (no dataset_dict.json): pass text files, TSVs, or a "
            "directory written by `lrl data prepare`"
        )
    from datasets import load_from_disk

    dd = load_from_disk(str(data_dir))
    out: list[str] = []
    for name in dd:
        if splits is None or name in splits:
            out.extend(str(t) for t in list(dd[name]["text"]))
    return out


def train_from_vocab_dir(vocab_dir: str | Path) -> list[str]:
    """Train transcripts of the prepared dataset a vocabulary lives in (`DATA/vocab/`), else []."""
    data_dir = Path(vocab_dir).resolve().parent
    if not (data_dir / "dataset_dict.json").is_file():
        return []
    try:
        return _dataset_texts(data_dir, splits=("train",))
    except Exception as e:  # the lexicon is an addition: a half-written dataset must not stop an LM build
        logger.warning("could not read train transcripts from %s for the lexicon: %s", data_dir, e)
        return []


def heldout_from_vocab_dir(vocab_dir: str | Path) -> list[str]:
    """Dev/test transcripts of the prepared dataset a vocabulary lives in (`DATA/vocab/`), else []."""
    data_dir = Path(vocab_dir).resolve().parent
    if not (data_dir / "dataset_dict.json").is_file():
        return []
    try:
        return _dataset_texts(data_dir, splits=("dev", "test"))
    except Exception as e:  # a half-written dataset must not stop an LM build: the check is advisory
        logger.warning("could not read dev/test transcripts from %s for the overlap check: %s", data_dir, e)
        return []


def _log_oov_drops(text: LMText, policy: OOVPolicy) -> None:
    """Warn when more than OOV_WARN_SHARE of the sentences were dropped for OOV characters: how many, the
    most frequent offenders by Unicode name, and the --oov policy that would keep more (counted, not guessed)."""
    if not text.oov:
        return
    share = text.oov / max(text.read, 1)
    chars = ", ".join(f"{char_display(c)} U+{ord(c):04X} {char_name(c)}: {n}" for c, n in text.oov_chars.most_common(5))
    kept = len(text.sentences)
    best = max(OOV_POLICIES, key=lambda p: text.kept_by_policy[p])
    if share <= OOV_WARN_SHARE:
        logger.info("dropped %d of %d LM sentences (%.1f%%) for characters outside the vocabulary (%s)",
                    text.oov, text.read, 100 * share, chars)
    elif best != policy and text.kept_by_policy[best] > kept:
        logger.warning(
            "dropped %s of %s LM sentences (%.1f%%) for characters outside the vocabulary; most frequent: %s. "
            "--oov %s would keep %s of %s (now %s kept)", f"{text.oov:,}", f"{text.read:,}", 100 * share, chars,
            best, f"{text.kept_by_policy[best]:,}", f"{text.read:,}", f"{kept:,}",
        )
    else:
        logger.warning(
            "dropped %s of %s LM sentences (%.1f%%) for characters outside the vocabulary; most frequent: %s. "
            "No --oov policy keeps more (%s): clean these characters from the LM text, or build the vocabulary "
            "from transcripts that use them", f"{text.oov:,}", f"{text.read:,}", 100 * share, chars,
            ", ".join(f"{p} {text.kept_by_policy[p]:,}" for p in OOV_POLICIES),
        )


# -- KenLM binaries --------------------------------------------------------------------------------
def find_kenlm_binary(name: str) -> str:
    """Path of `lmplz` / `build_binary`: next to this Python (the venv's bin), then on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise LrlError(f"KenLM's `{name}` was not found next to {sys.executable} or on PATH: {SETUP_HINT}")


def _run(cmd: list[str], stdin_path: Path | None, stdout_path: Path | None, what: str, log: Path) -> str:
    """Run a KenLM tool; its stderr (progress bars, statistics) is appended to `log`, and quoted on failure."""
    logger.debug("running %s", " ".join(cmd))
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as fin, (
        open(stdout_path, "wb") if stdout_path else open(os.devnull, "wb")
    ) as fout:
        try:
            proc = subprocess.run(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE, check=False,
                                  preexec_fn=parent_death_hook())
        except OSError as e:
            raise LrlError(f"could not run {cmd[0]}: {e}. {SETUP_HINT}") from e
    err = proc.stderr.decode("utf-8", "replace")
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n{err}\n[exit {proc.returncode}]\n")
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-10:])
        hint = ""
        if "discount" in err and ("out of range" in err or "Kneser-Ney" in err):
            hint = " The corpus is too small for Kneser-Ney estimates: keep --discount-fallback on (the default)."
        raise LrlError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}\n{hint}".rstrip())
    return err


# -- building ------------------------------------------------------------------------------------
STAGING_INFIX = ".lm-build-"  # OUT's parent/.OUT.lm-build-<pid>: where a build is written before the swap


@dataclass
class LMBuildResult:
    out: Path
    text: LMText
    model_path: Path  # the file pyctcdecode loads (language_model/lm.bin or lm.arpa)
    n_unigrams: int
    ngram_counts: dict[int, int]
    seconds: float


def char_tokens(sentence: str) -> str:
    """A sentence as a character LM's tokens: 'ab cd' -> 'a b | c d'."""
    return " ".join(CHAR_BOUNDARY if c == " " else c for c in " ".join(sentence.split()))


def lm_unit(unigrams: Sequence[str] | None) -> LMUnit:
    """"char" for an LM whose unigrams are single characters and the word boundary (`--unit char`)."""
    if unigrams and CHAR_BOUNDARY in unigrams and all(len(u) == 1 for u in unigrams):
        return "char"
    return "word"


def labels_for_vocab(vocab: Vocab) -> list[str]:
    """pyctcdecode labels in token-id order: '' for [PAD] (the blank), ' ' for '|', '⁇' for [UNK]."""
    from lrl.data.vocab import PAD, UNK, WORD_DELIMITER

    special = {PAD: "", WORD_DELIMITER: " ", UNK: "\u2047"}
    return [special.get(t, t) for t in vocab.tokens]


def write_alphabet(directory: str | Path, vocab: Vocab) -> Path:
    """Write pyctcdecode's alphabet.json for `vocab` (regular, not BPE)."""
    path = Path(directory) / ALPHABET_FILE
    atomic_write_text(path, json.dumps({"labels": labels_for_vocab(vocab), "is_bpe": False}, ensure_ascii=False))
    return path


def write_attrs(lm_dir: str | Path, alpha: float, beta: float, unk_score_offset: float, score_boundary: bool = True) -> Path:
    """Write pyctcdecode's language_model/attrs.json (exactly its four keys)."""
    path = Path(lm_dir) / ATTRS_FILE
    attrs = {"alpha": float(alpha), "beta": float(beta), "unk_score_offset": float(unk_score_offset),
             "score_boundary": bool(score_boundary)}
    atomic_write_text(path, json.dumps(attrs) + "\n")
    return path


def _arpa_counts(arpa: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                n, c = line[6:].strip().split("=")
                counts[int(n)] = int(c)
            elif line.startswith("\\1-grams"):
                break
    return counts


def build_lm(
    text_paths: Sequence[str | Path],
    vocab_dir: str | Path,
    out: str | Path,
    config: LMBuildConfig | None = None,
    exclude: Sequence[str | Path] = (),
    heldout: Sequence[str | Path] = (),
    lexicon: Sequence[str | Path] = (),
) -> LMBuildResult:
    """Build a KenLM model into OUT (see `_build_lm_in` for the files). The build is written beside OUT, in
    a staging directory of the same parent, and swapped in by renames only once complete: a failed or
    interrupted build (SIGTERM included: the KenLM tool is stopped, the staging directory removed) leaves
    the previous LM of OUT as it was."""
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise LrlError(f"--out {final} is a file: expected a directory (new, or of an earlier `lrl lm build`)")
    made_parent = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}{STAGING_INFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with sigterm_as_interrupt():
            result = _build_lm_in(text_paths, vocab_dir, staging, config, exclude, heldout, lexicon)
            _swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made_parent and not final.exists():
            with contextlib.suppress(OSError):
                final.parent.rmdir()
    logger.info("wrote %s", final)
    return replace(result, out=final, model_path=final / result.model_path.relative_to(staging))


def _swap_in(staging: Path, final: Path) -> None:
    """Put a finished build in place: `final` itself when it does not exist (one rename); else each file a
    build writes is renamed over (the old LM directory moved aside first, removed after; moved back if a
    rename fails), leaving anything else the user keeps in `final` alone."""
    if not final.exists():
        staging.rename(final)
        return
    names = {p.name for p in staging.iterdir()} | {ARPA_FILE}  # an lm.arpa of an earlier build is stale
    old = staging.with_name(staging.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    moved: list[str] = []
    try:
        for name in sorted(names):
            if (final / name).exists():
                os.replace(final / name, old / name)
                moved.append(name)
        for p in staging.iterdir():
            os.replace(p, final / p.name)
    except OSError as e:
        for name in moved:
            with contextlib.suppress(OSError):
                if (final / name).is_dir():
                    shutil.rmtree(final / name)
                os.replace(old / name, final / name)
        raise LrlError(f"could not move the new LM into {final} ({e}); the previous one is kept") from e
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _build_lm_in(
    text_paths: Sequence[str | Path],
    vocab_dir: str | Path,
    out: Path,
    config: LMBuildConfig | None,
    exclude: Sequence[str | Path],
    heldout: Sequence[str | Path],
    lexicon: Sequence[str | Path] = (),
) -> LMBuildResult:
    """Build OUT/language_model/{lm.bin|lm.arpa, unigrams.txt, attrs.json} + OUT/alphabet.json (so OUT
    loads with `BeamSearchDecoderCTC.load_from_dir`), OUT/normalizer.json, OUT/corpus.txt and a report
    OUT/lm_build.json; lmplz/build_binary's own output goes to OUT/kenlm.log. `exclude`: files whose
    sentences are removed from the LM text (dev/test); `heldout`: files only checked for overlap (the dev/test splits next to a `DATA/vocab` are checked too).
    `lexicon`: training transcripts whose words go to language_model/lexicon.txt (word LMs; the train split
    next to a `DATA/vocab` is read too) so the C++ word search can spell them although the LM text lacks them."""
    config = config or LMBuildConfig()
    t0 = time.perf_counter()
    vocab = Vocab.load(vocab_dir)
    lmplz = find_kenlm_binary("lmplz")
    build_binary = find_kenlm_binary("build_binary") if config.binary != "none" else None
    lines = read_sentences(text_paths)
    held = read_sentences(heldout, ("dev", "test")) + heldout_from_vocab_dir(vocab_dir)
    excl = read_sentences(exclude, ("dev", "test"))
    text = prepare_text(lines, vocab, exclude=excl, heldout=held, oov=config.oov)
    logger.info(
        "LM text: %d lines read, %d kept; dropped %d with characters outside the vocabulary, %d empty, "
        "%d for digits, %d excluded (%d kept after stripping marks)", text.read, len(text.sentences), text.oov,
        text.empty, text.digits, text.excluded, text.stripped,
    )
    if text.stripped:
        logger.info(
            "oov=%s: stripped combining marks the vocabulary lacks from %d sentences and kept them (%s); "
            "--oov drop drops them instead", config.oov, text.stripped,
            ", ".join(f"{char_display(c)} {char_name(c)}: {n}" for c, n in text.stripped_marks.most_common(5)),
        )
    _log_oov_drops(text, config.oov)
    if text.heldout_overlap:
        logger.warning(
            "!!! %d LM sentences are dev/test transcripts (e.g. %r): WER with this LM will be optimistic. "
            "Remove them with --exclude DEV.tsv TEST.tsv (or the prepared dataset directory).",
            text.heldout_overlap, text.overlap_examples[0],
        )
    if not text.read:
        raise LrlError(f"no lines in {', '.join(map(str, text_paths))}: expected text with one sentence a line")
    if not text.sentences:
        raise LrlError(
            f"no LM sentences left ({text.read} read: {text.oov} outside the vocabulary, {text.empty} empty, "
            f"{text.digits} digits, {text.excluded} excluded): is this text in the vocabulary's language and script?"
        )

    out = Path(out)
    lm_dir = out / LM_DIR  # `out` is a fresh staging directory (build_lm): no stale model files in it
    lm_dir.mkdir(parents=True)
    corpus = out / CORPUS_FILE
    lm_lines = [char_tokens(s) for s in text.sentences] if config.unit == "char" else text.sentences
    atomic_write_text(corpus, "\n".join(lm_lines) + "\n")

    words = Counter(w for s in text.sentences for w in s.split())
    if config.unit == "char":  # the LM's tokens; lm_unit() recognises a character LM by them
        unigrams = sorted({t for line in lm_lines for t in line.split()})
    else:
        unigrams = sorted(w for w, n in words.items() if n >= config.min_word_count)

    arpa = out / ARPA_FILE if config.keep_arpa else lm_dir / ARPA_FILE
    log = out / KENLM_LOG
    log.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lmplz-", dir=out) as tmp:  # inside: removed with the staging
        cmd = [lmplz, "-o", str(config.order), "-S", config.memory, "-T", tmp]
        if config.discount_fallback:
            cmd.append("--discount_fallback")
        if config.prune:
            cmd += ["--prune", *map(str, config.prune)]
        tmp_arpa = Path(tmp) / ARPA_FILE
        _run(cmd, corpus, tmp_arpa, "lmplz", log)
        shutil.move(str(tmp_arpa), arpa)
    counts = _arpa_counts(arpa)
    if config.binary != "none":
        model_path = lm_dir / "lm.bin"
        _run([build_binary, config.binary, str(arpa), str(model_path)], None, None, "build_binary", log)
        if not config.keep_arpa:
            arpa.unlink()
    else:
        model_path = arpa
        if arpa.parent != lm_dir:
            shutil.copy2(arpa, lm_dir / ARPA_FILE)
            model_path = lm_dir / ARPA_FILE

    atomic_write_text(lm_dir / UNIGRAMS_FILE, "".join(w + "\n" for w in unigrams))
    lexicon_report = None
    if config.unit == "word":
        lex_text = prepare_text(read_sentences(lexicon) + train_from_vocab_dir(vocab_dir), vocab, oov=config.oov)
        lex_words = sorted({w for s in lex_text.sentences for w in s.split()})
        if lex_words:
            atomic_write_text(lm_dir / LEXICON_FILE, "".join(w + "\n" for w in lex_words))
            new = len(set(lex_words) - set(unigrams))
            lexicon_report = {"sources": [str(p) for p in lexicon], "sentences": len(lex_text.sentences),
                              "words": len(lex_words), "not_in_unigrams": new}
            logger.info("lexicon: %d training words (%d not among the LM's unigrams) -> %s", len(lex_words), new,
                        lm_dir / LEXICON_FILE)
    write_attrs(lm_dir, config.alpha, config.beta, config.unk_score_offset)
    write_alphabet(out, vocab)
    vocab.normalizer.save(out)
    seconds = time.perf_counter() - t0
    report = {
        "sources": [str(p) for p in text_paths],
        "vocab": str(vocab_dir),
        "exclude": [str(p) for p in exclude],
        "config": asdict(config),
        "text": text.summary(),
        "words": {"tokens": sum(words.values()), "types": len(words), "unigrams_written": len(unigrams)},
        "ngrams": counts,
        "lexicon": lexicon_report,
        "model": str(model_path.relative_to(out)),
        "kenlm_log": KENLM_LOG,
        "seconds": round(seconds, 2),
    }
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    logger.info("KenLM %d-gram (%s) with %d unigrams -> %s", config.order, counts, len(unigrams), out)
    return LMBuildResult(out, text, model_path, len(unigrams), counts, seconds)


# -- reading an LM directory -----------------------------------------------------------------------
@dataclass(frozen=True)
class LMFiles:
    """The files of a `language_model/` directory (or a bare .arpa/.bin file)."""

    lm_dir: Path
    model: Path
    unigrams: Path | None  # unigrams.txt; None for a bare file (an ARPA's 1-grams are read instead)
    attrs: dict
    lexicon: Path | None = None  # lexicon.txt (training words for the C++ word search), if the LM has one


def find_lm(path: str | Path) -> LMFiles:
    """Locate the LM given OUT (of `lrl lm build`), a model dir holding `language_model/`, that directory
    itself, or a bare .arpa / .bin file (a .bin needs unigrams.txt beside it for good decoding)."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in (".arpa", ".bin", ".binary"):
            raise LrlError(f"{path}: expected a KenLM .arpa or .bin file, or a directory from `lrl lm build`")
        uni = path.parent / UNIGRAMS_FILE
        attrs_path = path.parent / ATTRS_FILE
        attrs = json.loads(attrs_path.read_text(encoding="utf-8")) if attrs_path.is_file() else {}
        lex = path.parent / LEXICON_FILE
        return LMFiles(path.parent, path, uni if uni.is_file() else None, attrs, lex if lex.is_file() else None)
    lm_dir = path / LM_DIR if (path / LM_DIR).is_dir() else path
    if not lm_dir.is_dir():
        raise LrlError(f"{path}: no such file or directory; expected the output of `lrl lm build`")
    models = [p for p in lm_dir.iterdir() if p.suffix in (".bin", ".binary", ".arpa") and not p.name.startswith(".")]
    if len(models) != 1 or not (lm_dir / UNIGRAMS_FILE).is_file() or not (lm_dir / ATTRS_FILE).is_file():
        found = sorted(p.name for p in lm_dir.iterdir())
        raise LrlError(
            f"{lm_dir} is not a language model directory: expected one .bin/.arpa file, {UNIGRAMS_FILE} and "
            f"{ATTRS_FILE}, found {found}. Build one with `lrl lm build`."
        )
    try:
        attrs = json.loads((lm_dir / ATTRS_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LrlError(f"{lm_dir / ATTRS_FILE} is not valid JSON: {e}") from e
    lex = lm_dir / LEXICON_FILE
    return LMFiles(lm_dir, models[0], lm_dir / UNIGRAMS_FILE, attrs, lex if lex.is_file() else None)


def arpa_unigrams(arpa: str | Path) -> list[str]:
    """The words of an ARPA file's 1-gram section (without <s>, </s>, <unk>)."""
    words, inside = [], False
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] not in SPECIAL_WORDS:
                    words.append(parts[1])
    return words


def read_unigrams(files: LMFiles) -> list[str] | None:
    """The LM's unigram list: unigrams.txt, else an ARPA's 1-grams, else None (pyctcdecode then warns)."""
    if files.unigrams is not None:
        return [w for w in files.unigrams.read_text(encoding="utf-8").splitlines() if w and w not in SPECIAL_WORDS]
    if files.model.suffix == ".arpa":
        return arpa_unigrams(files.model)
    logger.warning("no %s beside %s: decoding without a unigram list is less accurate", UNIGRAMS_FILE, files.model)
    return None


def read_lexicon(files: LMFiles) -> list[str]:
    """The training words of `lexicon.txt` ([] when the LM has none)."""
    if files.lexicon is None:
        return []
    return [w for w in files.lexicon.read_text(encoding="utf-8").splitlines() if w and w not in SPECIAL_WORDS]


def install_lm(lm: str | Path, target_dir: str | Path, vocab: Vocab, alpha: float, beta: float,
               unk_score_offset: float | None = None) -> Path:
    """Copy an LM into `target_dir/language_model/` (with new attrs) and write `target_dir/alphabet.json`,
    so `Wav2Vec2ProcessorWithLM.from_pretrained(target_dir)` and `pipeline` find it. A character LM is copied
    for lrl's own decoding but the processor configs are not marked: pyctcdecode scores words and cannot
    decode it (`Wav2Vec2ProcessorWithLM` would search with '|' as a word). Returns the LM dir."""
    src = find_lm(lm)
    dst = Path(target_dir) / LM_DIR
    if src.lm_dir.resolve() != dst.resolve():
        tmp = Path(target_dir) / f".{LM_DIR}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        shutil.copy2(src.model, tmp / src.model.name)
        unigrams = read_unigrams(src) or []
        atomic_write_text(tmp / UNIGRAMS_FILE, "".join(w + "\n" for w in sorted(set(unigrams))))
        if src.lexicon is not None:
            shutil.copy2(src.lexicon, tmp / LEXICON_FILE)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    unk = src.attrs.get("unk_score_offset", DEFAULT_UNK_SCORE_OFFSET) if unk_score_offset is None else unk_score_offset
    write_attrs(dst, alpha, beta, unk, bool(src.attrs.get("score_boundary", True)))
    write_alphabet(target_dir, vocab)
    if lm_unit(read_unigrams(src)) == "char":
        logger.info("%s is a character LM: installed for lrl's decoder only (Wav2Vec2ProcessorWithLM and "
                    "pipeline decode word LMs; their configs are left unmarked)", src.lm_dir)
    else:
        mark_processor_with_lm(target_dir)
    return dst


def mark_processor_with_lm(model_dir: str | Path) -> bool:
    """Set processor_class = Wav2Vec2ProcessorWithLM in the processor/feature-extractor configs of a model
    dir (if it has them), which is what transformers' `pipeline` looks for before it attaches the LM.
    `Wav2Vec2Processor.from_pretrained` is unaffected; `AutoProcessor` then returns the LM processor."""
    changed = False
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        targets = [data] + [data[k] for k in ("feature_extractor", "audio_processor") if isinstance(data.get(k), dict)]
        for d in targets:
            if d.get("processor_class") != "Wav2Vec2ProcessorWithLM":
                d["processor_class"] = "Wav2Vec2ProcessorWithLM"
                changed = True
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return changed
