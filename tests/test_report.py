"""lrl.report: the error-analysis page of a tiny evaluated run (a random tiny Wav2Vec2 on 3 noise clips, greedy
and with the tiny ARPA LM): one row per scored utterance, the summary's numbers are summary.json's, the coloured
words match jiwer's counts, two runs side by side, check-labels suspects, size; and (slow) the page in Debian's
headless chromium: rows, numbers, sorting and filtering from the URL fragment, no network."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import SENTENCES, TINY_ARPA, noise_split, save_tiny_model

from lrl.core.io import LrlError
from lrl.data.vocab import build_vocab
from lrl.report import ReportConfig, write_report
from lrl.report.align import DEL, INS, SUB, word_ops
from lrl.report.audio import choose_kbps, encode_clip
from lrl.report.collect import find_eval_dir
from lrl.report.html import aligned


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """MODEL/eval-test of a tiny model evaluated with an LM on a 3-clip prepared test split."""
    import datasets

    from lrl.evaluate.scoring import EvaluateConfig, evaluate

    root = tmp_path_factory.mktemp("run")
    vocab = build_vocab(SENTENCES).vocab
    rng = np.random.default_rng(0)
    datasets.DatasetDict({s: noise_split(s, rng) for s in ("dev", "test")}).save_to_disk(str(root / "data"))
    vocab.save(root / "data" / "vocab")
    model = save_tiny_model(root / "model", vocab)
    res = evaluate(model, root / "data", EvaluateConfig(split="test", threads=1, lm_workers=1), lm=TINY_ARPA)
    return res.out_dir


class _Page(HTMLParser):
    """Rows of the utterance table (attributes, and per run cell and line the s/d/i span counts) and the
    summary cells (data-key -> data-value)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.summary: dict[tuple[str, str], str] = {}
        self._cell: dict | None = None
        self._line: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "tr" and cls == "u":
            self.rows.append({"attrs": a, "cells": {}})
        elif tag == "td" and "data-key" in a:
            self.summary[(a["data-run"], a["data-key"])] = a["data-value"]
        elif tag == "td" and self.rows and "data-run" in a:
            self._cell = self.rows[-1]["cells"].setdefault(a["data-run"], {})
        elif tag == "div" and self._cell is not None and cls.startswith("hyp"):
            self._line = cls.split()[1]
            self._cell[self._line] = {SUB: 0, DEL: 0, INS: 0}
        elif tag == "span" and self._line and cls in ("s", "d", "i"):
            self._cell[self._line][cls.upper()] += 1

    def handle_endtag(self, tag):
        if tag == "div":
            self._line = None
        elif tag == "td":
            self._cell = None


def _rows(eval_dir: Path) -> list[list[str]]:
    return [ln.split("\t") for ln in (eval_dir / "utterances.tsv").read_text(encoding="utf-8").splitlines()[1:]]


def test_page_rows_summary_and_coloured_alignment_match_the_run(run, tmp_path):
    import jiwer

    res = write_report([run], tmp_path / "r.html")
    text = res.path.read_text(encoding="utf-8")
    page = _Page(text)
    summary = json.loads((run / "summary.json").read_text())
    assert res.rows == len(page.rows) == summary["n"] == len(SENTENCES)
    for key in ("greedy.wer", "greedy.cer", "lm.wer", "lm.cer"):
        a, b = key.split(".")
        assert float(page.summary[("0", key)]) == summary[a][b]
    assert float(page.summary[("0", "rtf_model")]) == summary["rtf_model"] and int(page.summary[("0", "n")]) == summary["n"]
    assert res.clips == 3 and text.count('src="data:audio/mpeg;base64,') == 3
    by_id = {r[0]: r for r in _rows(run)}
    for row in page.rows:
        _, _, ref, greedy, _, lm, _ = by_id[row["attrs"]["data-id"]]
        for line, hyp in (("g", greedy), ("l", lm)):
            w = jiwer.process_words(ref, hyp)
            assert row["cells"]["0"][line] == {SUB: w.substitutions, DEL: w.deletions, INS: w.insertions}
        assert float(row["attrs"]["data-wg0"]) == pytest.approx(jiwer.wer(ref, greedy), rel=1e-5)  # 6 digits
    assert not re.search(r"(src|href)=\"https?:", text) and "Content-Security-Policy" in text


