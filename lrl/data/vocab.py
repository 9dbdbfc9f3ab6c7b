"""Character vocabularies for CTC: built from training transcripts only, audited against other text,
saved as Hugging Face `Wav2Vec2CTCTokenizer` files plus the normaliser config and a readable report.

Token ids: 0 = `[PAD]` (the CTC blank), 1 = `[UNK]`, 2 = `|` (word delimiter), then characters in
code-point order, so the same text always gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from lrl.core.constants import SAMPLE_RATE, TEXT_COLUMNS
from lrl.core.io import LrlError, atomic_write_text, read_table, read_text_lines
from lrl.core.text import Normalizer, NormalizerConfig, char_display, char_name, char_script

logger = logging.getLogger(__name__)

PAD = "[PAD]"  # also the CTC blank
UNK = "[UNK]"
WORD_DELIMITER = "|"
SPECIAL_TOKENS = (PAD, UNK, WORD_DELIMITER)
VOCAB_FILE = "vocab.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
REPORT_FILE = "vocab_report.md"
COUNTS_FILE = "char_counts.tsv"

# Columns that hold a transcript in manifests we know (Common Voice first).
RARE_REPORT_BELOW = 5  # characters seen fewer times than this are listed as rare in the report

RarePolicy = Literal["keep", "exclude"]


# -- reading transcripts ------------------------------------------------------------------------------
def read_transcripts(path: str | Path, column: str | None = None) -> list[str]:
    """Sentences from a Common Voice TSV (`sentence` column), a TSV/CSV/JSONL manifest (`column`, or the
    first of TEXT_COLUMNS present) or a plain text file (one sentence per line)."""
    path = Path(path)
    if not path.is_file():
        raise LrlError(f"{path}: no such file")
    if path.suffix.lower() in (".tsv", ".csv", ".jsonl"):
        header, rows = read_table(path)
        col = column or next((c for c in TEXT_COLUMNS if c in header), None)
        if col is None or col not in header:
            want = repr(column) if column else f"one of {list(TEXT_COLUMNS)}"
            raise LrlError(f"{path}: no {want} column; its columns are {header}. Name it with --text-column.")
        return [r[col] for r in rows]
    lines = read_text_lines(path)
    if not any(line.strip() for line in lines):
        raise LrlError(f"{path} is empty")
    return lines


# -- the vocabulary -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """An ordered set of CTC tokens and the normaliser that produced the text they cover."""

    tokens: tuple[str, ...]  # index = token id; starts with SPECIAL_TOKENS
    normalizer: NormalizerConfig = field(default_factory=NormalizerConfig)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"tokens must start with {SPECIAL_TOKENS}, got {self.tokens[:3]}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("tokens must be unique")

    @classmethod
    def from_chars(cls, chars: Iterable[str], normalizer: NormalizerConfig) -> Vocab:
        chars = sorted(set(chars) - {" ", *SPECIAL_TOKENS})
        return cls(tokens=(*SPECIAL_TOKENS, *chars), normalizer=normalizer)

    @property
    def chars(self) -> tuple[str, ...]:
        return self.tokens[len(SPECIAL_TOKENS):]

    @property
    def token_to_id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def oov_chars(self, text: str) -> set[str]:
        """Characters of normalised `text` that have no token (space is the word delimiter)."""
        known = set(self.chars) | {" "}
        return {ch for ch in text if ch not in known}

    def encode(self, text: str) -> list[int]:
        """Ids of normalised `text`: spaces become `|`, unknown characters `[UNK]`."""
        t2i = self.token_to_id
        unk = t2i[UNK]
        return [t2i[WORD_DELIMITER] if ch == " " else t2i.get(ch, unk) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of label ids, one token per id (no CTC collapsing: doubled letters stay doubled)."""
        out = []
        for i in ids:
            tok = self.tokens[int(i)]
            if tok == PAD:
                continue
            out.append(" " if tok == WORD_DELIMITER else tok)
        return "".join(out).strip()

    # -- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write vocab.json, tokenizer_config.json (the `Wav2Vec2CTCTokenizer` files) and normalizer.json
        into `directory`. Written directly, without importing transformers; `AutoTokenizer` loads them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / VOCAB_FILE, json.dumps(self.token_to_id, ensure_ascii=False, indent=1) + "\n")
        atomic_write_text(
            directory / TOKENIZER_CONFIG_FILE,
            json.dumps(self.tokenizer_config(), ensure_ascii=False, indent=2, sort_keys=True) + "\n",
        )
        self.normalizer.save(directory)
        return directory

    def tokenizer_config(self) -> dict:
        """What `Wav2Vec2CTCTokenizer.save_pretrained` writes for these tokens (transformers 4.x and 5.x)."""

        def added(token: str, special: bool) -> dict:
            strip = token in (PAD, UNK)
            return {"content": token, "lstrip": strip, "normalized": False, "rstrip": strip,
                    "single_word": False, "special": special}

        return {
            "added_tokens_decoder": {"0": added(PAD, False), "1": added(UNK, False), "2": added(WORD_DELIMITER, True)},
            "bos_token": None, "eos_token": None, "do_lower_case": False, "pad_token": PAD, "unk_token": UNK,
            "word_delimiter_token": WORD_DELIMITER, "replace_word_delimiter_char": " ", "target_lang": None,
            "tokenizer_class": "Wav2Vec2CTCTokenizer",
        }

    @classmethod
    def load(cls, directory: str | Path) -> Vocab:
        directory = Path(directory)
        path = directory / VOCAB_FILE
        if not path.is_file():
            raise LrlError(f"no {VOCAB_FILE} in {directory}: build one with `lrl vocab build`")
        try:
            t2i = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LrlError(f"{path} is not a valid vocabulary (expected UTF-8 JSON {{token: id}}, found {e}); "
                           "rebuild it with `lrl vocab build`") from e
        ids = list(t2i.values()) if isinstance(t2i, dict) else None
        if ids is None or not all(type(i) is int for i in ids) or sorted(ids) != list(range(len(ids))):
            found = type(t2i).__name__ if ids is None else f"ids {sorted(map(str, ids))[:8]}"
            raise LrlError(f"{path} is not a valid vocabulary (expected {{token: id}} with ids 0..n-1, found "
                           f"{found}); rebuild it with `lrl vocab build`")
        tokens = tuple(t for t, _ in sorted(t2i.items(), key=lambda kv: kv[1]))
        normalizer = NormalizerConfig.load(directory)  # its errors name normalizer.json
        try:
            return cls(tokens=tokens, normalizer=normalizer)
        except ValueError as e:
            raise LrlError(f"{path} is not a valid vocabulary ({e}); rebuild it with `lrl vocab build`") from e

    def to_tokenizer(self):
        """A `Wav2Vec2CTCTokenizer` over these tokens (pad = blank = id 0, no `<s>`/`</s>`)."""
        import tempfile

        from transformers import Wav2Vec2CTCTokenizer

        with tempfile.TemporaryDirectory() as tmp:
            vf = Path(tmp) / VOCAB_FILE
            vf.write_text(json.dumps(self.token_to_id, ensure_ascii=False), encoding="utf-8")
            return Wav2Vec2CTCTokenizer(
                str(vf),
                unk_token=UNK,
                pad_token=PAD,
                word_delimiter_token=WORD_DELIMITER,
                bos_token=None,
                eos_token=None,
                do_lower_case=False,
            )

    def to_processor(self, sampling_rate: int = SAMPLE_RATE):
        """A `Wav2Vec2Processor` (feature extractor + tokenizer) for this vocabulary."""
        from transformers import Wav2Vec2Processor

        from lrl.core.audio import default_feature_extractor

        return Wav2Vec2Processor(feature_extractor=default_feature_extractor(sampling_rate), tokenizer=self.to_tokenizer())


