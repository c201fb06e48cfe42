"""Metrics over per-item results, each with a 95% interval: accuracy, ROC-AUC, per subset, per
benchmark and overall.

Paper: arXiv 2504.02495 §5.1 (accuracy for RewardBench, PPE, RMB; ROC-AUC for ReaLMistake);
GRM_SPEC §6-§7. All metrics are fractions in [0, 1] (the paper prints percents).

Contract:
- `summarize(records, n_boot=1000, seed=0)`: one dict per item in (what infer_scale.py's
  evaluation writes for one setting), every metric out as {"value", "lo", "hi", "n"}:
    "subset": str | None        None -> "all"
    "benchmark": str | None     see benchmarks.py
    "n_samples", "n_invalid", "n_truncated": ints (judgments sampled / invalid / cut by the limit)
    items with one labelled best: "correct" (paper's tie rule), "correct_strict" (tie = wrong),
        "credit" (RewardBench's convention), "n_responses"
    single responses: "score" (mean voted score; None without a valid judgment), "label" 0 | 1
    several correct responses (RewardBench 2 Ties): "id", "truth", "summed"
  Output: "accuracy", "accuracy_strict", "accuracy_rb" pooled over the items with one labelled
  best, "roc_auc" over single responses, "chance" (the accuracy of a judge that picks at random:
  the mean of 1/n), invalid and truncated rates, "subsets" (the same per subset, plus
  "ties_score"), "benchmarks" (benchmarks.aggregate of the subsets' accuracies) and "overall"
  (the mean of the benchmarks present, when any is named).
- Single responses without a valid judgment are counted in ROC-AUC at the lowest score (below
  every valid one, ties among them at the average rank): leaving them out would reward a judge
  for failing on hard items.
- Intervals: percentile bootstrap over items, resampled within each subset (so a benchmark's
  subset sizes stay fixed, as its aggregate assumes), n_boot resamples from `seed`: the same
  numbers on every run. `n` is the number of items the metric is over.
- `roc_auc(scores, labels)`: the Mann-Whitney statistic, ties at average rank.
"""
import numpy as np

from .benchmarks import TIES, aggregate, ties_score

LOWEST = float("-inf")  # the ROC-AUC score of a single response without a valid judgment


def roc_auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative) + 0.5 P(equal)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if np.isnan(scores).any():
        raise ValueError("scores hold NaN/None; give invalid items the lowest score (evaluate.LOWEST)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative label")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based average rank of each distinct score
    rank_sum_pos = mean_rank[inverse][labels == 1].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _strata_indices(groups: list[str], n_boot: int, seed: int) -> np.ndarray:
    """(1 + n_boot, N) item indices: row 0 is the data itself, each other row a resample that
    draws every item from its own subset, with replacement."""
    groups = np.asarray(groups, dtype=object)
    idx = np.tile(np.arange(len(groups)), (1 + n_boot, 1))
    rng = np.random.default_rng(seed)
    for g in sorted(set(groups.tolist())):
        cols = np.flatnonzero(groups == g)
        idx[1:, cols] = cols[rng.integers(0, len(cols), size=(n_boot, len(cols)))]
    return idx


def _estimate(rows: np.ndarray, n: int) -> dict | None:
    """rows[0] = the point estimate, rows[1:] = its bootstrap replicates (NaN where undefined)."""
    if rows.size == 0 or np.isnan(rows[0]):
        return None
    reps = rows[1:][~np.isnan(rows[1:])]
    lo, hi = (np.percentile(reps, [2.5, 97.5]) if reps.size else (np.nan, np.nan))
    return {"value": float(rows[0]), "lo": float(lo), "hi": float(hi), "n": n}


