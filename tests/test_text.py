import json
import unicodedata

import pytest

from lrl.core.text import APOSTROPHES, DigitsInText, Normalizer, NormalizerConfig, char_display, char_script


def norm(text, **kw):
    return Normalizer(NormalizerConfig(**kw))(text)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Hello,  World!", "hello world"),
        ("  tabs\tand\nnewlines  ", "tabs and newlines"),
        ("end.Start", "end start"),  # punctuation splits words rather than gluing them
        ("«quoted» — “text”", "quoted text"),
        ("self-esteem", "self esteem"),
        ("a|b", "a b"),  # the word delimiter can never appear inside model text
        ("zero\u200bwidth\ufeff", "zerowidth"),
    ],
)
def test_punctuation_and_whitespace(raw, expected):
    assert norm(raw) == expected


def test_apostrophe_lookalikes_fold_to_one():
    variants = [f"don{a}t" for a in APOSTROPHES]
    assert {norm(v) for v in variants} == {"don't"}


def test_keep_list_keeps_hyphen_when_asked():
    assert norm("self-esteem", keep="'-") == "self-esteem"
    assert norm("l'homme", keep="") == "l homme"


@pytest.mark.parametrize(
    "text",
    ["Ọjọ́ ìbí mi ni òní", "ẹ̀kọ́ àti ìlú Ṣàngó", "Çà et là, naïve café", "İstanbul'da ılık"],
)
def test_nfc_and_nfd_input_give_identical_output(text):
    nfc = unicodedata.normalize("NFC", text)
    nfd = unicodedata.normalize("NFD", text)
    assert nfc != nfd or text.isascii()
    for form in ("NFC", "NFKC", "NFD"):
        a, b = norm(nfc, unicode_form=form), norm(nfd, unicode_form=form)
        assert a == b
        assert unicodedata.is_normalized(form if form != "NFKC" else "NFKC", a)


def test_combining_tone_marks_are_preserved():
    out = norm("Ẹ̀KỌ́")  # capital E dot below + grave, capital O dot below + acute
    assert out == unicodedata.normalize("NFC", "ẹ̀kọ́")
    assert "\u0300" in out  # ẹ̀ has no precomposed form: the grave stays a combining mark
    assert len(norm("Ẹ̀KỌ́", unicode_form="NFD")) == 7


def test_turkish_and_azeri_lowercase_dotted_and_dotless_i():
    assert norm("IŞIK İSTANBUL", language="tr") == "ışık istanbul"
    assert norm("İLİN", language="az") == "ilin"
    # Elsewhere Unicode's default applies: I -> i, and İ keeps its dot as a combining mark.
    assert norm("IŞIK", language="en") == "işik"
    assert norm("İ", language=None) == "i\u0307"


def test_nfkc_folds_compatibility_forms():
    assert norm("ﬁne ２", unicode_form="NFKC") == "fine 2"
    assert norm("ﬁne", unicode_form="NFC") == "ﬁne"


def test_digit_policy():
    assert norm("room 101") == "room 101"
    assert norm("room 101", digits="drop") is None
    with pytest.raises(DigitsInText, match="spell numbers out"):
        norm("room 101", digits="error")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"unicode_form": "NFX"}, "unicode_form"),
        ({"digits": "maybe"}, "digits"),
        ({"apostrophe": "''"}, "apostrophe"),
        ({"language": "t r!"}, "language"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormalizerConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    cfg = NormalizerConfig(unicode_form="NFKC", language="tr", keep="'-", digits="drop")
    path = cfg.save(tmp_path)
    assert json.loads(path.read_text())["language"] == "tr"
    assert NormalizerConfig.load(tmp_path) == cfg
    with pytest.raises(ValueError, match="unknown normaliser fields"):
        NormalizerConfig.from_dict({"lower": True})
    with pytest.raises(FileNotFoundError, match="lrl vocab build"):
        NormalizerConfig.load(tmp_path / "nowhere")


def test_char_helpers():
    assert char_display("\u0301") == "\u25cc\u0301"
    assert char_script("ẹ") == "Latin"
    assert char_script("\u0301") == "Inherited"
    assert char_script("ί") == "Greek"
    assert char_script("ا") == "Arabic"
    assert char_script("'") == "Common"
