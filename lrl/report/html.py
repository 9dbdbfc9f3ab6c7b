"""Rendering the report page: the summary with provenance, the run's pictures (training curves, the
alpha/beta heatmap) as data URIs, WER by utterance length and by speaker, the character confusions and
word errors with example utterances, and the utterance table with aligned hypotheses (several runs side
by side). Every number the tests and scripts read carries its exact value in a data- attribute.
"""

from __future__ import annotations

import base64
from collections import Counter
from html import escape
from pathlib import Path

from lrl.report.align import (
    DEL,
    EQUAL,
    INS,
    SUB,
    bin_order,
    char_confusions,
    errors,
    length_bin,
    ref_words,
    wer_by,
    word_confusions,
)
from lrl.report.charts import bar_chart, confusion_heatmap
from lrl.report.page import CSS, JS, csp

_KIND_NAME = {SUB: "substitution", DEL: "deletion", INS: "insertion"}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _num(key: str, run: int, value, shown: str) -> str:
    v = "" if value is None else repr(value)
    return f'<td class="num" data-run="{run}" data-key="{key}" data-value="{escape(v)}">{shown}</td>'


def _png(path: Path | None, caption: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _summary(views, config) -> str:
    head = ("<tr><th>run</th><th>split</th><th>scored</th><th>not scored</th><th>greedy WER</th><th>greedy CER</th>"
            "<th>LM WER</th><th>LM CER</th><th>RTF model</th><th>RTF greedy</th><th>RTF LM</th></tr>")
    rows, provs = [], []
    for k, v in enumerate(views):
        s = v.run.summary
        g, lm = s.get("greedy") or {}, s.get("lm") or {}
        ns = sum((s.get("not_scored") or {}).values())
        rows.append(
            f"<tr><td>{escape(v.run.name)}</td><td>{escape(v.run.split)}</td>" + _num("n", k, s.get("n"), str(s.get("n")))
            + _num("not_scored", k, ns, str(ns)) + _num("greedy.wer", k, g.get("wer"), _pct(g.get("wer")))
            + _num("greedy.cer", k, g.get("cer"), _pct(g.get("cer"))) + _num("lm.wer", k, lm.get("wer"), _pct(lm.get("wer")))
            + _num("lm.cer", k, lm.get("cer"), _pct(lm.get("cer")))
            + "".join(_num(key, k, s.get(key), "–" if s.get(key) is None else f"{s[key]:.3g}")
                      for key in ("rtf_model", "rtf_greedy", "rtf_lm")) + "</tr>")
        items = "".join(f"<dt>{escape(a)}</dt><dd>{escape(b)}</dd>" for a, b in v.run.provenance.items())
        provs.append(f"<h3>{escape(v.run.name)}</h3><dl class=prov>{items}</dl>")
    return (f'<h2 id="summary">Summary</h2><table class="summary">{head}{"".join(rows)}</table>'
            "<p class=muted>WER/CER over every scored utterance (jiwer); RTF = seconds of compute per second of audio."
            "</p>" + "".join(provs))


def _figures(views) -> str:
    figs = []
    for v in views:
        figs.append(_png(v.run.curves_png, f"{v.run.name}: training curves (train loss, dev WER/CER)"))
        figs.append(_png(v.run.heatmap_png, f"{v.run.name}: LM alpha/beta tuning (dev WER)"))
    body = "".join(f for f in figs if f)
    return '<h2 id="training">Training and LM tuning</h2>' + (
        f'<div class="figs">{body}</div>' if body else "<p class=muted>No training_curves.png or tune-*/heatmap.png "
        "beside the model.</p>")


def _series(views, keys_of) -> tuple[list[str], dict[str, list[float]], list[int]]:
    """Groups, WER series per run and decoding, utterance counts of the first run, for keys_of(run) -> keys."""
    tables = {}
    counts: Counter = Counter()
    for i, v in enumerate(views):
        keys = keys_of(v.run)
        ids = [u.id for u in v.run.utterances]
        prefix = f"{v.run.name} " if len(views) > 1 else ""
        for dec, ops in (("greedy", v.greedy), ("LM", v.lm)):
            if ops is not None:
                tables[prefix + dec] = wer_by(keys, [ops[u] for u in ids])
        if i == 0:
            counts.update(keys)
    return list(counts), tables, [counts[k] for k in counts]


def _charts(views, config) -> str:
    groups, tables, _ = _series(views, lambda r: [length_bin(u.duration) for u in r.utterances])
    order = [b for b in bin_order() if b in groups]
    by_len = bar_chart(order, {n: [t.get(b, (0.0, 0))[0] for b in order] for n, t in tables.items()},
                       [tables[next(iter(tables))][b][1] for b in order], title="WER by utterance length")
    spk_groups, spk_tables, spk_counts = _series(views, lambda r: [u.speaker or "?" for u in r.utterances])
    by_spk = "<p class=muted>No speaker column in the prepared split (or the dataset was not found).</p>"
    if set(spk_groups) - {"?"}:
        top = [g for g, _ in sorted(zip(spk_groups, spk_counts, strict=True), key=lambda x: -x[1])][: config.top_speakers]
        by_spk = bar_chart(top, {n: [t.get(g, (0.0, 0))[0] for g in top] for n, t in spk_tables.items()},
                           [dict(zip(spk_groups, spk_counts, strict=True))[g] for g in top],
                           title=f"WER by speaker (the {len(top)} with most utterances)", width=max(640, 100 * len(top)))
    return f'<h2 id="charts">WER by length and speaker</h2><div class="figs">{by_len}{by_spk}</div>'


def _links(ids: list[str]) -> str:
    return ", ".join(f'<a href="#u-{escape(i)}">{escape(i)}</a>' for i in ids)


def _confusions(views, config) -> str:
    out = ['<h2 id="confusions">Confusions</h2>']
    for v in views:
        us = v.run.utterances
        chars = char_confusions([u.id for u in us], [u.ref for u in us], [u.greedy for u in us])
        out.append(f"<h3>{escape(v.run.name)}: characters the acoustic model writes instead (greedy)</h3>")
        out.append(f'<div class="figs">{confusion_heatmap(dict(chars.counts), config.top_confusions)}<table class="words">'
                   "<tr><th>ref → hyp</th><th>count</th><th>examples</th></tr>" + "".join(
                       f"<tr><td>{escape(r)} → {escape(h)}</td><td class=num>{c}</td><td>{_links(ex)}</td></tr>"
                       for (r, h), c, ex in chars.top(config.top_confusions)) + "</table></div>")
        dec = "LM" if v.lm is not None else "greedy"
        ids = [u.id for u in us]
        words = word_confusions(ids, [v.final(i) for i in ids])
        out.append(f"<h3>{escape(v.run.name)}: most frequent word errors ({dec})</h3>")
        rows = "".join(f'<tr><td><span class="{k.lower()}">{_KIND_NAME[k]}</span></td><td>{escape(r)}</td>'
                       f"<td>{escape(h)}</td><td class=num>{c}</td><td>{_links(ex)}</td></tr>"
                       for (k, r, h), c, ex in words.top(config.top_words))
        out.append('<table class="words"><tr><th>kind</th><th>reference</th><th>hypothesis</th><th>count</th>'
                   f"<th>examples</th></tr>{rows}</table>" if rows else "<p class=muted>No word errors.</p>")
    return "".join(out)


def aligned(ops) -> str:
    """The hypothesis with its errors marked: <span class=s|d|i> around substituted, deleted (reference word,
    struck through) and inserted words."""
    parts = []
    for o in ops:
        if o.kind == EQUAL:
            parts.append(escape(o.hyp))
        elif o.kind == SUB:
            parts.append(f'<span class="s" title="reference: {escape(o.ref)}">{escape(o.hyp)}</span>')
        elif o.kind == DEL:
            parts.append(f'<span class="d" title="deleted">{escape(o.ref)}</span>')
        else:
            parts.append(f'<span class="i" title="inserted">{escape(o.hyp)}</span>')
    return " ".join(parts)


def _wer(ops) -> float:
    return errors(ops) / max(1, ref_words(ops))


def _table(views, audio: dict[str, str]) -> str:
    order = list(dict.fromkeys(u.id for v in views for u in v.run.utterances))
    by_id = [{u.id: u for u in v.run.utterances} for v in views]
    multi = len(views) > 1
    sus_any = any(u.suspect is not None for v in views for u in v.run.utterances)
    sorts = ['<option value="id">id</option>', '<option value="dur" data-num>duration</option>',
             '<option value="spk">speaker</option>']
    filters = ['<option value="">all utterances</option>']
    default = "wl0" if views[0].lm is not None else "wg0"
    for k, v in enumerate(views):
        nm = f" ({escape(v.run.name)})" if multi else ""
        sorts.append(f'<option value="wg{k}" data-num{" selected" if default == f"wg{k}" else ""}>WER greedy{nm}</option>')
        filters.append(f'<option value="err{k}">with errors{nm}</option>')
        if v.lm is not None:
            sorts.append(f'<option value="wl{k}" data-num{" selected" if default == f"wl{k}" else ""}>WER LM{nm}</option>')
            sorts.append(f'<option value="gain{k}" data-num>LM gain (greedy − LM WER){nm}</option>')
            filters += [f'<option value="fixed{k}">LM fixed it{nm}</option>',
                        f'<option value="broke{k}">LM broke it{nm}</option>']
    if sus_any:
        sorts.append('<option value="sus" data-num>check-labels score</option>')
        filters.append('<option value="suspect">check-labels suspects</option>')
    if multi:
        filters.append('<option value="differ">runs differ</option>')
    rows = []
    for uid in order:
        first = next(b[uid] for b in by_id if uid in b)
        attrs = {"id": uid, "dur": f"{first.duration:g}", "spk": first.speaker}
        flags, cells, finals = [], [], set()
        for k, (v, b) in enumerate(zip(views, by_id, strict=True)):
            u = b.get(uid)
            if u is None:
                cells.append("<td class=muted>not in this run</td>")
                continue
            g = v.greedy[uid]
            lines = [f'<div class="hyp g"><span class=lab>greedy</span>{aligned(g)}<span class=w>{_wer(g):.0%}</span></div>']
            attrs[f"wg{k}"] = f"{_wer(g):.6g}"
            if errors(v.final(uid)):
                flags.append(f"err{k}")
            if v.lm is not None:
                lm = v.lm[uid]
                attrs[f"wl{k}"], attrs[f"gain{k}"] = f"{_wer(lm):.6g}", f"{_wer(g) - _wer(lm):.6g}"
                badge = ""
                if errors(lm) < errors(g):
                    flags.append(f"fixed{k}")
                    badge = '<span class="badge b-fixed">LM fixed</span>'
                elif errors(lm) > errors(g):
                    flags.append(f"broke{k}")
                    badge = '<span class="badge b-broke">LM broke</span>'
                lines.append(f'<div class="hyp l"><span class=lab>LM</span>{aligned(lm)}<span class=w>{_wer(lm):.0%}</span> '
                             f"{badge}</div>")
            finals.add(u.lm if u.lm is not None else u.greedy)
            cells.append(f'<td data-run="{k}">{"".join(lines)}</td>')
        if multi and len(finals) > 1:
            flags.append("differ")
        meta = f"{escape(uid)}<br>{first.duration:.1f} s" + (f" · {escape(first.speaker)}" if first.speaker else "")
        if first.suspect is not None:
            attrs["sus"] = f"{first.suspect:.6g}"
            flags.append("suspect")
            meta += (f'<br><span class="badge b-sus" title="lrl data check-labels score">suspect {first.suspect:.3g} '
                     f"{escape(first.suspect_kind)}</span>")
        if uid in audio:
            meta += f'<br><audio controls preload="none" src="{audio[uid]}"></audio>'
        attr = " ".join(f'data-{a}="{escape(x)}"' for a, x in attrs.items())
        rows.append(f'<tr class="u" id="u-{escape(uid)}" {attr} data-flags="{" ".join(flags)}"><td class="meta">{meta}'
                    f'</td><td class="ref">{escape(first.ref)}</td>{"".join(cells)}</tr>')
    heads = "".join(f"<th>{escape(v.run.name)}</th>" for v in views)
    controls = (f'<div id="controls"><label>sort <select id="sort">{"".join(sorts)}</select></label>'
                '<label><input type="checkbox" id="desc" checked> descending</label>'
                f'<label>show <select id="filter">{"".join(filters)}</select></label>'
                '<label>search <input id="q" type="search" placeholder="word or id"></label>'
                f'<span><b id="shown">{len(rows)}</b> of {len(rows)} shown</span>'
                '<span class="legend"><span class="s">substituted</span><span class="d">deleted</span>'
                '<span class="i">inserted</span></span></div>')
    return (f'<h2 id="utterances">Utterances</h2>{controls}<table id="utts"><thead><tr><th>utterance</th>'
            f'<th>reference</th>{heads}</tr></thead><tbody id="rows">{"".join(rows)}</tbody></table>')


def render(views, audio: dict[str, str], config) -> str:
    """The whole page as one string (UTF-8, no external resource)."""
    split = ", ".join(sorted({v.run.split for v in views}))
    title = f"lrl report: {' vs '.join(v.run.name for v in views)} ({split})"
    link = config.audio == "link"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp(link)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            '<p class=muted><a href="#summary">summary</a> · <a href="#training">training</a> · '
            '<a href="#charts">WER by length/speaker</a> · <a href="#confusions">confusions</a> · '
            '<a href="#utterances">utterances</a></p>'
            + _summary(views, config) + _figures(views) + _charts(views, config) + _confusions(views, config)
            + _table(views, audio) + f"<script>{JS}</script></body></html>\n")
