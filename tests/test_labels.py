"""lrl.evaluate.labels (check-labels) and lrl.evaluate.select (select) on cases whose answer is known: log-probs
built to spell a text (`make_logp`: the "audio" says that text), transcripts planted against them."""

from __future__ import annotations

import numpy as np
import pytest
from ctc_helpers import make_logp

from lrl.data.vocab import build_vocab
from lrl.evaluate.labels import (
    SCORES_FILE,
    SUSPECTS_DIR,
    SUSPECTS_FILE,
    CheckLabelsConfig,
    check_clips,
    forced_align,
    write_clean_dataset,
)
from lrl.evaluate.select import Candidate, SelectConfig, choose, uncertainty

SPOKEN = ["the cat sat on the mat", "a bat ate the hat", "the dog ran to me", "we sat in the sun",
          "my hat is on the mat", "the sun is hot today", "a cat and a dog", "to the top of the hill"]


@pytest.fixture
def vocab():
    return build_vocab(SPOKEN).vocab


def _clips(vocab, spoken, transcripts, frames_per_char=3):
    logps = [make_logp(vocab, s, frames_per_char=frames_per_char) for s in spoken]
    durations = [len(lp) * 0.02 for lp in logps]
    return check_clips([f"c{i}" for i in range(len(spoken))], transcripts, durations, logps, vocab,
                       CheckLabelsConfig(flag_fraction=0.25))


@pytest.mark.parametrize("cls, kwargs, match", [
    (CheckLabelsConfig, dict(split=""), "split must be"),
    (CheckLabelsConfig, dict(flag_fraction=0), r"flag_fraction must be in \(0, 1\]"),
    (CheckLabelsConfig, dict(report_top=0), "report_top must be >= 1"),
    (SelectConfig, dict(hours=0), "hours must be > 0"),
    (SelectConfig, dict(max_group_share=1.5), r"max_group_share must be in \(0, 1\]"),
    (SelectConfig, dict(group_by="speaker"), "group_by must be 'folder' or 'none'"),
])
def test_config_validation(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_forced_alignment_gives_each_character_its_frames(vocab):
    text = "the cat"
    logp = make_logp(vocab, text, frames_per_char=2)  # per character: 2 frames of it, 1 blank frame
    path = forced_align(logp, vocab.encode(text))
    assert path.tolist() == [j for i in range(len(text)) for j in (i, i, -1)]
    assert forced_align(logp[:5], vocab.encode(text)) is None  # 7 labels cannot fit in 5 frames


def test_a_swapped_transcript_is_ranked_first_as_wrong_text(vocab):
    transcripts = list(SPOKEN)
    transcripts[3] = SPOKEN[6]  # clip 3 carries clip 6's transcript
    checks = _clips(vocab, SPOKEN, transcripts)
    assert checks[0].id == "c3" and checks[0].kind == "wrong_text" and checks[0].flagged
    assert checks[0].score > 1.0 > max(c.score for c in checks[1:] if c.id != "c3")
    clean = [c for c in checks if c.id != "c3"]
    assert all(abs(c.score) < 1e-3 and c.cer == 0 for c in clean)  # a transcript the model hears scores ~0


def test_a_transcript_longer_than_its_audio_is_flagged_truncated(vocab):
    spoken = list(SPOKEN)
    spoken[2] = "the dog"  # the audio was cut: only the first words remain ...
    transcripts = list(SPOKEN)  # ... but the transcript is the whole sentence
    spoken[5] = "th"  # far too short to hold its transcript at all: no alignment exists
    checks = {c.id: c for c in _clips(vocab, spoken, transcripts)}
    ranked = sorted(checks.values(), key=lambda c: -c.score)
    assert {ranked[0].id, ranked[1].id} == {"c2", "c5"}
    assert checks["c5"].kind == checks["c2"].kind == "truncated"
    assert not np.isfinite(checks["c5"].loss_per_char) and "more frames" in checks["c5"].details
    assert checks["c2"].prefix_cer == 0 and checks["c2"].free == "the dog"  # what the audio holds: the start


def test_extra_and_missing_words(vocab):
    spoken, transcripts = list(SPOKEN), list(SPOKEN)
    transcripts[1] = "a bat ate the red hat".replace("red", "cat")  # a word the audio lacks
    transcripts[4] = "my hat on the mat"  # the audio says "is" too
    checks = {c.id: c for c in _clips(vocab, spoken, transcripts)}
    assert checks["c1"].kind == "extra_words" and checks["c1"].extra_words == 1
    assert checks["c4"].kind == "missing_words" and checks["c4"].missing_words == 1
    assert {c.id for c in checks.values() if c.flagged} == {"c1", "c4"}


def test_check_labels_writes_what_lrl_report_reads_and_a_trainable_clean_dataset(tmp_path, vocab, monkeypatch, cli):
    import datasets

    import lrl.evaluate.inference as inference
    from lrl.data.prepare import load_prepared
    from lrl.evaluate.labels import check_labels
    from lrl.report.collect import read_suspects

    data, model = tmp_path / "data", tmp_path / "model"
    transcripts = list(SPOKEN)
    transcripts[0] = SPOKEN[7]
    rows = {"id": [f"c{i}" for i in range(8)], "audio": [[0.0] * 160] * 8, "text": transcripts,
            "sentence": transcripts, "duration": [1.0] * 8, "speaker": ["s"] * 8}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(data))
    vocab.save(data / "vocab")
    logps = [make_logp(vocab, s, frames_per_char=3) for s in SPOKEN]
    split = inference.SplitLogProbs(rows["id"], transcripts, rows["duration"], logps, 0.0, 0.02)
    monkeypatch.setattr(inference, "check_model", lambda *a: vocab)
    monkeypatch.setattr(inference, "split_log_probs", lambda *a: split)
    r = check_labels(model, data, CheckLabelsConfig(flag_fraction=0.25), write_clean=tmp_path / "clean")
    out = model / SUSPECTS_DIR.format(split="train")
    flagged = read_suspects(out / SUSPECTS_FILE)
    assert list(flagged)[0] == "c0" and flagged["c0"][1] == "wrong_text" and len(flagged) == 2
    assert len((out / SCORES_FILE).read_text().splitlines()) == 9 and "c0" in (out / "report.md").read_text()
    dd, _ = load_prepared(r.clean_dir)
    assert sorted(dd["train"]["id"]) == sorted(set(rows["id"]) - set(flagged))
    assert (r.clean_dir / ".lrl-prepared").is_file()
    with pytest.raises(Exception, match="already exists"):
        write_clean_dataset(data, r.clean_dir, "train", set())
    model.mkdir(exist_ok=True)
    res = cli("data", "check-labels", model, data, "--out", tmp_path / "cl", "--flag-fraction", "0.125")
    assert res.exit_code == 0 and "1 of 8 clips flagged (1 wrong_text)" in res.output, res.output
    assert list(read_suspects(tmp_path / "cl" / SUSPECTS_FILE)) == ["c0"]
    res = cli("data", "check-labels", model, data, "--write-clean", r.clean_dir)
    assert res.exit_code == 1 and "already exists" in res.output


