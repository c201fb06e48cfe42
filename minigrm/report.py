"""infer_scale.py's output: the printed tables and the result files of one evaluation.

`rows` are [{"setting", "k", **evaluate.summarize(...)}] for Greedy, Voting@k and MetaRM@k.
- `print_table(rows, by_subset)`: one line per setting: accuracy with its 95% interval and the
  number of items, strict accuracy, RewardBench's convention, ROC-AUC when there are single
  responses, invalid and truncated rates, each named benchmark and Overall; then the chance
  level; then accuracy per subset (always up to 8 subsets, all of them with by_subset).
- `write_results(rows, out, model, title)`: <out>/results.json (the rows as they are),
  <out>/results.csv (long format: setting, k, scope, metric, value, lo, hi, n; scope is "all",
  "subset:<name>" or "benchmark:<name>"), <out>/scaling.svg (plot.py) and, per setting,
  <out>/rewardbench/<setting>.json in the RewardBench results format ({"model", "model_type":
  "Generative RM", <subset>: accuracy}, accuracy under RewardBench's own tie convention) so
  numbers can be set beside its leaderboard.
"""
import csv
import json
from pathlib import Path

from .plot import scaling_svg

METRICS = ("accuracy", "accuracy_strict", "accuracy_rb", "roc_auc", "ties_score")
SHORT = {"accuracy": "accuracy", "accuracy_strict": "strict", "accuracy_rb": "RB-conv", "roc_auc": "ROC-AUC"}


def _pct(est, interval: bool = True) -> str:
    if not est:
        return "-"
    if not interval:
        return f"{100 * est['value']:.1f}"
    return f"{100 * est['value']:.1f} [{100 * est['lo']:.1f}, {100 * est['hi']:.1f}]"


def _print(header: list[str], lines: list[list[str]]) -> None:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


def print_table(rows: list[dict], by_subset: bool = False) -> None:
    first = rows[0]
    metrics = [m for m in ("accuracy", "accuracy_strict", "accuracy_rb", "roc_auc") if first.get(m)]
    benches = list(first["benchmarks"])
    header = ["setting"] + [SHORT[m] for m in metrics] + ["invalid", "truncated"] + benches
    header += ["Overall"] if first.get("overall") else []
    lines = []
    for r in rows:
        line = [r["setting"]] + [_pct(r.get(m), m != "accuracy_rb") for m in metrics]
        line += [f"{100 * r['invalid_rate']:.1f}", f"{100 * r['truncated_rate']:.1f}"]
        line += [_pct(r["benchmarks"].get(b)) for b in benches]
        line += [_pct(r["overall"])] if first.get("overall") else []
        lines.append(line)
    _print(header, lines)
    n = {m: first[m]["n"] for m in metrics}
    notes = [f"{SHORT[m]} over {n[m]} items" for m in metrics if m != "accuracy_rb"]
    print(f"(% with 95% bootstrap intervals; {', '.join(notes)}; invalid and truncated: % of judgments)")
    if first.get("chance") is not None:
        print(f"chance (a judge that picks at random): {100 * first['chance']:.1f}% accuracy"
              + (", 50.0% ROC-AUC" if first.get("roc_auc") else ""))
    subsets = first["subsets"]
    if len(subsets) > 1 and (by_subset or len(subsets) <= 8):
        print("\naccuracy per subset (items):")
        names = list(subsets)
        header = ["setting"] + [f"{s} ({subsets[s]['accuracy']['n'] if subsets[s].get('accuracy') else 0})"
                                for s in names]
        _print(header, [[r["setting"]] + [_pct(r["subsets"][s].get("accuracy") or r["subsets"][s].get("ties_score"))
                                          for s in names] for r in rows])


def markdown_table(tables: list[tuple[str, list[dict]]]) -> list[str]:
    """[(model name, rows)] -> markdown lines: accuracy and strict accuracy with 95% intervals,
    ROC-AUC, invalid rate and items, one line per (model, setting)."""
    lines = ["| model | setting | accuracy [95% CI] | strict [95% CI] | ROC-AUC [95% CI] | invalid | items |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in tables:
        for r in rows:
            n = (r.get("accuracy") or {}).get("n", "-")
            lines.append(f"| {name} | {r['setting']} | {_pct(r.get('accuracy'))} | {_pct(r.get('accuracy_strict'))} | "
                         f"{_pct(r.get('roc_auc'))} | {100 * r['invalid_rate']:.1f}% | {n} |")
    return lines


def _csv_rows(rows):
    for r in rows:
        scopes = [("all", r)] + [(f"subset:{s}", v) for s, v in r["subsets"].items()]
        for scope, group in scopes:
            for m in METRICS:
                if group.get(m):
                    e = group[m]
                    yield [r["setting"], r["k"], scope, m, e["value"], e["lo"], e["hi"], e["n"]]
        for b, e in r["benchmarks"].items():
            yield [r["setting"], r["k"], f"benchmark:{b}", "score", e["value"], e["lo"], e["hi"], e["n"]]
        if r.get("overall"):
            e = r["overall"]
            yield [r["setting"], r["k"], "overall", "score", e["value"], e["lo"], e["hi"], e["n"]]


def curve_svg(rows: list[dict], title: str = "", lines: list | None = None) -> str:
    """The scaling plot of infer_scale rows: Voting@k and MetaRM@k with intervals, greedy,
    chance and any extra reference lines [(label, percent)]."""
    metric = next((m for m in ("accuracy", "roc_auc") if rows[0].get(m)), None)
    if metric is None:
        return ""
    pct = lambda e: (100 * e["value"], 100 * e["lo"], 100 * e["hi"])  # noqa: E731
    series = {f"{p}@k": [(r["k"], *pct(r[metric])) for r in rows if r["setting"].startswith(p) and r.get(metric)]
              for p in ("Voting", "MetaRM")}
    greedy = next((100 * r[metric]["value"] for r in rows if r["setting"] == "Greedy" and r.get(metric)), None)
    refs = [("Greedy", greedy)] + list(lines or [])
    if metric == "accuracy" and rows[0].get("chance") is not None:
        refs.append(("chance", 100 * rows[0]["chance"]))
    elif metric == "roc_auc":
        refs.append(("chance", 50.0))
    return scaling_svg(series, refs, ylabel=f"{metric.replace('_', '-')} (%)", title=title)


def write_results(rows: list[dict], out, model: str, title: str = "") -> None:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "k", "scope", "metric", "value", "lo", "hi", "n"])
        w.writerows(_csv_rows(rows))
    svg = curve_svg(rows, title)
    if svg:
        (out / "scaling.svg").write_text(svg)
    rb = out / "rewardbench"
    rb.mkdir(exist_ok=True)
    for r in rows:
        subsets = {s: g["accuracy_rb"]["value"] for s, g in r["subsets"].items() if g.get("accuracy_rb")}
        record = {"model": str(model), "model_type": "Generative RM", "setting": r["setting"], **subsets}
        (rb / f"{r['setting'].replace('@', '_at_')}.json").write_text(json.dumps(record, indent=2) + "\n")
