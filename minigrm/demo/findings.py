"""The demo's results.md and pictures, from the files the pipeline wrote (nothing typed in).

`write(out, config, ablations, seeds)` reads <out>/eval_*/results.json (infer_scale.py), the
judgments behind them, the RFT rejection statistics, GRPO's log, the meta RM's data summary and
timings.json, and writes <out>/results.md with one table per finding of the paper, each beside
the paper's corresponding numbers (GRM_SPEC §4, §7: DeepSeek-GRM-27B, Overall of four
benchmarks; the demo's numbers are accuracy on its own held-out items, so compare shapes, not
levels), plus <out>/scaling.svg (Voting@k and MetaRM@k, the larger GRM's greedy as a line) and
<out>/stages.svg (SPCT stages and RFT ablations as bars).

`paired_delta(out, a, b, setting)`: accuracy of eval folder b minus folder a on the same items,
with a 95% paired bootstrap interval (what "clear of noise" means for one stage over another);
a or b may be several folders (runs of one recipe with other seeds), scored by their mean.
"""
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import grm, judgments
from ..data import load_items, read_jsonl
from ..evaluate import roc_auc
from ..plot import bars_svg
from ..report import curve_svg
from ..rewards import is_correct

FILES = ("results.md", "scaling.svg", "stages.svg")
PAPER = {"Greedy": 69.9, "Voting@1": 67.9, "Voting@8": 70.6, "MetaRM@8": 72.0, "Voting@32": 71.0, "MetaRM@32": 72.8}
PAPER_RFT = {"full": 68.8, "no_hinted": 68.0, "no_non_hinted": 67.4, "no_rejection": 66.1}
ABLATION_NAMES = {"full": "RFT (hinted + non-hinted, rejective)", "no_hinted": "w/o hinted sampling",
                  "no_non_hinted": "w/o non-hinted sampling", "no_rejection": "w/o rejective sampling",
                  "no_principles": "w/o principles (no Specific Criteria)"}


def recipe_run(recipe: str, seed: int) -> str:
    """The folder of one RFT recipe's run: rft_small / ablation_<name>, and _seed<s> for seed s > 0."""
    return ("rft_small" if recipe == "full" else f"ablation_{recipe}") + (f"_seed{seed}" if seed else "")


def recipe_runs(out: Path, recipe: str, seeds) -> list[str]:
    """The evaluated runs of one recipe, in seed order."""
    return [recipe_run(recipe, s) for s in seeds if _rows(out, recipe_run(recipe, s))]