# -- select ----------------------------------------------------------------------------------------
def test_uncertainty_is_low_for_a_peaky_output_and_high_for_a_flat_one(vocab, rng):
    sure = make_logp(vocab, "the cat sat")
    flat = np.log(rng.dirichlet(np.ones(len(vocab)), 30)).astype(np.float32)
    assert uncertainty(sure) < 0.05 < 0.5 < uncertainty(flat) <= 1.0


def test_choose_keeps_the_budget_the_order_and_the_group_cap(rng):
    # group a: the 10 most uncertain clips; b, c, d: less uncertain ones; every clip 300 s
    cands = [Candidate(f"a/{i}.wav", 300.0, 0.9 - 0.01 * i, "a") for i in range(10)]
    cands += [Candidate(f"{g}/{i}.wav", 300.0, 0.5 - 0.01 * i, g) for g in "bcd" for i in range(10)]
    chosen = choose(cands, SelectConfig(hours=1.0, max_group_share=0.25))
    assert sum(c.duration for c in chosen) <= 3600 + 1e-9
    assert [c.score for c in chosen] == sorted((c.score for c in chosen), reverse=True)
    assert chosen[0].path == "a/0.wav" and abs(chosen[-1].cumulative_hours - 1.0) < 1e-9
    by_group = {g: sum(c.duration for c in chosen if c.group == g) for g in "abcd"}
    assert max(by_group.values()) <= 0.25 * 3600 + 1e-9 and by_group["a"] == 900  # 3 of a's 10 clips fit the cap
    uncapped = choose(cands, SelectConfig(hours=1.0, max_group_share=1.0))
    assert [c.group for c in uncapped[:10]] == ["a"] * 10  # without the cap one group fills most of the list


def test_select_cli_on_audio_files(tmp_path, cli, vocab, one_thread, rng):
    import soundfile as sf
    from test_evaluate import save_tiny_model

    model = save_tiny_model(tmp_path / "model", vocab)
    for spk in ("s1", "s2"):
        (tmp_path / "audio" / spk).mkdir(parents=True)
        for i in range(3):
            sf.write(tmp_path / "audio" / spk / f"{i}.wav", 0.1 * rng.standard_normal(16000 * (i + 1)), 16000)
    out = tmp_path / "sel.tsv"
    r = cli("data", "select", model, tmp_path / "audio", "--hours", str(6 / 3600), "--out", out)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0] == "path\tduration\tscore\tcumulative_hours\tgroup"
    rows = [line.split("\t") for line in lines[1:]]
    assert sum(float(x[1]) for x in rows) <= 6.0 + 1e-6 and float(rows[-1][3]) <= 6 / 3600 + 1e-4
    assert [float(x[2]) for x in rows] == sorted((float(x[2]) for x in rows), reverse=True)