# -- building ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VocabBuildConfig:
    min_count: int = 1  # characters seen fewer times than this are "rare"
    rare: RarePolicy = "exclude"  # rare characters: keep them as tokens, or exclude (-> [UNK] / dropped in data)
    script: str | None = None  # expected script ("Latin"); None = the script of most letters
    alphabet: tuple[str, ...] | None = None  # a curated alphabet: only these characters become tokens

    def __post_init__(self) -> None:
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.rare not in get_args(RarePolicy):
            raise ValueError(f"rare must be one of {list(get_args(RarePolicy))}, got {self.rare!r}")


@dataclass
class CharStats:
    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: defaultdict(list))
    sentences: int = 0
    empty: int = 0
    dropped_digits: int = 0


def normalize_lines(lines: Iterable[str], normalizer: Normalizer, counts: Counter) -> Iterator[str]:
    """The non-empty normalised `lines`; `counts` gets "read", "digits" (dropped by the normaliser's digit
    policy) and "empty" (nothing left after normalising)."""
    for raw in lines:
        counts["read"] += 1
        text = normalizer(raw)
        if text is None:
            counts["digits"] += 1
        elif not text:
            counts["empty"] += 1
        else:
            yield text


def count_chars(sentences: Iterable[str], normalizer: Normalizer, n_examples: int = 3) -> CharStats:
    stats = CharStats()
    seen: Counter = Counter()
    for text in normalize_lines(sentences, normalizer, seen):
        for word in text.split(" "):
            for ch in set(word):
                ex = stats.examples[ch]
                if len(ex) < n_examples and word not in ex:
                    ex.append(word)
        stats.counts.update(text.replace(" ", ""))
    stats.sentences, stats.dropped_digits, stats.empty = seen["read"], seen["digits"], seen["empty"]
    return stats


