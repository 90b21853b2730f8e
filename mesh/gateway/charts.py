"""Small SVG charts for the crew dashboard, drawn on the server (no script, no CDN, work offline):
this node's throughput over the last minutes, and media and views per tag.

Each function returns one `<svg>` with a viewBox (it scales to its box), a <title> and a text
fallback; every value in it is a number we computed or an escaped tag name.
"""

from __future__ import annotations

from html import escape

WIDTH = 400  # viewBox units (text is 12 of them: legible on a phone)
LINE_HEIGHT = 150
TAGS_SHOWN_MAX = 10  # bars in the per-tag chart (the tags with most media)
BAR_HEIGHT = 18
LABEL_WIDTH = 90


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def throughput_svg(history: list[tuple[float, float, float]], now: float, span_s: float) -> str:
    """Lines of bytes/s in and out over the last `span_s` seconds from (time, in/s, out/s)."""
    shown = [point for point in history if now - point[0] <= span_s]
    head = (f'<svg id="throughput" class="chart" viewBox="0 0 {WIDTH} {LINE_HEIGHT}" role="img" '
            f'aria-label="Throughput of this node over the last {span_s / 60:.0f} minutes">'
            f'<title>Throughput, last {span_s / 60:.0f} minutes</title>')
    if len(shown) < 2:
        return (head + f'<text x="{WIDTH / 2}" y="{LINE_HEIGHT / 2}" text-anchor="middle" class="muted">'
                "Collecting: the chart fills in while this dashboard is open.</text></svg>")
    top = max(max(p[1], p[2]) for p in shown) or 1.0
    plot_h = LINE_HEIGHT - 30

    def points(index: int) -> str:
        return " ".join(f"{WIDTH * (1 - (now - p[0]) / span_s):.1f},{10 + plot_h * (1 - p[index] / top):.1f}"
                        for p in shown)

    last = shown[-1]
    return (head + f'<line x1="0" y1="{10 + plot_h}" x2="{WIDTH}" y2="{10 + plot_h}" class="axis"/>'
            f'<polyline points="{points(1)}" class="in" fill="none"/>'
            f'<polyline points="{points(2)}" class="out" fill="none"/>'
            f'<text x="4" y="22" class="muted">peak {_size(top)}/s</text>'
            f'<text x="4" y="{LINE_HEIGHT - 4}" class="muted">−{span_s / 60:.0f} min</text>'
            f'<text x="{WIDTH - 4}" y="{LINE_HEIGHT - 4}" text-anchor="end" class="muted">now: '
            f'<tspan class="in">↓ {_size(last[1])}/s</tspan> <tspan class="out">↑ {_size(last[2])}/s</tspan></text>'
            "</svg>")


def tags_svg(rows: list[dict]) -> str:
    """Per tag, bars of media shown and hidden (consent or retention), with the views counted and
    the drop units sold."""
    rows = rows[:TAGS_SHOWN_MAX]
    height = max(1, len(rows)) * (BAR_HEIGHT + 8) + 24
    head = (f'<svg id="tags-chart" class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
            'aria-label="Media shown and hidden, and views, per tag"><title>Media and views per tag</title>')
    if not rows:
        return head + '<text x="8" y="20" class="muted">No media yet.</text></svg>'
    top = max(r["shown"] + r["hidden"] for r in rows) or 1
    scale = (WIDTH - LABEL_WIDTH - 120) / top
    parts = [head, f'<text x="{LABEL_WIDTH}" y="14" class="muted">'
             '<tspan class="shown">■ shown</tspan> <tspan class="hidden">■ hidden (consent, retention)</tspan></text>']
    for i, row in enumerate(rows):
        y = 24 + i * (BAR_HEIGHT + 8)
        shown_w, hidden_w = row["shown"] * scale, row["hidden"] * scale
        sold = f' · {row["sold"]} sold' if row.get("sold") else ""
        parts.append(
            f'<g class="tag" data-tag="{escape(row["tag"])}" data-shown="{row["shown"]}" data-hidden="{row["hidden"]}" data-sold="{row.get("sold", 0)}">'
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 13}" text-anchor="end">{escape(row["tag"][:18])}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{shown_w:.1f}" height="{BAR_HEIGHT}" class="shown"/>'
            f'<rect x="{LABEL_WIDTH + shown_w:.1f}" y="{y}" width="{hidden_w:.1f}" height="{BAR_HEIGHT}" class="hidden"/>'
            f'<text x="{LABEL_WIDTH + shown_w + hidden_w + 6:.1f}" y="{y + 13}" class="muted">'
            f'{row["shown"]} + {row["hidden"]} · {row["views"]} views{sold}</text></g>')
    parts.append("</svg>")
    return "".join(parts)
