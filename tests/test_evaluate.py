"""Metrics: ROC-AUC vs a brute-force pair count; summaries with bootstrap intervals."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

import math

from minigrm.evaluate import LOWEST, roc_auc, summarize


def brute_force_auc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l == 1]
    neg = [s for s, l in zip(scores, labels) if l == 0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 1)), min_size=2, max_size=60))
def test_roc_auc_matches_brute_force(pairs):
    scores, labels = [s for s, _ in pairs], [l for _, l in pairs]
    if len(set(labels)) < 2:
        with pytest.raises(ValueError, match="one positive and one negative"):
            roc_auc(scores, labels)
    else:
        assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_roc_auc_known_values():
    assert roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert roc_auc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert roc_auc([5, 5, 5, 5], [0, 1, 0, 1]) == 0.5           # all tied
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # the sklearn docs example
    with pytest.raises(ValueError):
        roc_auc([1, 2], [0, 2])
    with pytest.raises(ValueError, match="lowest score"):
        roc_auc([1, float("nan")], [0, 1])
    assert roc_auc([LOWEST, 2, 3], [1, 0, 1]) == 0.5  # an invalid positive ranks below everything


def pair(correct, subset=None, strict=None, credit=None, **kw):
    return {"subset": subset, "correct": correct, "correct_strict": correct if strict is None else strict,
            "credit": float(correct) if credit is None else credit, "n_responses": 2, "n_samples": 1, **kw}


def test_summarize_pools_items_and_reports_subsets_with_intervals():
    records = ([pair(True, "a", n_samples=8, n_invalid=1)] * 3 + [pair(False, "a", n_samples=8)]
               + [pair(True, "b", strict=False, credit=0.5, n_samples=8, n_invalid=4, n_truncated=2)] * 2)
    out = summarize(records, n_boot=200)
    assert out["accuracy"]["value"] == pytest.approx(5 / 6) and out["accuracy"]["n"] == 6
    assert out["accuracy_strict"]["value"] == pytest.approx(3 / 6)
    assert out["accuracy_rb"]["value"] == pytest.approx(4 / 6)
    assert out["invalid_rate"] == pytest.approx(11 / 48) and out["truncated_rate"] == pytest.approx(4 / 48)
    assert out["subsets"]["a"]["accuracy"]["value"] == 0.75 and out["subsets"]["b"]["accuracy_strict"]["value"] == 0
    assert out["chance"] == 0.5 and out["benchmarks"] == {} and "overall" not in out
    for name in ("accuracy", "accuracy_strict", "accuracy_rb"):
        e = out[name]
        assert e["lo"] <= e["value"] <= e["hi"]
    # resampling stays within each subset: b is always right, so its interval is a point
    assert out["subsets"]["b"]["accuracy"]["lo"] == out["subsets"]["b"]["accuracy"]["hi"] == 1.0
    assert summarize(records, n_boot=200) == out  # seeded: the same numbers every run


@pytest.mark.parametrize("n, p", [(400, 0.5), (1000, 0.7)])
def test_bootstrap_interval_matches_the_binomial_width(n, p):
    records = [pair(i < round(p * n)) for i in range(n)]
    e = summarize(records, n_boot=2000, seed=1)["accuracy"]
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # the normal approximation, accurate at these n
    assert e["value"] == pytest.approx(p)
    assert e["hi"] - e["lo"] == pytest.approx(2 * half, rel=0.12)
    assert e["lo"] < p < e["hi"]


def test_single_responses_give_roc_auc_and_invalid_items_rank_lowest():
    records = [{"score": 9, "label": 1}, {"score": 3, "label": 0}, {"score": 6, "label": 1},
               {"score": 6, "label": 0}, {"score": None, "label": 1, "n_invalid": 1}]
    out = summarize(records, n_boot=100)
    # the invalid positive is counted, below every valid score: 4 of its... pairs are lost
    assert out["roc_auc"]["value"] == pytest.approx(brute_force_auc([9, 3, 6, 6, -1], [1, 0, 1, 0, 1]))
    assert out["roc_auc"]["n"] == 5 and out["accuracy"] is None
    assert list(out["subsets"]) == ["all"]
    # dropping invalid items instead would have rewarded the judge for failing on a hard one
    assert out["roc_auc"]["value"] < brute_force_auc([9, 3, 6, 6], [1, 0, 1, 0])


def test_benchmarks_and_overall():
    rb = [pair(True, "alpacaeval-easy", benchmark="RewardBench")] * 2 + [pair(False, "hep-go", benchmark="RewardBench")]
    rmb = ([pair(True, "Help-Pair", benchmark="RMB")] * 3 + [pair(False, "Help-Pair", benchmark="RMB")]
           + [pair(False, "Harm-BoN", benchmark="RMB")] * 2)
    out = summarize(rb + rmb, n_boot=100)
    assert out["benchmarks"]["RewardBench"]["value"] == pytest.approx((1.0 + 0.0) / 2)  # mean of 2 sections
    assert out["benchmarks"]["RewardBench"]["sections"] == {"Chat": 1.0, "Reasoning": 0.0}
    assert not out["benchmarks"]["RewardBench"]["complete"]
    assert out["benchmarks"]["RMB"]["value"] == pytest.approx((0.75 + 0.0) / 2)  # plain mean, not pooled 3/6
    assert out["overall"]["value"] == pytest.approx((0.5 + 0.375) / 2)
