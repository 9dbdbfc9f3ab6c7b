import unicodedata

import pytest

from lrl.core.io import LrlError
from lrl.core.text import NormalizerConfig
from lrl.data.vocab import (
    PAD,
    UNK,
    WORD_DELIMITER,
    Vocab,
    VocabBuildConfig,
    audit,
    build_vocab,
    read_transcripts,
)

VOCAB_FILES = ("vocab.json", "tokenizer_config.json", "normalizer.json")


def write_cv_tsv(path, sentences):
    rows = ["client_id\tpath\tsentence\tup_votes\tdown_votes"]
    rows += [f"spk{i % 2}\tclip{i}.mp3\t{s}\t2\t0" for i, s in enumerate(sentences)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_special_tokens_and_ordering():
    v = build_vocab(["Bab a", "cab"]).vocab
    assert v.tokens[:3] == (PAD, UNK, WORD_DELIMITER)
    assert v.chars == ("a", "b", "c")
    tok = v.to_tokenizer()
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.word_delimiter_token_id == 2
    assert len(tok) == len(v)  # no stray <s>/</s>
    assert "<s>" not in tok.get_vocab() and "</s>" not in tok.get_vocab()


@pytest.mark.parametrize("text", ["carry aa", "ọmọ ìlú", "a b  c", "bẹ́ẹ̀ ni ọ̀rọ̀"])
def test_round_trip_text_ids_text(text):
    from lrl.core.text import Normalizer

    norm = NormalizerConfig()
    v = build_vocab([text], norm).vocab
    model_text = Normalizer(norm)(text)
    ids = v.encode(model_text)
    assert v.decode(ids) == model_text
    tok = v.to_tokenizer()
    assert tok(model_text).input_ids == ids
    assert tok.decode(ids, group_tokens=False) == model_text


def test_rare_policy_and_alphabet():
    sents = ["aaa bbb", "aab", "q"]
    res = build_vocab(sents, config=VocabBuildConfig(min_count=2, rare="exclude"))
    assert res.rare == ["q"] and "q" not in res.vocab.chars
    res = build_vocab(sents, config=VocabBuildConfig(min_count=2, rare="keep"))
    assert "q" in res.vocab.chars
    res = build_vocab(sents, config=VocabBuildConfig(alphabet=("a", "b", "c")))
    assert res.outside_alphabet == ["q"]
    assert res.vocab.chars == ("a", "b", "c")


def test_foreign_script_is_flagged():
    res = build_vocab(["ọmọ ilé", "ilί"])  # Greek iota with tonos, typed for í
    assert res.script == "Latin"
    assert res.foreign == ["ί"]


def test_save_load_and_processor(tmp_path):
    v = build_vocab(["ẹ̀kọ́ ni"], NormalizerConfig(language="yo")).vocab
    v.save(tmp_path)
    assert Vocab.load(tmp_path) == v
    from transformers import AutoTokenizer, Wav2Vec2Processor

    assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(v)
    v.to_processor().save_pretrained(tmp_path / "proc")
    proc = Wav2Vec2Processor.from_pretrained(tmp_path / "proc")
    assert proc.tokenizer.pad_token_id == 0


def test_audit_counts_oov():
    v = build_vocab(["abc abc"]).vocab
    res = audit(v, ["abd", "ABC", ""])
    assert res.sentences == 3 and res.empty == 1
    assert res.chars == 6 and res.oov_chars == {"d": 1}
    assert res.oov_rate == pytest.approx(1 / 6)


# -- bad input ---------------------------------------------------------------------------------
def test_tsv_without_sentence_column(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text("path\tfoo\na.mp3\tbar\n")
    with pytest.raises(LrlError, match="no one of .*sentence.* column.*--text-column"):
        read_transcripts(p)


def test_empty_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("\n\n")
    with pytest.raises(LrlError, match="empty"):
        read_transcripts(p)


def test_non_utf8(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes(b"ok line\n" + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(LrlError, match="not UTF-8.*line 2.*iconv"):
        read_transcripts(p)


def test_all_empty_transcripts(tmp_path):
    with pytest.raises(LrlError, match="no characters left"):
        build_vocab(["", " ... ", "!!"])


def test_cli_errors_are_one_line(tmp_path, cli):
    bad = tmp_path / "bad.tsv"
    bad.write_text("path\tfoo\na.mp3\tbar\n")
    r = cli("vocab", "build", bad, "--out", tmp_path / "v")
    assert r.exit_code == 1
    assert "error:" in r.output and "Traceback" not in r.output


def test_cli_build_and_audit(tmp_path, cli):
    tsv = write_cv_tsv(tmp_path / "train.tsv", ["Ọmọ náà", "Ìlú wa", "ọ̀rọ̀ ''"])
    r = cli("vocab", "build", tsv, "--out", tmp_path / "v")
    assert r.exit_code == 0, r.output
    assert all((tmp_path / "v" / f).is_file() for f in VOCAB_FILES)
    report = (tmp_path / "v" / "vocab_report.md").read_text()
    assert "◌̀" in report and "COMBINING GRAVE ACCENT" in report
    other = write_cv_tsv(tmp_path / "dev.tsv", ["ọmọ kẹ́"])
    r = cli("vocab", "audit", tmp_path / "v", other)
    assert r.exit_code == 0 and "coverage" in r.output and "LATIN SMALL LETTER K" in r.output


# -- real Yoruba -----------------------------------------------------------------------------------
def test_yoruba_vocab_covers_dev_and_test(yo_cv, tmp_path, cli):
    r = cli("vocab", "build", yo_cv / "train.tsv", "--out", tmp_path / "v")
    assert r.exit_code == 0, r.output
    v = Vocab.load(tmp_path / "v")
    for split in ("dev", "test"):
        res = audit(v, read_transcripts(yo_cv / f"{split}.tsv"))
        assert res.coverage >= 0.999, (split, res.oov_chars)
    report = (tmp_path / "v" / "vocab_report.md").read_text()
    assert "| ọ | U+1ECD |" in report and "LATIN SMALL LETTER O WITH DOT BELOW" in report


def test_yoruba_nfd_transcripts_give_byte_identical_vocab(yo_cv, tmp_path, cli):
    raw = (yo_cv / "train.tsv").read_text(encoding="utf-8")
    nfd = tmp_path / "train_nfd.tsv"
    nfd.write_text(unicodedata.normalize("NFD", raw), encoding="utf-8")
    assert nfd.read_bytes() != raw.encode()
    cli("vocab", "build", yo_cv / "train.tsv", "--out", tmp_path / "a")
    cli("vocab", "build", nfd, "--out", tmp_path / "b")
    for f in VOCAB_FILES:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_saved_tokenizer_files_load_as_the_hf_tokenizer_would_write_them(tmp_path):
    from transformers import AutoTokenizer

    v = build_vocab(["ọmọ ìlú", "carry aa"]).vocab
    v.save(tmp_path / "ours")
    v.to_tokenizer().save_pretrained(tmp_path / "hf")
    ours, hf = AutoTokenizer.from_pretrained(tmp_path / "ours"), AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(ours) is type(hf) and ours.get_vocab() == hf.get_vocab()
    for name in ("pad_token_id", "unk_token_id", "word_delimiter_token_id", "bos_token", "eos_token", "do_lower_case"):
        assert getattr(ours, name) == getattr(hf, name), name
    text = "ọmọ carry aa"
    assert ours(text).input_ids == hf(text).input_ids == v.encode(text)
    assert ours.decode(v.encode(text), group_tokens=False) == text
    assert ours.batch_decode([[5, 5, 0, 5]]) == hf.batch_decode([[5, 5, 0, 5]])


def test_vocab_build_does_not_import_transformers(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from lrl.data.vocab import build_vocab; build_vocab(['ab c']).vocab.save(sys.argv[1]); "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