def test_aligned_words_colour_substitutions_deletions_insertions():
    (ops,) = word_ops(["a b c d"], ["a q c e f"])
    assert [o.kind for o in ops] == ["=", "S", "=", "I", "S"]
    html = aligned(ops)
    assert html.count('class="s"') == 2 and html.count('class="i"') == 1 and 'class="d"' not in html
    (ops,) = word_ops(["x y z"], ["x"])
    assert aligned(ops).count('class="d"') == 2 and ">y<" in aligned(ops)  # deleted reference words, shown struck


def test_two_runs_side_by_side_with_suspects_and_linked_audio(run, tmp_path):
    other = tmp_path / "other" / "eval-test"
    shutil.copytree(run, other)
    rows = _rows(run)
    rows[1][5] = rows[1][5] + " extra"  # run B's LM inserts a word in the second utterance
    (other / "utterances.tsv").write_text("id\tduration\tref\tgreedy\tgreedy_errors\tlm\tlm_errors\n"
                                          + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    sus = tmp_path / "suspects.tsv"
    sus.write_text(f"id\tscore\tkind\n{rows[2][0]}\t7.5\twrong text\n", encoding="utf-8")
    res = write_report([run, other], tmp_path / "cmp.html", ReportConfig(audio="link", suspects=str(sus)))
    page = _Page(res.path.read_text(encoding="utf-8"))
    assert res.runs == 2 and res.rows == len(page.rows) == 3
    flags = {r["attrs"]["data-id"]: r["attrs"]["data-flags"].split() for r in page.rows}
    assert [uid for uid, f in flags.items() if "differ" in f] == [rows[1][0]]
    assert [uid for uid, f in flags.items() if "suspect" in f] == [rows[2][0]]
    b = next(r for r in page.rows if r["attrs"]["data-id"] == rows[1][0])["cells"]["1"]["l"]
    assert b[INS] >= 1
    assert sorted(p.name for p in (tmp_path / "cmp_audio").iterdir()) == sorted(f"{r[0]}.mp3" for r in rows)
    assert 'src="cmp_audio/' in res.path.read_text(encoding="utf-8")


@pytest.mark.parametrize("clip_seconds", [2.9, 10.4])  # the demo's test clips; Common Voice Yoruba's test clips
def test_size_bound_350_utterances_with_embedded_audio(run, tmp_path, clip_seconds):
    """350 embedded clips stay under 10 MB: the clip's data URI at the rate chosen for 350 such clips, plus
    the row's HTML (measured on the tiny run's page without audio), times 350."""
    embed = write_report([run], tmp_path / "a.html")
    bare = write_report([run], tmp_path / "b.html", ReportConfig(audio="none"))
    assert embed.bytes > bare.bytes and bare.clips == 0 and embed.kbps == 24
    kbps = choose_kbps(350 * clip_seconds, "embed")
    noise = (0.1 * np.random.default_rng(0).standard_normal(int(clip_seconds * 16000))).astype(np.float32)
    uri = len("data:audio/mpeg;base64,") + len(base64.b64encode(encode_clip(noise, kbps=kbps)))
    assert uri <= clip_seconds * kbps * 1000 / 8 * 4 / 3 * 1.1 + 1000  # constant bit rate, as chosen
    row_html = max((bare.bytes - 15_000) / bare.rows, 1500)  # a real row's HTML: ~1 kB
    assert 350 * (uri + row_html) + 50_000 < 10e6


def test_cli_report_and_evaluate_write_the_page(run, cli, tmp_path):
    out = cli("report", run, "--out", tmp_path / "x.html", "--audio", "none")
    assert out.exit_code == 0, out.output
    assert "3 utterances, 1 run(s)" in out.output and (tmp_path / "x.html").is_file()
    model, data = run.parent, run.parent.parent / "data"
    out = cli("evaluate", model, data, "--split", "test", "--out", tmp_path / "ev", "--lm", TINY_ARPA)
    assert out.exit_code == 0, out.output
    assert "report: " in out.output and (tmp_path / "ev" / "report.html").is_file()
    out = cli("report", model, "--split", "dev")
    assert out.exit_code == 1 and "lrl evaluate MODEL DATA --split dev" in out.output


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(split=""), "split must be"), (dict(audio="wav"), "audio must be one of"),
     (dict(top_words=0), "top_words must be >= 1")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReportConfig(**kwargs)