def _rows(out: Path, name: str) -> dict:
    path = out / f"eval_{name}" / "results.json"
    return {r["setting"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def _pct(e, interval=True) -> str:
    if not e:
        return "-"
    value = f"{100 * e['value']:.1f}"
    return f"{value} [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]" if interval else value


def _params(folder: Path) -> str:
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        n = sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return f"{n / 1e6:.1f}M"


@lru_cache(maxsize=4)
def _judged(folder: Path) -> tuple[dict, dict]:
    """One eval folder's judgments {item: {sample: record}} and meta rewards {(item, sample): r}
    (None as -inf, as infer_scale.py ranks it), read once for every setting scored from them."""
    by_item = {}
    for r in read_jsonl(folder / "judgments.jsonl"):
        by_item.setdefault(r["item"], {})[r["sample"]] = r
    metas = read_jsonl(folder / "meta.jsonl") if (folder / "meta.jsonl").exists() else []
    return by_item, {(r["item"], r["sample"]): float("-inf") if r["meta"] is None else r["meta"] for r in metas}


def item_correct(out: Path, name: str, setting: str, seed: int = 0, strict: bool = False) -> dict:
    """{item id: correct} of every pair and list under one setting (Greedy, Voting@k, MetaRM@k) of
    one eval folder, recomputed from its judgments (and meta rewards) exactly as infer_scale.py
    scores them; the paper's tie rule, or with `strict` a tie counts as wrong."""
    folder = out / f"eval_{name}"
    k_max = max(r["k"] for r in _rows(out, name).values())
    by_item, meta = _judged(folder)
    found = [(k, use_meta) for s, k, use_meta in judgments.settings(k_max, bool(meta)) if s == setting]
    if not found:
        raise ValueError(f"{folder} has no setting {setting!r}")
    (k, use_meta), = found
    got = {}
    for it in load_items(out / "data" / "test.jsonl"):
        if it.kind == "single":
            continue
        i = str(it.id)
        judged = [by_item[i][grm.GREEDY]] if k == grm.GREEDY else [by_item[i][j] for j in range(k)]
        m = [meta[(i, j)] for j in range(k)] if use_meta else None
        got[i] = judgments.item_result(it, judged, m, seed)["correct_strict" if strict else "correct"]
    return got


def vote_agreement(folder: Path, items_path: Path, k: int) -> dict:
    """Where summed-score voting and a majority of right/wrong samples part (strict rule: a tie is
    wrong), over the pairs and lists of `items_path` judged k times in `folder` (infer_scale.py's
    judgments.jsonl): "right_counts" [items whose samples are right 0..k times], "mean" (of the
    samples), "majority" (a k/2-k/2 split counts half), "voting" (Voting@k), "wins" (vote right,
    majority wrong) and "losses" (vote wrong, majority right), accuracies in %."""
    by_item, _ = _judged(Path(folder))
    counts, votes, wins, losses, n = [0] * (k + 1), 0, 0, 0, 0
    for it in load_items(items_path):
        if it.kind == "single":
            continue
        judged = [by_item[str(it.id)][j] for j in range(k)]
        right = sum(judgments.item_result(it, [r], None, 0)["correct_strict"] for r in judged)
        vote = judgments.item_result(it, judged, None, 0)["correct_strict"]
        majority = 1.0 if 2 * right > k else 0.5 if 2 * right == k else 0.0
        counts[right] += 1
        votes, n = votes + vote, n + 1
        wins += vote and majority == 0
        losses += (not vote) and majority == 1
    pct = lambda x: round(100 * x / n, 1)  # noqa: E731
    return {"right_counts": counts, "mean": pct(sum(j * c for j, c in enumerate(counts)) / k),
            "majority": pct(sum(c * (1.0 if 2 * j > k else 0.5 if 2 * j == k else 0.0) for j, c in enumerate(counts))),
            "voting": pct(votes), "wins": wins, "losses": losses}


def _names(names) -> list[str]:
    """One eval folder or several, as a list."""
    return [names] if isinstance(names, str) else list(names)


def mean_correct(out: Path, names, setting: str, seed: int = 0, strict: bool = False) -> dict:
    """{item id: mean correctness} over one eval folder or several (runs of one recipe)."""
    per = [item_correct(out, n, setting, seed, strict) for n in _names(names)]
    return {i: sum(float(p[i]) for p in per) / len(per) for i in set.intersection(*map(set, per))}


def _bootstrap(d: np.ndarray, n_boot: int, seed: int) -> dict:
    """Mean of per-item values with a 95% bootstrap interval over items, in percentage points."""
    boot = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"value": 100 * d.mean(), "lo": 100 * lo, "hi": 100 * hi, "n": len(d)}


def paired_delta(out: Path, a, b, setting: str, b_setting: str | None = None, strict: bool = False,
                 n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of (b, b_setting or setting) minus (a, setting) on the items both judged, with a
    95% paired bootstrap interval (percentage points). a, b: a folder or a list of them (mean)."""
    ca, cb = mean_correct(out, a, setting, seed, strict), mean_correct(out, b, b_setting or setting, seed, strict)
    ids = sorted(set(ca) & set(cb))
    return _bootstrap(np.array([cb[i] - ca[i] for i in ids]), n_boot, seed)


def mean_accuracy(out: Path, names, setting: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy averaged over runs (folders) with a 95% bootstrap interval over items, as
    fractions like results.json's."""
    c = mean_correct(out, names, setting, seed)
    e = _bootstrap(np.array([c[i] for i in sorted(c)]), n_boot, seed)
    return {**{k: e[k] / 100 for k in ("value", "lo", "hi")}, "n": e["n"]}


def meta_rm_quality(out: Path, name: str) -> str:
    """How well the meta RM separates the GRM's correct judgments (Eq. 10) from its wrong ones,
    on the held-out pairs and lists it guided: what MetaRM@k's filtering can gain."""
    folder = out / f"eval_{name}"
    if not (folder / "meta.jsonl").exists():
        return ""
    meta = {(r["item"], r["sample"]): r["meta"] for r in read_jsonl(folder / "meta.jsonl")}
    items = {str(it.id): it for it in load_items(out / "data" / "test.jsonl") if it.kind != "single"}
    labels, scores = [], []
    for r in read_jsonl(folder / "judgments.jsonl"):
        m = meta.get((r["item"], r["sample"]))
        if r["item"] in items and r["sample"] != grm.GREEDY and m is not None:
            labels.append(int(is_correct(r["scores"], items[r["item"]].truth)))
            scores.append(m)
    if len(set(labels)) < 2:
        return f"The meta RM's {len(labels)} rated held-out judgments are all {'right' if any(labels) else 'wrong'}."
    return (f"The meta RM on the {len(labels)} sampled held-out judgments of pairs and lists it rated: ROC-AUC "
            f"{100 * roc_auc(scores, labels):.1f}% for Eq. 10 correctness ({100 * np.mean(labels):.1f}% of them are "
            "correct).")


def _delta(d: dict) -> str:
    return f"{d['value']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def invalid_rates(out: Path, name: str, sample=grm.GREEDY) -> tuple[float, float]:
    """Invalid share of one sample's judgments (greedy by default): pairs and lists, singles."""
    kinds = {str(it.id): it.kind == "single" for it in load_items(out / "data" / "test.jsonl")}
    bad = {False: [], True: []}
    for item, samples in _judged(out / f"eval_{name}")[0].items():  # the judgments item_correct reads too
        if sample in samples:
            bad[kinds[item]].append(samples[sample]["scores"] is None)
    return tuple(100 * float(np.mean(bad[single])) if bad[single] else float("nan") for single in (False, True))


def stage_table(out: Path, sizes) -> list[str]:
    lines = ["| GRM | stage | Greedy [95% CI] | Voting@1 [95% CI] | invalid (greedy): pairs + lists / singles | "
             "paper (27B, Overall) |",
             "|---|---|---|---|---|---|"]
    paper = {"base": "-", "rft": "68.8 (RFT, Table 4)", "rl": "69.9 / 67.9"}
    for size in sizes:
        for stage, label in (("base", "base (pretrained)"), ("rft", "RFT"), ("rl", "RFT + GRPO")):
            r = _rows(out, f"{stage}_{size}")
            if not r:
                continue
            params = _params(out / f"base_{size}")
            g, v = r["Greedy"], r["Voting@1"]
            bad = invalid_rates(out, f"{stage}_{size}")
            lines.append(f"| {size} ({params}) | {label} | {_pct(g['accuracy'])} | {_pct(v['accuracy'])} | "
                         f"{bad[0]:.1f}% / {bad[1]:.1f}% | {paper[stage]} |")
    lines += ["", "Paired differences on the same held-out items (percentage points, 95% paired bootstrap):", "",
              "| GRM | step | Greedy | Voting@1 |", "|---|---|---|---|"]
    for size in sizes:
        for a, b, label in (("base", "rft", "RFT - base"), ("rft", "rl", "GRPO - RFT")):
            if _rows(out, f"{a}_{size}") and _rows(out, f"{b}_{size}"):
                ds = [_delta(paired_delta(out, f"{a}_{size}", f"{b}_{size}", s)) for s in ("Greedy", "Voting@1")]
                lines.append(f"| {size} | {label} | {ds[0]} | {ds[1]} |")
    return lines


def _verdict(deltas: list[dict], matching: bool = False) -> str:
    """yes: every interval above 0; with `matching`, an interval holding 0 counts as "matches"."""
    if all(d["lo"] > 0 for d in deltas):
        return "yes"
    if matching and all(d["hi"] >= 0 for d in deltas):
        return "yes (matches)"
    return "partly" if any(d["lo"] > 0 for d in deltas) else "no"


def verdict_table(out: Path, small: dict, large: dict, ablations, seeds=(0,)) -> list[str]:
    """Each finding of the paper: reproduced when its paired intervals (95%) are clear of 0.
    A comparison is (note, folder a, setting a, folder b, setting b, strict): b minus a."""
    lines = ["| finding | reproduced | paired difference(s), percentage points [95% CI] |", "|---|---|---|"]

    def row(label, comparisons, matching=False):
        if not comparisons:
            lines.append(f"| {label} | not measured (no such setting) | |")
            return
        if not all(c[1] and c[3] and all(_rows(out, n) for n in [*_names(c[1]), *_names(c[3])]) for c in comparisons):
            lines.append(f"| {label} | not run | |")
            return
        ds = [paired_delta(out, a, b, sa, sb, strict) for _, a, sa, b, sb, strict in comparisons]
        text = "; ".join(f"{c[0]} {_delta(d)}" for c, d in zip(comparisons, ds))
        lines.append(f"| {label} | {_verdict(ds, matching)} | {text} |")
    for a, b, label in (("base", "rft", "RFT > base"), ("rft", "rl", "RFT + GRPO > RFT")):
        row(f"1. {label}", [(s, f"{a}_small", s, f"{b}_small", s, False) for s in ("Greedy", "Voting@1")])
    k_max = max((r["k"] for r in small.values()), default=1)
    row(f"2. Voting@{k_max} > Voting@1", [(rule, "rl_small", "Voting@1", "rl_small", f"Voting@{k_max}", strict)
                                          for rule, strict in (("tie rule", False), ("strict", True))])
    row("3. MetaRM@k > Voting@k (k >= 8)", [(f"k={r['k']}", "rl_small", f"Voting@{r['k']}", "rl_small", s, False)
                                            for s, r in small.items() if s.startswith("MetaRM@") and r["k"] >= 8])
    best = f"MetaRM@{k_max}" if f"MetaRM@{k_max}" in small else f"Voting@{k_max}"
    row(f"4. small GRM {best} >= larger GRM greedy", [(best, "rft_large", "Greedy", "rl_small", best, False)],
        matching=True)
    row("4. (its premise) larger GRM > small GRM, both RFT", [("Greedy", "rft_small", "Greedy", "rft_large", "Greedy",
                                                            False)])
    full = recipe_runs(out, "full", seeds)
    n = min(len(recipe_runs(out, r, seeds)) for r in ("full", *ablations)) if ablations else 0
    row(f"5. full RFT > each ablation (greedy{f', mean of {n} seeds' if n > 1 else ''})",
        [(name, recipe_runs(out, name, seeds), "Greedy", full, "Greedy", False) for name in ablations])
    return lines


def scaling_table(out: Path, name: str, rows: dict) -> list[str]:
    lines = ["| setting | accuracy [95% CI] | strict [95% CI] | ROC-AUC [95% CI] | invalid | paper (27B, Overall) |",
             "|---|---|---|---|---|---|"]
    for s, r in rows.items():
        paper = PAPER.get(s, "")
        lines.append(f"| {s} | {_pct(r['accuracy'])} | {_pct(r['accuracy_strict'])} | {_pct(r.get('roc_auc'))} | "
                     f"{100 * r['invalid_rate']:.1f}% | {paper} |")
    ks = [r["k"] for s, r in rows.items() if s.startswith("Voting@") and r["k"] >= 2]
    lines += ["", "Paired differences on the same held-out items (percentage points, 95% paired bootstrap):", "",
              "| k | Voting@k - Voting@1 | same, strict | MetaRM@k - Voting@k |", "|---|---|---|---|"]
    for k in ks:
        meta = _delta(paired_delta(out, name, name, f"Voting@{k}", f"MetaRM@{k}")) if f"MetaRM@{k}" in rows else "-"
        rise = [_delta(paired_delta(out, name, name, "Voting@1", f"Voting@{k}", strict)) for strict in (False, True)]
        lines.append(f"| {k} | {rise[0]} | {rise[1]} | {meta} |")
    return lines


def size_table(out: Path, small: dict, large: dict) -> list[str]:
    if not large:
        return ["Not measured: the larger GRM's part (`--part large`) has not been run in this --out folder."]
    ps, pl = _params(out / "base_small"), _params(out / "base_large")
    k_max = max(r["k"] for r in small.values())
    picks = [("small", ps, s, small[s]) for s in ("Greedy", "Voting@8", f"Voting@{k_max}", "MetaRM@8",
                                                   f"MetaRM@{k_max}") if s in small]
    picks += [("large (RFT)", pl, s, large[s]) for s in ("Greedy", "Voting@1") if s in large]
    lines = ["| GRM | params | setting | accuracy [95% CI] | strict [95% CI] |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {p} | {s} | {_pct(r['accuracy'])} | {_pct(r['accuracy_strict'])} |" for n, p, s, r in picks]
    return lines + ["", "Paper (Overall): DeepSeek-GRM-27B MetaRM@32 72.8 and Voting@32 71.0 vs greedy "
                        "Nemotron-4-340B-Reward 70.5 and GPT-4o 71.3 (GRM_SPEC §7)."]


def ablation_table(out: Path, ablations, seeds=(0,)) -> list[str]:
    """Each recipe's runs (one per training seed) against the full recipe's, on the same base,
    items and optimizer steps: greedy accuracy per run, their mean, and mean minus full mean."""
    if not any(recipe_runs(out, name, seeds) for name in ablations):
        return ["Not measured: the ablations' part (`--part ablations`) has not been run in this --out folder."]
    full = recipe_runs(out, "full", seeds)
    lines = ["Reduced setting (for time): RFT only (no GRPO after it), on the small base; every recipe trains on "
             "all training items for as many optimizer steps as the full recipe (rft_small), as the paper trains "
             f"a fixed 900 steps, once per training seed (seeds {', '.join(map(str, seeds))}: the batch order). "
             "Intervals: 95% bootstrap over held-out items of the mean over seeds.", "",
             "| RFT data (small GRM, RFT only) | accepted trajectories (seed 0) | optimizer steps | Greedy per seed | "
             "invalid greedy judgments per seed | Greedy, mean [95% CI] | mean vs full RFT mean | "
             "paper (27B RFT, Overall) |", "|---|---|---|---|---|---|---|---|"]
    for name in ["full", *ablations]:
        runs = recipe_runs(out, name, seeds)
        if not runs:
            continue
        rej = json.loads((out / runs[0] / "rejection.json").read_text())
        steps = sum(1 for _ in read_jsonl(out / runs[0] / "log.jsonl"))
        per_seed = " / ".join(_pct(_rows(out, r)["Greedy"]["accuracy"], interval=False) for r in runs)
        invalid = " / ".join(f"{invalid_rates(out, r)[0]:.1f}%" for r in runs)  # pairs and lists
        delta = "" if name == "full" else _delta(paired_delta(out, full, runs, "Greedy"))
        paper = PAPER_RFT.get(name, "-")  # w/o principles: no number in GRM_SPEC
        lines.append(f"| {ABLATION_NAMES[name]} | {rej['accepted']} of {rej['trajectories']} | {steps} | {per_seed} | "
                     f"{invalid} | {_pct(mean_accuracy(out, runs, 'Greedy'))} | {delta} | {paper} |")
    noise = [(name, paired_delta(out, runs[0], runs[1], "Greedy")) for name in ["full", *ablations]
             if len(runs := recipe_runs(out, name, seeds)) > 1]
    if noise:
        gaps = [PAPER_RFT["full"] - v for k, v in PAPER_RFT.items() if k != "full"]
        spread = ", ".join(f"{ABLATION_NAMES[name].split(' (')[0]} {d['value']:+.1f}" for name, d in noise)
        lines += ["", f"Training noise: seed {seeds[1]} minus seed {seeds[0]} of the same recipe (same data, batches "
                  f"in another order), greedy: {spread} points (full recipe: {_delta(noise[0][1])}). One run moves "
                  f"that much with the batch order alone; the paper's Table 4 differences are "
                  f"{min(gaps):.1f}-{max(gaps):.1f} points."]
    return lines


def rl_curve(log: Path, window: int = 20) -> list[str]:
    rows = list(read_jsonl(log))
    lines = ["| GRPO steps | reward mean | invalid | frac_reward_zero_std | KL | length |", "|---|---|---|---|---|---|"]
    for i in range(0, len(rows), window):
        w = rows[i:i + window]
        m = {k: sum(r[k] for r in w) / len(w) for k in ("reward_mean", "invalid_rate", "frac_reward_zero_std",
                                                        "kl", "length")}
        lines.append(f"| {w[0]['step']}-{w[-1]['step']} | {m['reward_mean']:+.3f} | {100 * m['invalid_rate']:.1f}% | "
                     f"{m['frac_reward_zero_std']:.2f} | {m['kl']:.4f} | {m['length']:.1f} |")
    return lines


def pictures(out: Path, small: dict, large: dict, sizes, ablations, seeds=(0,)) -> None:
    lines = [("larger GRM (RFT) greedy", 100 * large["Greedy"]["accuracy"]["value"])] if large else []
    (out / "scaling.svg").write_text(curve_svg(list(small.values()), "small GRM (RFT + GRPO): held-out "
                                               "pairs and lists", lines) or "<svg xmlns='http://www.w3.org/2000/svg'/>")
    bar = lambda label, e: (label, 100 * e["value"], 100 * e["lo"], 100 * e["hi"])  # noqa: E731
    groups = []
    for size in sizes:
        for stage, label in (("base", "base"), ("rft", "RFT"), ("rl", "+GRPO")):
            r = _rows(out, f"{stage}_{size}")
            if r:
                groups.append((f"{size} {label}", [bar(s, r[s]["accuracy"]) for s in ("Greedy", "Voting@1")]))
    recipes = [(name, runs) for name in ("full", *ablations) if (runs := recipe_runs(out, name, seeds))]
    if len(recipes) > 1:  # the RFT recipes, greedy, each the mean of its seeds' runs
        groups.append((f"RFT recipes, greedy (mean of {min(len(r) for _, r in recipes)} seeds)",
                       [bar(name.replace("no_", "w/o ").replace("_", "-"), mean_accuracy(out, runs, "Greedy"))
                        for name, runs in recipes]))
    chance = next(iter(small.values()))["chance"] if small else None
    svg = bars_svg(groups, [("chance", None if chance is None else 100 * chance)],
                   title="SPCT stages (small, large) and RFT ablations (small): held-out accuracy")
    (out / "stages.svg").write_text(svg or "<svg xmlns='http://www.w3.org/2000/svg'/>")


def write(out, config: dict, ablations, seeds=(0,)) -> None:
    out = Path(out)
    sizes = list(config["sizes"])
    small, large = _rows(out, "rl_small"), _rows(out, "rft_large")
    first = next(iter(small.values()))
    test = first["accuracy"]["n"], (first.get("roc_auc") or {}).get("n", 0)
    md = ["# Demo results", "", f"Generated by `python -m minigrm.demo.reproduce` (seed 0) from the files in its "
          f"--out folder. Held-out: {test[0]} pairs and lists (accuracy; chance {100 * first['chance']:.1f}%) and "
          f"{test[1]} single responses (ROC-AUC). Brackets: 95% bootstrap intervals over items. The paper's "
          "numbers are DeepSeek-GRM-27B's Overall score on four public benchmarks: compare shapes, not levels.", "",
          "## The findings at a glance", "", *verdict_table(out, small, large, ablations, seeds), "",
          "## 1. SPCT stages: base < RFT < RFT + GRPO", "", *stage_table(out, sizes), "", "![stages](stages.svg)", "",
          "## 2-3. Inference-time scaling: Voting@k and MetaRM@k (small GRM after GRPO)", "",
          *scaling_table(out, "rl_small", small), "", meta_rm_quality(out, "rl_small"), "",
          "![scaling](scaling.svg)", "",
          "## 4. Inference-time scaling vs model size", "", *size_table(out, small, large), "",
          "## 5. RFT ablations (the paper's Table 4)", "", *ablation_table(out, ablations, seeds), ""]
    for size in sizes:
        if (out / f"rft_{size}" / "rejection.json").exists():
            md += [f"RFT rejective sampling ({size}): `{(out / f'rft_{size}' / 'rejection.json').read_text().strip()}`",
                   ""]
    if (out / "meta_rm" / "meta_data.json").exists():
        md += [f"Meta RM training data: `{(out / 'meta_rm' / 'meta_data.json').read_text().strip()}`", ""]
    for size in sizes:
        if (out / f"rl_{size}" / "log.jsonl").exists():
            md += [f"### GRPO ({size})", "", *rl_curve(out / f"rl_{size}" / "log.jsonl"), ""]
    if (out / "timings.json").exists():
        times = json.loads((out / "timings.json").read_text())
        md += ["### Wall time per stage (seconds)", "", "| stage | seconds |", "|---|---|",
               *[f"| {k} | {v:.0f} |" for k, v in times.items()], f"| total | {sum(times.values()):.0f} |", ""]
    (out / "results.md").write_text("\n".join(md))
    pictures(out, small, large, sizes, ablations, seeds)
    print("\n".join(md))