def _mean_rows(values: np.ndarray, idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mean of `values` (NaN = not applicable) over the resampled columns `cols`, per row."""
    v = values[idx[:, cols]]
    count = (~np.isnan(v)).sum(axis=1)
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, np.nansum(v, axis=1) / np.maximum(count, 1), np.nan)


def _auc_rows(records, idx, cols) -> np.ndarray:
    score = np.array([LOWEST if r.get("score") is None else r["score"] for r in records], dtype=float)
    label = np.array([r.get("label", -1) for r in records])
    out = np.full(len(idx), np.nan)
    for b, row in enumerate(idx[:, cols]):
        row = row[label[row] >= 0]
        if row.size and 0 < label[row].sum() < row.size:
            out[b] = roc_auc(score[row], label[row])
    return out


def _ties_rows(records, idx, cols) -> np.ndarray:
    return np.array([ties_score([(records[i]["id"], records[i]["truth"], records[i]["summed"]) for i in row])
                     for row in idx[:, cols]])


def _column(records, key) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records])


def _group(records, idx, cols, values) -> dict:
    sub = [records[i] for i in cols]
    samples = sum(r.get("n_samples", 1) for r in sub)
    n_best = sum(r.get("correct") is not None for r in sub)
    out = {"n": len(sub), "invalid_rate": sum(r.get("n_invalid", 0) for r in sub) / max(samples, 1),
           "truncated_rate": sum(r.get("n_truncated", 0) for r in sub) / max(samples, 1)}
    for name in ("accuracy", "accuracy_strict", "accuracy_rb"):
        out[name] = _estimate(_mean_rows(values[name], idx, cols), n_best)
    singles = [r for r in sub if "label" in r]
    if {r["label"] for r in singles} == {0, 1}:
        out["roc_auc"] = _estimate(_auc_rows(records, idx, cols), len(singles))
    if any("summed" in r for r in sub):
        out["ties_score"] = _estimate(_ties_rows(records, idx, cols), sum("summed" in r for r in sub))
    if n_best:
        out["chance"] = sum(1 / r["n_responses"] for r in sub if r.get("correct") is not None) / n_best
    return out


def summarize(records, n_boot: int = 1000, seed: int = 0) -> dict:
    """Overall, per-subset and per-benchmark metrics with 95% intervals (module docstring)."""
    records = list(records)
    if not records:
        raise ValueError("summarize needs at least one item")
    subsets = [r.get("subset") or "all" for r in records]
    idx = _strata_indices(subsets, n_boot, seed)
    values = {"accuracy": _column(records, "correct"), "accuracy_strict": _column(records, "correct_strict"),
              "accuracy_rb": _column(records, "credit")}
    out = _group(records, idx, np.arange(len(records)), values)
    out["subsets"], subset_rows = {}, {}
    for s in sorted(set(subsets)):
        cols = np.flatnonzero(np.array(subsets, dtype=object) == s)
        out["subsets"][s] = _group(records, idx, cols, values)
        subset_rows[s] = (_ties_rows(records, idx, cols) if s.lower() == TIES.lower()
                          and any("summed" in records[i] for i in cols) else _mean_rows(values["accuracy"], idx, cols))
    benchmarks: dict[str, list[str]] = {}
    for r, s in zip(records, subsets):
        if r.get("benchmark") is not None:
            benchmarks.setdefault(r["benchmark"], [])
            if s not in benchmarks[r["benchmark"]]:
                benchmarks[r["benchmark"]].append(s)
    out["benchmarks"], bench_rows = {}, {}
    for name, names in sorted(benchmarks.items()):
        cols = np.flatnonzero([r.get("benchmark") == name for r in records])
        pooled = _mean_rows(values["accuracy"], idx, cols)
        aggs = [aggregate(name, {s: subset_rows[s][b] for s in names}, pooled[b]) for b in range(len(idx))]
        bench_rows[name] = np.array([np.nan if a["score"] is None else a["score"] for a in aggs])
        est = _estimate(bench_rows[name], len(cols))
        if est is not None:
            est["complete"] = aggs[0]["complete"]
            if "sections" in aggs[0]:
                est["sections"] = aggs[0]["sections"]
            out["benchmarks"][name] = est
    if bench_rows:
        out["overall"] = _estimate(np.mean(np.stack(list(bench_rows.values())), axis=0), len(records))
    return out
