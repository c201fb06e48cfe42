"""Eq. 10 correctness and the Eq. 11 rule reward."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrm.parser import parse_judgment
from minigrm.rewards import best_index, is_correct, rule_reward


@pytest.mark.parametrize("scores, truth, correct", [
    ([9, 3], [1, 0], True),            # chosen first
    ([3, 9], [0, 1], True),            # chosen second
    ([3, 9], [1, 0], False),
    ([7, 7], [1, 0], False),           # a tie with the best is incorrect (strict)
    ([2, 8, 5], [0, 1, 0], True),
    ([2, 8, 8], [0, 1, 0], False),     # tie with any other response
    ([9, 8, 10], [1, 0, 0], False),
    ([4, 3, 3, 1], [0.9, 0.2, 0.2, 0.1], True),  # graded truth: only its unique max matters
    ([1], [1], True),                  # n = 1: exact match with the label
    ([0], [0], True),
    ([1], [0], False),
    ([7], [1], False),                 # a 1..10 score never equals a 0/1 label
    (None, [1, 0], False),             # invalid judgment
    (None, [1], False),
])
def test_eq10(scores, truth, correct):
    assert is_correct(scores, truth) is correct
    assert rule_reward(scores, truth) == (1.0 if correct else -1.0)


@pytest.mark.parametrize("truth", [[1, 1], [0, 1, 1], [0.5, 0.5, 0.1], []])
def test_truth_without_unique_max_is_a_data_error(truth):
    with pytest.raises(ValueError):
        is_correct([1] * len(truth), truth)
    with pytest.raises(ValueError):
        is_correct(None, truth)  # caught even when the judgment is invalid


def test_wrong_number_of_scores_is_a_caller_error():
    with pytest.raises(ValueError, match="3 scores for 2 responses"):
        is_correct([1, 2, 3], [1, 0])


def test_best_index():
    assert best_index([0, 0, 1, 0]) == 2
    assert best_index([0]) == 0


@given(st.lists(st.integers(1, 10), min_size=2, max_size=6), st.data())
def test_correct_iff_best_strictly_above_all_others(scores, data):
    j = data.draw(st.integers(0, len(scores) - 1))
    truth = [int(i == j) for i in range(len(scores))]
    others = [s for i, s in enumerate(scores) if i != j]
    assert is_correct(scores, truth) == (scores[j] > max(others))
    assert rule_reward(scores, truth) in (1.0, -1.0)


def test_end_to_end_from_generated_text():
    truth = [0, 1]
    assert rule_reward(parse_judgment("Scores: \\boxed{4, 8}", 2).scores, truth) == 1.0
    assert rule_reward(parse_judgment("Scores: \\boxed{8, 8}", 2).scores, truth) == -1.0
    assert rule_reward(parse_judgment("Scores: \\boxed{4, 8", 2).scores, truth) == -1.0  # truncated
