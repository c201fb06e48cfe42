"""Metrics: ROC-AUC vs a brute-force pair count, RewardBench section weighting, summaries."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrm.evaluate import (REWARDBENCH_COUNTS, REWARDBENCH_SECTIONS, accuracy, best_of_n_accuracy,
                              rewardbench_sections, roc_auc, summarize)


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
    with pytest.raises(ValueError, match="None"):
        roc_auc([1, None], [0, 1])


def test_accuracy_and_best_of_n():
    assert accuracy([True, False, True, True]) == 0.75
    assert accuracy([]) is None
    summed = [[10, 30, 20], [40, 40, 1], None, [5, 9, 9]]
    truths = [[0, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert best_of_n_accuracy(summed, truths, tie_break="strict") == 0.25
    random_rule = best_of_n_accuracy(summed, truths, tie_break="random", seed=1)
    assert random_rule in (0.25, 0.5, 0.75)  # the two tied items can go either way; None never counts
    assert random_rule == best_of_n_accuracy(summed, truths, tie_break="random", seed=1)
    with pytest.raises(ValueError):
        best_of_n_accuracy(summed, truths, tie_break="coin")


def test_sections_cover_all_23_official_subsets():
    subsets = [s for ss in REWARDBENCH_SECTIONS.values() for s in ss]
    assert len(subsets) == len(set(subsets)) == 23 == len(REWARDBENCH_COUNTS)
    assert set(subsets) == set(REWARDBENCH_COUNTS)
    assert REWARDBENCH_COUNTS["math-prm"] == sum(REWARDBENCH_COUNTS[f"hep-{x}"]
                                                 for x in ("cpp", "go", "java", "js", "python", "rust"))


def test_section_weighting_on_a_constructed_example():
    acc = {s: 1.0 for s in REWARDBENCH_SECTIONS["Chat"]}
    acc["mt-bench-easy"] = 0.0                          # 28 of the 358 Chat prompts
    acc.update({s: 0.5 for s in REWARDBENCH_SECTIONS["Chat Hard"]})
    acc.update({s: 1.0 for s in REWARDBENCH_SECTIONS["Safety"]})
    acc.update({s: 0.0 for s in REWARDBENCH_SECTIONS["Reasoning"]})
    acc["math-prm"] = 1.0
    official = rewardbench_sections(acc)
    assert official["Chat"] == pytest.approx(330 / 358)
    assert official["Chat Hard"] == pytest.approx(0.5)
    assert official["Safety"] == 1.0
    assert official["Reasoning"] == pytest.approx(0.5)  # math-prm (984) weighs as much as hep-* (6 x 164)
    assert official["Score"] == pytest.approx((330 / 358 + 0.5 + 1.0 + 0.5) / 4)
    counts = dict(REWARDBENCH_COUNTS, **{"math-prm": 447})  # the prompts really evaluated
    by_prompts = rewardbench_sections(acc, counts, weighting="prompts")
    assert by_prompts["Reasoning"] == pytest.approx(447 / (447 + 984))
    assert by_prompts["Chat"] == official["Chat"]
    partial = rewardbench_sections({"alpacaeval-easy": 0.9, "hep-go": 0.4, "not-a-subset": 0.0})
    assert partial == pytest.approx({"Chat": 0.9, "Reasoning": 0.4})  # no "Score" without all four
    with pytest.raises(ValueError):
        rewardbench_sections(acc, weighting="prompts")


def test_summarize_records():
    records = (
        [{"subset": "alpacaeval-easy", "correct": True, "correct_strict": True, "n_samples": 8, "n_invalid": 1}] * 3
        + [{"subset": "alpacaeval-easy", "correct": False, "correct_strict": False, "n_samples": 8}]
        + [{"subset": "hep-go", "correct": True, "correct_strict": False, "n_samples": 8, "n_invalid": 4}] * 2
    )
    out = summarize(records)
    assert out["n"] == 6 and out["accuracy"] == pytest.approx(5 / 6)
    assert out["accuracy_strict"] == pytest.approx(3 / 6)
    assert out["n_invalid"] == 11 and out["invalid_rate"] == pytest.approx(11 / 48)
    assert out["subsets"]["alpacaeval-easy"]["accuracy"] == 0.75
    assert out["subsets"]["hep-go"] == {"n": 2, "accuracy": 1.0, "n_invalid": 8, "invalid_rate": 0.5,
                                        "accuracy_strict": 0.0}
    assert out["rewardbench"] == {"Chat": 0.75, "Reasoning": 1.0}


def test_summarize_single_responses_gives_roc_auc():
    records = [{"score": 9, "label": 1}, {"score": 3, "label": 0}, {"score": 6, "label": 1},
               {"score": 6, "label": 0}, {"score": None, "label": 1, "n_invalid": 1}]
    out = summarize(records)
    assert out["roc_auc"] == pytest.approx(brute_force_auc([9, 3, 6, 6], [1, 0, 1, 0]))
    assert out["n_invalid"] == 1 and out["accuracy"] is None
    assert "rewardbench" not in out and list(out["subsets"]) == ["all"]
