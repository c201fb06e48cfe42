"""The inference-time scaling plot as a standalone SVG: no plotting library needed.

`scaling_svg(rows)` takes `infer_scale.py`'s result rows ({"setting", "k", "accuracy", "roc_auc",
...}) and draws Voting@k and MetaRM@k against k (log2 axis) with greedy as a dashed line, the
shape of the paper's Figure 1. Any browser, and GitHub's file view, shows the file.
"""
import math
from html import escape

W, H = 480, 320  # canvas
LEFT, RIGHT, TOP, BOTTOM = 56, 110, 20, 44  # margins: axis labels left/bottom, legend right
SERIES = (("Voting", "#1f77b4"), ("MetaRM", "#d62728"))


def _nice_range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = max(2.0, (hi - lo) * 0.1)
    return math.floor((lo - pad) / 5) * 5, math.ceil((hi + pad) / 5) * 5


def scaling_svg(rows: list[dict], title: str = "") -> str:
    metric = "accuracy" if any(r.get("accuracy") is not None for r in rows) else "roc_auc"
    series = {}
    for prefix, color in SERIES:
        pts = [(r["k"], 100 * r[metric]) for r in rows if r["setting"].startswith(prefix) and r[metric] is not None]
        if pts:
            series[prefix] = (pts, color)
    greedy = next((100 * r[metric] for r in rows if r["setting"] == "Greedy" and r[metric] is not None), None)
    ys = [y for pts, _ in series.values() for _, y in pts] + ([greedy] if greedy is not None else [])
    if not ys:
        return ""
    k_max = max(k for pts, _ in series.values() for k, _ in pts) if series else 1
    y_lo, y_hi = _nice_range(ys)
    x_span = max(1.0, math.log2(k_max))
    px = lambda k: LEFT + (W - LEFT - RIGHT) * math.log2(k) / x_span  # noqa: E731
    py = lambda y: TOP + (H - TOP - BOTTOM) * (y_hi - y) / (y_hi - y_lo)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11"><rect width="{W}" height="{H}" fill="white"/>']
    if title:
        out.append(f'<text x="{LEFT}" y="13">{escape(title)}</text>')
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
    out.append(f'<text transform="translate(14,{(y0 + y1) / 2}) rotate(-90)" text-anchor="middle">{metric} (%)</text>')
    legend = []
    if greedy is not None:
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{py(greedy):.1f}" y2="{py(greedy):.1f}" stroke="gray" '
                   f'stroke-dasharray="5,4"/>')
        legend.append(("Greedy", "gray", "5,4"))
    for name, (pts, color) in series.items():
        path = " ".join(f"{'M' if i == 0 else 'L'}{px(k):.1f},{py(y):.1f}" for i, (k, y) in enumerate(pts))
        out.append(f'<path d="{path}" stroke="{color}" stroke-width="2" fill="none"/>')
        out += [f'<circle cx="{px(k):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>' for k, y in pts]
        legend.append((f"{name}@k", color, "none"))
    for i, (label, color, dash) in enumerate(legend):
        y = TOP + 10 + 18 * i
        out.append(f'<line x1="{x1 + 10}" x2="{x1 + 30}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="2" '
                   f'stroke-dasharray="{dash}"/><text x="{x1 + 36}" y="{y + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