def majority_script(counts: Counter) -> str:
    by_script: Counter = Counter()
    for ch, n in counts.items():
        s = char_script(ch)
        if s not in ("Common", "Inherited"):
            by_script[s] += n
    return by_script.most_common(1)[0][0] if by_script else "Common"


@dataclass
class VocabBuildResult:
    vocab: Vocab
    stats: CharStats
    script: str
    rare: list[str]  # below min_count
    foreign: list[str]  # letters of another script than expected
    outside_alphabet: list[str]  # in the data but not in the curated alphabet
    excluded: list[str]  # not made tokens


def build_vocab(
    sentences: Iterable[str],
    normalizer: NormalizerConfig | None = None,
    config: VocabBuildConfig | None = None,
) -> VocabBuildResult:
    """Count characters of normalised `sentences` (the training split only) and choose the tokens."""
    normalizer = normalizer or NormalizerConfig()
    config = config or VocabBuildConfig()
    stats = count_chars(sentences, Normalizer(normalizer))
    if not stats.counts:
        raise LrlError(
            f"no characters left after normalisation ({stats.sentences} sentences read, {stats.empty} empty, "
            f"{stats.dropped_digits} dropped for digits): check the input file and --text-column"
        )
    script = config.script or majority_script(stats.counts)
    rare = sorted(ch for ch, n in stats.counts.items() if n < config.min_count)
    foreign = sorted(
        ch for ch in stats.counts if char_script(ch) not in ("Common", "Inherited", script.title())
    )
    outside: list[str] = []
    chars = set(stats.counts)
    if config.alphabet is not None:
        alpha = {unicodedata.normalize(normalizer.unicode_form, a) for a in config.alphabet}
        outside = sorted(chars - alpha)
        chars = alpha - {" "}
    excluded = sorted(set(outside) | (set(rare) if config.rare == "exclude" else set()))
    chars -= set(excluded)
    if stats.empty:
        logger.warning("%d of %d transcripts are empty after normalisation", stats.empty, stats.sentences)
    if foreign:
        logger.warning("characters from outside the %s script: %s", script, " ".join(map(char_display, foreign)))
    return VocabBuildResult(
        vocab=Vocab.from_chars(chars, normalizer),
        stats=stats,
        script=script,
        rare=rare,
        foreign=foreign,
        outside_alphabet=outside,
        excluded=excluded,
    )


