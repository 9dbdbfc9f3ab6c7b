"""Text normalisation: the one normaliser shared by vocab, data prep, LM text and evaluation.

A `NormalizerConfig` is frozen, saved as `normalizer.json` beside every artefact that depends on it,
and loaded back from there, so every stage turns raw sentences into model text the same way.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, get_args

NORMALIZER_FILE = "normalizer.json"

# Characters typed for an apostrophe or a glottal mark. Folded to one (`NormalizerConfig.apostrophe`) so
# "don’t", "don't" and "donʼt" become one word. U+02BC/U+02BB are letters in several orthographies
# (Hawaiian ʻokina, Nêhiyawêwin, Ukrainian) and are folded too unless you put them in `keep`.
APOSTROPHES = "'\u2019\u2018\u02bc\u02bb\u0060\u00b4\u2032\uff07\u055a"

# Format characters (Unicode category Cf: BOM, soft hyphen, zero-width space/joiners, bidi marks and
# overrides such as U+200F/U+202E) carry no sound: they are dropped, or they would become vocabulary tokens
# that no audio can predict. A language whose spelling needs one keeps it: `NormalizerConfig.keep_format`,
# by default the language's entry here (Persian and Dari write ZWNJ inside words, Sinhala ZWJ in conjuncts).
KEEP_FORMAT_BY_LANGUAGE = {"fa": "\u200c", "prs": "\u200c", "si": "\u200d"}

# Languages whose lowercasing differs from Unicode's default: I -> ı and İ -> i.
_DOTLESS_I_LANGUAGES = {"tr", "az", "crh", "gag", "kaa", "tt"}

UnicodeForm = Literal["NFC", "NFKC", "NFD", "NFKD"]
DigitPolicy = Literal["keep", "drop", "error"]


class DigitsInText(ValueError):
    """A sentence holds digits and the policy is `digits="error"`."""


@dataclass(frozen=True)
class NormalizerConfig:
    """How raw sentences become model text. Every field is saved in `normalizer.json`."""

    unicode_form: UnicodeForm = "NFC"  # canonical form; NFKC also folds compatibility forms (ﬁ -> fi)
    lowercase: bool = True  # lowercase with the rules of `language`
    language: str | None = None  # ISO 639 code; decides Turkish/Azeri dotted/dotless i
    remove_punctuation: bool = True  # Unicode categories P* and S* become spaces, except `keep`
    keep: str = "'"  # punctuation/symbol characters that are letters here (apostrophe, hyphen...)
    fold_apostrophes: bool = True  # map every character of APOSTROPHES to `apostrophe`
    apostrophe: str = "'"  # the one apostrophe kept after folding
    digits: DigitPolicy = "keep"  # keep digits / drop the utterance / raise DigitsInText
    keep_format: str | None = None  # format characters (Cf) kept; None: KEEP_FORMAT_BY_LANGUAGE[language]; "": none

    def __post_init__(self) -> None:
        if self.unicode_form not in get_args(UnicodeForm):
            raise ValueError(f"unicode_form must be one of {list(get_args(UnicodeForm))}, got {self.unicode_form!r}")
        if self.digits not in get_args(DigitPolicy):
            raise ValueError(f"digits must be one of {list(get_args(DigitPolicy))}, got {self.digits!r}")
        if len(self.apostrophe) != 1:
            raise ValueError(f"apostrophe must be one character, got {self.apostrophe!r}")
        if self.keep_format and any(unicodedata.category(ch) != "Cf" for ch in self.keep_format):
            raise ValueError(f"keep_format must hold only format characters (Unicode Cf, e.g. '\\u200c'), "
                             f"got {self.keep_format!r}")
        if self.language is not None and not self.language.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"language must be an ISO 639 code such as 'yo' or 'tr', got {self.language!r}")

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NormalizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown normaliser fields {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write `normalizer.json` into `directory` atomically; returns its path."""
        from lrl.core.io import atomic_write_text

        path = Path(directory) / NORMALIZER_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> NormalizerConfig:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / NORMALIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no normaliser config at {path}: build a vocabulary first (`lrl vocab build`), "
                "which writes normalizer.json beside the tokenizer"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not valid UTF-8 JSON ({e}); rebuild it with `lrl vocab build`") from e
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of normaliser fields, found {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e


class Normalizer:
    """Applies a `NormalizerConfig`. `normalize(text)` returns the model text, or None when the
    utterance is to be dropped (digits with `digits="drop"`)."""

    def __init__(self, config: NormalizerConfig | None = None):
        self.config = config or NormalizerConfig()
        c = self.config
        self._fold = str.maketrans({a: c.apostrophe for a in APOSTROPHES if a != c.apostrophe}) if c.fold_apostrophes else {}
        self._keep = set(c.keep)
        lang = (c.language or "").split("-")[0].split("_")[0].lower()
        self._dotless = lang in _DOTLESS_I_LANGUAGES
        self._keep_format = set(KEEP_FORMAT_BY_LANGUAGE.get(lang, "") if c.keep_format is None else c.keep_format)

    def __call__(self, text: str) -> str | None:
        return self.normalize(text)

    def normalize(self, text: str) -> str | None:
        c = self.config
        # Compose first: NFD input then looks like NFC input to every later step.
        text = unicodedata.normalize("NFC" if c.unicode_form in ("NFC", "NFD") else "NFKC", text)
        if c.fold_apostrophes:
            text = text.translate(self._fold)
        if c.lowercase:
            text = self._lower(text)
        if any(unicodedata.category(ch) == "Nd" for ch in text):
            if c.digits == "drop":
                return None
            if c.digits == "error":
                raise DigitsInText(
                    f"digits in {text!r}: spell numbers out in the transcripts, or set digits='keep' or 'drop'"
                )
        out = []
        for ch in text:
            cat = unicodedata.category(ch)
            if ch in self._keep:
                out.append(ch)
            elif cat[0] == "Z" or cat == "Cc":  # separators, tabs, newlines
                out.append(" ")
            elif c.remove_punctuation and cat[0] in "PS":
                out.append(" ")
            elif cat == "Cf" and ch not in self._keep_format:
                continue
            else:
                out.append(ch)
        text = " ".join("".join(out).split())
        return unicodedata.normalize(c.unicode_form, text)

    def _lower(self, text: str) -> str:
        if self._dotless:
            text = text.replace("I", "ı").replace("İ", "i")
        # str.lower may decompose (İ -> i + U+0307): recompose.
        return unicodedata.normalize("NFC", text.lower())


def char_display(ch: str) -> str:
    """A printable form of one character: combining marks on a dotted circle, spaces named."""
    if ch == " ":
        return "␠"
    if unicodedata.combining(ch):
        return "\u25cc" + ch
    cat = unicodedata.category(ch)
    if cat[0] in "CZ":
        return f"U+{ord(ch):04X}"
    return ch


def char_name(ch: str) -> str:
    return unicodedata.name(ch, f"U+{ord(ch):04X}")


_SCRIPT_WORDS = (
    "LATIN", "GREEK", "CYRILLIC", "ARMENIAN", "HEBREW", "ARABIC", "SYRIAC", "THAANA", "NKO", "DEVANAGARI",
    "BENGALI", "GURMUKHI", "GUJARATI", "ORIYA", "TAMIL", "TELUGU", "KANNADA", "MALAYALAM", "SINHALA", "THAI",
    "LAO", "TIBETAN", "MYANMAR", "GEORGIAN", "HANGUL", "ETHIOPIC", "CHEROKEE", "CANADIAN", "OGHAM", "RUNIC",
    "KHMER", "MONGOLIAN", "HIRAGANA", "KATAKANA", "BOPOMOFO", "CJK", "TIFINAGH", "VAI", "ADLAM", "OL CHIKI",
)


def char_script(ch: str) -> str:
    """The script of a character, from its Unicode name: 'Latin', 'Arabic', ..., 'Inherited' for
    combining marks, 'Common' for digits, punctuation and symbols. Python's unicodedata has no
    Script property; the name's first word is right for the letters of every script listed above."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return "Inherited"
    if unicodedata.category(ch)[0] not in "L":
        return "Common"
    name = unicodedata.name(ch, "")
    for word in _SCRIPT_WORDS:
        if name.startswith(word):
            return "Han" if word == "CJK" else word.title()
    if name.startswith("MODIFIER LETTER"):
        return "Common"
    return name.split(" ")[0].title() if name else "Unknown"
