"""Small charts drawn as inline SVG and HTML (no plotting library, no script): grouped bars of WER per group
(utterance length, speaker) and a character confusion heatmap as a coloured table.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")  # one colour per series


def bar_chart(groups: list[str], series: dict[str, list[float]], counts: list[int] | None = None,
              title: str = "", width: int = 640, height: int = 220) -> str:
    """Grouped vertical bars of rates (0..1, shown as %) for each group; `counts` label the groups (n=)."""
    if not groups or not series:
        return ""
    top = max([v for vals in series.values() for v in vals] + [0.01])
    left, bottom, pad = 44, 44, 8
    plot_w, plot_h = width - left - pad, height - bottom - 24
    gw = plot_w / len(groups)
    bw = max(2.0, (gw - 8) / len(series))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}"><text x="{left}" y="14" class="ct">{escape(title)}</text>']
    for frac in (0, 0.5, 1):
        y = 24 + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" class="ax" text-anchor="end">{top * frac:.0%}</text>')
    for gi, g in enumerate(groups):
        x0 = left + gi * gw + 4
        for si, (name, vals) in enumerate(series.items()):
            v = vals[gi]
            h = plot_h * v / top
            parts.append(f'<rect x="{x0 + si * bw:.1f}" y="{24 + plot_h - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
                         f'fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(g)} {escape(name)}: {v:.1%}</title></rect>')
        label = g if len(g) <= 14 else g[:13] + "…"
        n = f" n={counts[gi]}" if counts else ""
        parts.append(f'<text x="{x0 + (gw - 8) / 2:.1f}" y="{height - bottom + 16}" class="ax" text-anchor="middle">'
                     f'{escape(label)}</text><text x="{x0 + (gw - 8) / 2:.1f}" y="{height - bottom + 30}" class="ax" '
                     f'text-anchor="middle">{n}</text>')
    lx = left
    for si, name in enumerate(series):
        parts.append(f'<rect x="{lx}" y="{height - 10}" width="10" height="10" fill="{PALETTE[si % len(PALETTE)]}"/>'
                     f'<text x="{lx + 14}" y="{height - 1}" class="ax">{escape(name)}</text>')
        lx += 14 + 8 * len(name) + 16
    parts.append("</svg>")
    return "".join(parts)


def confusion_heatmap(pairs: dict[tuple[str, str], int], n: int = 12) -> str:
    """A table of counts, rows = reference characters and columns = what was written instead, for the
    characters in the `n` most frequent substitutions; cells shaded by count."""
    if not pairs:
        return "<p class=muted>No character substitutions.</p>"
    top = sorted(pairs.items(), key=lambda kv: -kv[1])[:n]
    rows = list(dict.fromkeys(r for (r, _), _ in top))
    cols = list(dict.fromkeys(h for (_, h), _ in top))
    peak = max(pairs.values())
    out = ['<table class="conf"><tr><th title="reference → hypothesis">ref ╲ hyp</th>']
    out += [f"<th>{escape(c)}</th>" for c in cols]
    out.append("</tr>")
    for r in rows:
        out.append(f"<tr><th>{escape(r)}</th>")
        for c in cols:
            k = pairs.get((r, c), 0)
            shade = f' style="background:rgba(196,78,82,{0.12 + 0.88 * k / peak:.2f})"' if k else ""
            out.append(f'<td{shade} title="{escape(r)} → {escape(c)}: {k}">{k or ""}</td>')
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)