def test_missing_run_and_bad_suspects_say_what_to_do(run, tmp_path):
    with pytest.raises(LrlError, match="found eval-test: pass --split"):
        find_eval_dir(run.parent, "dev")
    bad = tmp_path / "s.tsv"
    bad.write_text("id\tprob\nx\t1\n")
    with pytest.raises(LrlError, match="needs the columns id and score"):
        write_report([run], tmp_path / "r.html", ReportConfig(suspects=str(bad)))


# -- the page in a real browser -------------------------------------------------------------------------
def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


# headless, no sandbox (root in CI containers), every host name unresolvable, so nothing could load
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]


def _browse(exe: str, url: str, *extra: str, tmp: Path) -> str:
    p = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}", *extra, url],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page started, from chromium's --log-net-log (the browser's own background
    requests, e.g. its update check, have no initiator: 'not an origin')."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    params = [e["params"] for e in log["events"] if e["type"] == start and "url" in e.get("params", {})]
    return [p["url"] for p in params if p.get("initiator") != "not an origin"
            and not p["url"].startswith(("file:", "data:"))]


@pytest.mark.slow
def test_page_in_headless_chromium(run, tmp_path):
    exe = _chromium()
    res = write_report([run], tmp_path / "r.html")
    url = res.path.resolve().as_uri()
    netlog = tmp_path / "net.json"
    dom = _browse(exe, url, "--dump-dom", f"--log-net-log={netlog}", tmp=tmp_path)
    page = _Page(dom)
    summary = json.loads((run / "summary.json").read_text())
    assert len(page.rows) == summary["n"] == 3
    assert float(page.summary[("0", "lm.wer")]) == summary["lm"]["wer"]
    assert f">{summary['greedy']['wer']:.2%}<" in dom
    assert '<b id="shown">3</b>' in dom and 'data-view="wl0 desc all"' in dom  # the script ran
    # no request left the file: no http(s) URL in the DOM, and the net log holds no request the page made
    # (a control page that fetches an image shows that the log would catch one)
    assert not re.search(r"https?://", dom)
    assert _page_requests(netlog) == []
    control = tmp_path / "control.html"
    control.write_text('<!DOCTYPE html><img src="http://example.invalid/x.png">')
    _browse(exe, control.as_uri(), "--dump-dom", f"--log-net-log={tmp_path / 'control.json'}", tmp=tmp_path)
    assert _page_requests(tmp_path / "control.json") == ["http://example.invalid/x.png"]
    # sorting and filtering from the URL fragment
    durs = {r[0]: float(r[1]) for r in _rows(run)}
    for frag, order in (("#sort=dur", sorted(durs, key=durs.get)),
                        ("#sort=dur&desc=1", sorted(durs, key=durs.get, reverse=True)),
                        ("#sort=id&desc=1", sorted(durs, reverse=True))):
        rows = _Page(_browse(exe, url + frag, "--dump-dom", tmp=tmp_path)).rows
        assert [r["attrs"]["data-id"] for r in rows] == order, frag
    longest = max(durs, key=durs.get)
    dom = _browse(exe, url + f"#sort=dur&q={longest}", "--dump-dom", tmp=tmp_path)
    visible = [r["attrs"]["data-id"] for r in _Page(dom).rows if "hidden" not in r["attrs"]]
    assert visible == [longest] and '<b id="shown">1</b>' in dom
    dom = _browse(exe, url + "#filter=fixed0", "--dump-dom", tmp=tmp_path)
    rows = _Page(dom).rows
    fixed = [r["attrs"]["data-id"] for r in rows if "fixed0" in r["attrs"]["data-flags"].split()]
    assert [r["attrs"]["data-id"] for r in rows if "hidden" not in r["attrs"]] == fixed
    shot = tmp_path / "shot.png"
    _browse(exe, url, f"--screenshot={shot}", "--window-size=1280,1600", tmp=tmp_path)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
