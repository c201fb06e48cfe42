"""Benchmark metrics: accuracy, best-of-N accuracy, ROC-AUC, RewardBench sections, summaries.

Paper: arXiv 2504.02495 §5.1 (RewardBench, PPE, RMB: accuracy; ReaLMistake: ROC-AUC);
GRM_SPEC.md §7. All metrics are fractions in [0, 1] (the paper prints percents).

Contract:
- `accuracy(flags)`: mean of booleans (None for no items).
- `best_of_n_accuracy(summed, truths, tie_break)`: the predicted best (argmax of each voted
  S*, ties broken as in voting.py, "random" = the paper's shuffle-then-argmax, "strict" = a
  tie is wrong) equals the labelled best; an item without a valid judgment (None) is wrong.
- `roc_auc(scores, labels)`: the Mann-Whitney statistic with average ranks for ties, i.e.
  P(score of a random positive > score of a random negative) + 0.5 P(equal). Labels are 0/1
  with 1 = correct response (our data's single-response `label`).
- `rewardbench_sections(acc_per_subset, counts)`: each section is a count-weighted mean of its
  subsets' accuracies; "Score" is the mean of the four sections (when all four are present).
  weighting="official" (default) uses RewardBench's fixed EXAMPLE_COUNTS, as its official
  script and leaderboard do (we assume the paper's RB numbers come from that script). They
  equal the real prompt counts except math-prm, counted as 984 = 6 x 164 (447 real prompts)
  so that math weighs as much as the six HumanEvalPack (hep-*) code subsets together.
  weighting="prompts" uses the number of prompts actually evaluated per subset, the literal
  "prompt-count-weighted mean".
- `summarize(records)`: per-item result dicts in, overall + per-subset (+ RewardBench
  sections, + ROC-AUC) out. A record holds:
    "subset": str | None      which subset the item belongs to (None -> "all")
    "correct": bool           Eq. 10 / voted correctness with the paper's tie rule (optional)
    "correct_strict": bool    the same with tie = wrong (optional)
    "n_samples": int          judgments sampled for the item (default 1)
    "n_invalid": int          of which invalid (default 0); invalid rate = sum / sum
    "score": float | None     single responses: (voted) score, None when no valid judgment
    "label": 0 | 1            single responses: ground truth for ROC-AUC
  Records with "score": None are left out of ROC-AUC (they are counted as invalid).
"""
from collections import defaultdict

from .rewards import best_index
from .voting import predict_best, strict_best

REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
SUBSET_TO_SECTION = {s: sec for sec, subsets in REWARDBENCH_SECTIONS.items() for s in subsets}
# RewardBench's EXAMPLE_COUNTS (rewardbench/constants.py): math-prm upweighted from 447 to 984.
REWARDBENCH_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46,
    "refusals-dangerous": 100, "refusals-offensive": 100, "xstest-should-refuse": 154,
    "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 984, "hep-cpp": 164, "hep-go": 164,
    "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}


def accuracy(flags) -> float | None:
    flags = list(flags)
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def best_of_n_accuracy(summed, truths, tie_break: str = "random", seed: int = 0) -> float | None:
    """Fraction of items whose predicted best (from voted scores S*) is the labelled best."""
    if tie_break not in ("random", "strict"):
        raise ValueError(f"tie_break must be 'random' or 'strict', got {tie_break!r}")
    if len(summed) != len(truths):
        raise ValueError(f"{len(summed)} score lists for {len(truths)} items")
    flags = []
    for i, (s, truth) in enumerate(zip(summed, truths)):
        pred = predict_best(s, f"{seed}:{i}") if tie_break == "random" else strict_best(s)
        flags.append(pred is not None and pred == best_index(truth))
    return accuracy(flags)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve, ties at average rank (pure Python, O(m log m))."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    if any(s is None for s in scores):
        raise ValueError("scores hold None (invalid judgments): leave those items out first")
    if any(l not in (0, 1) for l in labels):
        raise ValueError("labels must be 0 or 1")
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs at least one positive and one negative label")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum_pos, start = 0.0, 0
    while start < len(order):  # walk groups of equal scores; each gets the group's mean rank
        end = start
        while end < len(order) and scores[order[end]] == scores[order[start]]:
            end += 1
        mean_rank = (start + 1 + end) / 2  # 1-based ranks start+1 .. end
        rank_sum_pos += mean_rank * sum(labels[order[i]] for i in range(start, end))
        start = end
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rewardbench_sections(acc_per_subset: dict, counts: dict | None = None,
                         weighting: str = "official") -> dict:
    """{section: weighted accuracy} for sections with data, plus "Score" when all four have it.

    acc_per_subset: {subset: accuracy}; counts: {subset: prompts evaluated}, needed for
    weighting="prompts". Subsets outside RewardBench are ignored.
    """
    if weighting not in ("official", "prompts"):
        raise ValueError(f"weighting must be 'official' or 'prompts', got {weighting!r}")
    if weighting == "prompts" and counts is None:
        raise ValueError("weighting='prompts' needs the per-subset prompt counts")
    weights = REWARDBENCH_COUNTS if weighting == "official" else counts
    out = {}
    for section, subsets in REWARDBENCH_SECTIONS.items():
        present = [s for s in subsets if acc_per_subset.get(s) is not None]
        total = sum(weights[s] for s in present)
        if present and total > 0:
            out[section] = sum(acc_per_subset[s] * weights[s] for s in present) / total
    if len(out) == len(REWARDBENCH_SECTIONS):
        out["Score"] = sum(out.values()) / len(out)
    return out


def _group_metrics(records: list[dict]) -> dict:
    n_samples = sum(r.get("n_samples", 1) for r in records)
    n_invalid = sum(r.get("n_invalid", 0) for r in records)
    m = {"n": len(records),
         "accuracy": accuracy(r["correct"] for r in records if "correct" in r),
         "n_invalid": n_invalid,
         "invalid_rate": n_invalid / n_samples if n_samples else None}
    if any("correct_strict" in r for r in records):
        m["accuracy_strict"] = accuracy(r["correct_strict"] for r in records if "correct_strict" in r)
    scored = [r for r in records if "label" in r and r.get("score") is not None]
    labels = {r["label"] for r in scored}
    if labels == {0, 1}:
        m["roc_auc"] = roc_auc([r["score"] for r in scored], [r["label"] for r in scored])
    return m


def summarize(records, rb_weighting: str = "official") -> dict:
    """Overall and per-subset metrics; RewardBench sections when RewardBench subsets occur."""
    records = list(records)
    by_subset = defaultdict(list)
    for r in records:
        by_subset[r.get("subset") or "all"].append(r)
    out = _group_metrics(records)
    out["subsets"] = {name: _group_metrics(rs) for name, rs in sorted(by_subset.items())}
    rb = {s: m["accuracy"] for s, m in out["subsets"].items() if s in SUBSET_TO_SECTION}
    if rb:
        counts = {s: out["subsets"][s]["n"] for s in rb}
        out["rewardbench"] = rewardbench_sections(rb, counts, rb_weighting)
    return out