def write_report(result: VocabBuildResult, directory: str | Path, sources: Sequence[str] = ()) -> Path:
    """Write `vocab_report.md` and `char_counts.tsv`: each character with count, name, script, examples."""
    directory = Path(directory)
    st = result.stats
    total = sum(st.counts.values())
    flags = {ch: [] for ch in st.counts}
    for ch in result.rare:
        flags[ch].append("rare")
    for ch in result.foreign:
        flags[ch].append(f"not {result.script}")
    for ch in result.outside_alphabet:
        flags[ch].append("outside alphabet")
    for ch in result.excluded:
        flags[ch].append("EXCLUDED")
    for ch, n in st.counts.items():
        if n < RARE_REPORT_BELOW and "rare" not in flags[ch]:
            flags[ch].append("few")

    order = sorted(st.counts, key=lambda c: (-st.counts[c], c))
    tsv = ["char\tcodepoint\tcount\tshare\tname\tscript\tin_vocab\tflags\texamples"]
    md = [
        "# Vocabulary report",
        "",
        f"- sources: {', '.join(sources) if sources else '(in memory)'}",
        f"- sentences: {st.sentences} (empty after normalisation: {st.empty}, dropped for digits: {st.dropped_digits})",
        f"- characters: {total} ({len(st.counts)} distinct); tokens: {len(result.vocab)} "
        f"({len(result.vocab.chars)} characters + {', '.join(SPECIAL_TOKENS)})",
        f"- expected script: {result.script}",
        f"- normaliser: `{json.dumps(result.vocab.normalizer.to_dict(), ensure_ascii=False, sort_keys=True)}`",
    ]
    if result.excluded:
        md.append(f"- excluded from the vocabulary: {' '.join(char_display(c) for c in result.excluded)}")
    if result.foreign:
        md.append(f"- **from another script**: {' '.join(char_display(c) for c in result.foreign)}")
    md += ["", "| char | code point | count | share | name | script | flags | examples |", "|---|---|---:|---:|---|---|---|---|"]
    in_vocab = set(result.vocab.chars)
    for ch in order:
        n = st.counts[ch]
        ex = st.examples.get(ch, [])
        row = [char_display(ch), f"U+{ord(ch):04X}", str(n), f"{n / total:.4%}", char_name(ch), char_script(ch)]
        md.append("| " + " | ".join(row + [", ".join(flags[ch]), " ".join(ex)]) + " |")
        tsv.append("\t".join(row + ["yes" if ch in in_vocab else "no", ",".join(flags[ch]), " ".join(ex)]))
    atomic_write_text(directory / COUNTS_FILE, "\n".join(tsv) + "\n")
    path = directory / REPORT_FILE
    atomic_write_text(path, "\n".join(md) + "\n")
    return path


# -- auditing --------------------------------------------------------------------------------------
@dataclass
class AuditResult:
    sentences: int
    chars: int
    oov_chars: Counter
    oov_sentences: int
    examples: dict  # char -> example sentences
    empty: int

    @property
    def oov_rate(self) -> float:
        return sum(self.oov_chars.values()) / self.chars if self.chars else 0.0

    @property
    def coverage(self) -> float:
        return 1.0 - self.oov_rate


def audit(vocab: Vocab, sentences: Iterable[str], n_examples: int = 3) -> AuditResult:
    """Coverage of `vocab` over other text, normalised with the vocabulary's own normaliser."""
    norm = Normalizer(vocab.normalizer)
    known = set(vocab.chars)
    res = AuditResult(0, 0, Counter(), 0, defaultdict(list), 0)
    for raw in sentences:
        res.sentences += 1
        text = norm(raw)
        if not text:
            res.empty += 1
            continue
        letters = text.replace(" ", "")
        res.chars += len(letters)
        oov = [ch for ch in letters if ch not in known]
        if oov:
            res.oov_sentences += 1
            res.oov_chars.update(oov)
            for ch in set(oov):
                if len(res.examples[ch]) < n_examples:
                    res.examples[ch].append(text)
    return res


def format_audit(res: AuditResult, name: str) -> str:
    lines = [
        f"{name}: {res.sentences} sentences, {res.chars} characters, coverage {res.coverage:.4%} "
        f"(OOV rate {res.oov_rate:.4%}; {res.oov_sentences} sentences hold an OOV character)"
    ]
    for ch, n in res.oov_chars.most_common():
        lines.append(f"  {char_display(ch)}  U+{ord(ch):04X} {char_name(ch)} x{n}: " + " / ".join(res.examples[ch]))
    return "\n".join(lines)
