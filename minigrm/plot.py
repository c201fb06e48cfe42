"""Pictures as standalone SVG, no plotting library needed: the inference-time scaling plot and bars.

`scaling_svg(series, lines, ylabel, title)` draws each series (e.g. "Voting@k", "MetaRM@k") as
points (k, value, lo, hi) against k on a log2 axis, with a vertical bar for each 95% interval,
and horizontal reference lines (greedy, the chance level, a larger model's greedy score): the
shape of the paper's Figure 1. `bars_svg(groups, lines, ylabel, title)` draws grouped bars with
95% interval whiskers (the demo's SPCT stages and RFT ablations, the paper's Table 4). Values are
percents. Any browser, and GitHub's file view, shows them.
"""
import math
from html import escape

W, H = 520, 340  # canvas
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 24, 44  # margins: axis labels left/bottom, legend right
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
LINE_STYLES = ("5,4", "2,3", "8,3,2,3")


def _nice_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max(2.0, (hi - lo) * 0.08)
    return math.floor((lo - pad) / 5) * 5, math.ceil((hi + pad) / 5) * 5


def scaling_svg(series: dict, lines: list | None = None, ylabel: str = "accuracy (%)", title: str = "") -> str:
    """series: {name: [(k, value, lo, hi), ...]} (lo/hi may be None); lines: [(label, value)].
    -> SVG text, or "" when there is nothing to draw."""
    series = {name: pts for name, pts in series.items() if pts}
    lines = [(label, y) for label, y in (lines or []) if y is not None]
    ys = [v for pts in series.values() for p in pts for v in p[1:] if v is not None] + [y for _, y in lines]
    if not ys:
        return ""
    k_max = max((p[0] for pts in series.values() for p in pts), default=1)
    y_lo, y_hi = _nice_range(ys)
    x_span = max(1.0, math.log2(k_max))
    px = lambda k: LEFT + (W - LEFT - RIGHT) * math.log2(k) / x_span  # noqa: E731
    py = lambda y: TOP + (H - TOP - BOTTOM) * (y_hi - y) / (y_hi - y_lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11"><rect width="{W}" height="{H}" fill="white"/>']
    if title:
        out.append(f'<text x="{LEFT}" y="14">{escape(title)}</text>')
    x0, x1, y0, y1 = LEFT, W - RIGHT, H - BOTTOM, TOP
    out.append(f'<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>')
    step = 5 if y_hi - y_lo <= 40 else 10
    for y in range(int(y_lo), int(y_hi) + 1, step):  # y grid and ticks
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>'
                   f'<text x="{x0 - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>')
    k = 1
    while k <= k_max:  # x ticks at powers of two
        out.append(f'<text x="{px(k):.1f}" y="{y0 + 16}" text-anchor="middle">{k}</text>')
        k *= 2
    out.append(f'<text x="{(x0 + x1) / 2}" y="{H - 8}" text-anchor="middle">k (sampled judgments)</text>')
    out.append(f'<text transform="translate(14,{(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    legend = []
    for i, (label, y) in enumerate(lines):
        dash = LINE_STYLES[i % len(LINE_STYLES)]
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="gray" '
                   f'stroke-dasharray="{dash}"/>')
        legend.append((f"{label} {y:.1f}", "gray", dash))
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(p[0]):.1f},{py(p[1]):.1f}" for j, p in enumerate(pts))
        out.append(f'<path d="{path}" stroke="{color}" stroke-width="2" fill="none"/>')
        for k, y, lo, hi in pts:
            if lo is not None and hi is not None:  # the 95% interval as a bar with caps
                x = px(k)
                out.append(f'<path d="M{x - 3:.1f},{py(lo):.1f} H{x + 3:.1f} M{x:.1f},{py(lo):.1f} V{py(hi):.1f} '
                           f'M{x - 3:.1f},{py(hi):.1f} H{x + 3:.1f}" stroke="{color}" fill="none" opacity="0.6"/>')
            out.append(f'<circle cx="{px(k):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        legend.append((name, color, "none"))
    return _finish(out, legend, x1, 2, "bars: 95% intervals")


def bars_svg(groups: list, lines: list | None = None, ylabel: str = "accuracy (%)", title: str = "") -> str:
    """Grouped bars with 95% interval whiskers: groups = [(group label, [(bar label, value, lo, hi)])],
    bars of the same label share a colour across groups (legend at the right); lines =
    [(label, value)] horizontal references (e.g. chance). Values are percents. -> SVG text."""
    labels = list(dict.fromkeys(b[0] for _, bars in groups for b in bars))
    lines = [(label, y) for label, y in (lines or []) if y is not None]
    ys = [v for _, bars in groups for b in bars for v in b[1:] if v is not None] + [y for _, y in lines]
    if not ys:
        return ""
    y_lo, y_hi = 0, min(100, math.ceil((max(ys) + 5) / 10) * 10)
    width = max(W, LEFT + RIGHT + 24 * sum(len(bars) + 1 for _, bars in groups))
    x0, x1, y0, y1 = LEFT, width - RIGHT, H - BOTTOM, TOP
    py = lambda y: TOP + (H - TOP - BOTTOM) * (y_hi - y) / (y_hi - y_lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" font-family="sans-serif" '
           f'font-size="11"><rect width="{width}" height="{H}" fill="white"/>']
    if title:
        out.append(f'<text x="{LEFT}" y="14">{escape(title)}</text>')
    out.append(f'<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>')
    for y in range(y_lo, y_hi + 1, 10):
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>'
                   f'<text x="{x0 - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y}</text>')
    out.append(f'<text transform="translate(14,{(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(ylabel)}</text>')
    slot = (x1 - x0) / max(1, sum(len(bars) + 1 for _, bars in groups))
    x = x0 + slot / 2
    for group, bars in groups:
        start = x
        for label, v, lo, hi in bars:
            color = COLORS[labels.index(label) % len(COLORS)]
            out.append(f'<rect x="{x:.1f}" y="{py(v):.1f}" width="{slot * 0.8:.1f}" height="{py(0) - py(v):.1f}" '
                       f'fill="{color}" opacity="0.85"><title>{escape(f"{group} {label}: {v:.1f}")}</title></rect>')
            cx = x + slot * 0.4
            if lo is not None and hi is not None:
                out.append(f'<path d="M{cx - 3:.1f},{py(lo):.1f} H{cx + 3:.1f} M{cx:.1f},{py(lo):.1f} V{py(hi):.1f} '
                           f'M{cx - 3:.1f},{py(hi):.1f} H{cx + 3:.1f}" stroke="black" fill="none"/>')
            out.append(f'<text x="{cx:.1f}" y="{py(v) - 3:.1f}" text-anchor="middle" font-size="9">{v:.0f}</text>')
            x += slot
        out.append(f'<text x="{(start + x - slot * 0.2) / 2:.1f}" y="{y0 + 16}" text-anchor="middle">'
                   f'{escape(group)}</text>')
        x += slot
    legend = [(label, COLORS[i % len(COLORS)], "none") for i, label in enumerate(labels)]
    for i, (label, y) in enumerate(lines):
        dash = LINE_STYLES[i % len(LINE_STYLES)]
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="gray" '
                   f'stroke-dasharray="{dash}"/>')
        legend.append((f"{label} {y:.1f}", "gray", dash))
    return _finish(out, legend, x1, 6, "whiskers: 95% intervals")


def _finish(out: list, legend: list, x1: float, width: int, note: str) -> str:
    """The legend [(label, color, dash)] right of the axes, a note under it, the closing tag."""
    for i, (label, color, dash) in enumerate(legend):
        y = TOP + 10 + 18 * i
        out.append(f'<line x1="{x1 + 10}" x2="{x1 + 30}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="{width}" '
                   f'stroke-dasharray="{dash}"/><text x="{x1 + 36}" y="{y + 4}">{escape(label)}</text>')
    out.append(f'<text x="{x1 + 10}" y="{TOP + 14 + 18 * len(legend)}" fill="#555">{note}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
