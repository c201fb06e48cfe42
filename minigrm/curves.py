"""`python -m minigrm.curves OUT`: a training run's main curves as one SVG, for people without
TensorBoard or wandb (no plotting library needed).

    python -m minigrm.curves out/rl                       # -> out/rl/curves.svg
    python -m minigrm.curves out/rl/log.jsonl --out rl.svg --smooth 10

Reads <out>/log.jsonl and draws one small panel per metric present, against the step: the
rule reward, loss, KL, held-out accuracies and ROC-AUC (every "eval/..." field, at the steps it
was measured), the invalid and truncated rates, judgment length, throughput, grad norm. `--smooth
N` adds a running mean over N steps on top of the raw (faint) curve.
"""
import argparse
import math
from html import escape
from pathlib import Path

from .data import read_results

PANELS = ("reward_mean", "loss", "kl", "invalid_rate", "truncated_rate", "length", "frac_reward_zero_std",
          "clip_frac", "grad_norm", "lr", "sample_tok_per_s", "update_tok_per_s", "mfu")
W, H, PAD = 300, 170, 36


def _panel(name: str, xs, ys, smooth: int, x0: float, y0: float) -> list[str]:
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    px = lambda x: x0 + PAD + (W - PAD - 10) * (x - x_lo) / (x_hi - x_lo)  # noqa: E731
    py = lambda y: y0 + 22 + (H - 22 - 24) * (hi - y) / (hi - lo)  # noqa: E731
    out = [f'<rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="white" stroke="#ccc"/>',
           f'<text x="{x0 + 8}" y="{y0 + 15}" font-weight="bold">{escape(name)}</text>',
           f'<text x="{x0 + PAD - 4}" y="{py(hi) + 4:.1f}" text-anchor="end">{hi:.3g}</text>',
           f'<text x="{x0 + PAD - 4}" y="{py(lo) + 4:.1f}" text-anchor="end">{lo:.3g}</text>',
           f'<text x="{px(x_lo):.1f}" y="{y0 + H - 6}">{x_lo:g}</text>',
           f'<text x="{px(x_hi):.1f}" y="{y0 + H - 6}" text-anchor="end">step {x_hi:g}</text>']
    line = lambda pts, style: ('<path d="' + " ".join(f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}"  # noqa: E731
                                                       for i, (x, y) in enumerate(pts)) + f'" {style}/>')
    faint = smooth > 1 and len(ys) > smooth
    out.append(line(list(zip(xs, ys)), 'fill="none" stroke="#1f77b4" stroke-width="1.5"'
                                       + (' opacity="0.3"' if faint else '')))
    if len(xs) <= 20:
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="#1f77b4"/>' for x, y in zip(xs, ys)]
    if faint:
        means = [sum(ys[max(0, i - smooth + 1):i + 1]) / len(ys[max(0, i - smooth + 1):i + 1]) for i in range(len(ys))]
        out.append(line(list(zip(xs, means)), 'fill="none" stroke="#d62728" stroke-width="2"'))
    return out


def curves_svg(records: list[dict], title: str = "", smooth: int = 1) -> str:
    """One panel per metric present in the records (eval metrics at the steps they exist)."""
    names = [n for n in PANELS if any(isinstance(r.get(n), (int, float)) for r in records)]
    names += sorted({k for r in records for k in r if k.startswith("eval/") and isinstance(r[k], (int, float))})
    if not names:
        return ""
    cols = 3
    rows = math.ceil(len(names) / cols)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * W + 20}" height="{rows * H + 40}" '
           f'font-family="sans-serif" font-size="10"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="13">{escape(title)}</text>']
    for i, name in enumerate(names):
        pts = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))
               and math.isfinite(r[name])]
        if pts:
            out += _panel(name, [x for x, _ in pts], [y for _, y in pts], smooth if not name.startswith("eval/") else 1,
                          10 + (i % cols) * W, 30 + (i // cols) * H)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a training --out folder, or its log.jsonl")
    ap.add_argument("--out", default=None, help="SVG to write (default: <run>/curves.svg)")
    ap.add_argument("--smooth", type=int, default=1, help="running mean over this many steps (1: none)")
    args = ap.parse_args(argv)
    log = Path(args.run) if Path(args.run).is_file() else Path(args.run) / "log.jsonl"
    records = read_results(log, required=("step",))
    if not records:
        raise SystemExit(f"{log}: no records")
    dest = Path(args.out) if args.out else log.parent / "curves.svg"
    dest.write_text(curves_svg(records, title=f"{log.parent.name}: {len(records)} steps", smooth=args.smooth))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
