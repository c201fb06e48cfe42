"""Shuffling, Eq. 14 voting, tie rules, meta-RM filtering, and position-bias removal."""
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigrm.voting import (VoteResult, k_meta_for, meta_rm_filter, permute, predict_best, shuffled_order,
                            strict_best, unshuffle, vote, voting_at_k)


def test_shuffled_order_is_a_seeded_permutation():
    assert shuffled_order(6, 1) == shuffled_order(6, 1)
    assert sorted(shuffled_order(6, 1)) == list(range(6))
    assert len({tuple(shuffled_order(6, s)) for s in range(50)}) > 20  # seeds give different orders


@given(st.lists(st.integers(1, 10), min_size=1, max_size=8), st.integers(0, 10**6))
def test_unshuffle_inverts_permute(scores, seed):
    order = shuffled_order(len(scores), seed)
    shown = permute(scores, order)
    assert [shown[p] for p in range(len(order))] == [scores[i] for i in order]
    assert unshuffle(shown, order) == scores


def test_unshuffle_by_hand():
    # shown[0] is response 2, shown[1] is response 0, shown[2] is response 1
    assert unshuffle([7, 8, 9], [2, 0, 1]) == [8, 9, 7]
    assert unshuffle(None, [1, 0]) is None
    with pytest.raises(ValueError, match="not a permutation"):
        unshuffle([1, 2], [0, 0])


def test_vote_sums_valid_judgments_and_expands_the_range():
    assert vote([[8, 3], None, [6, 7], [9, 2]]) == [23, 12]
    assert vote([None, None]) is None
    assert vote([]) is None
    k = 8
    assert vote([[1, 10]] * k) == [k, 10 * k]  # Eq. 14: scores now live in k..10k
    with pytest.raises(ValueError):
        vote([[1, 2], [1, 2, 3]])


def test_strict_best():
    assert strict_best([3, 9, 4]) == 1
    assert strict_best([9, 9, 4]) is None
    assert strict_best(None) is None


def test_predict_best_is_uniform_among_tied_maxima_and_seeded():
    summed = [5, 9, 2, 9, 9]
    counts = Counter(predict_best(summed, seed) for seed in range(3000))
    assert set(counts) == {1, 3, 4}
    assert all(900 < c < 1100 for c in counts.values())
    assert predict_best(summed, 7) == predict_best(summed, 7)
    assert predict_best([1, 8, 3], 0) == 1
    assert predict_best(None, 0) is None


def test_meta_rm_filter():
    judgments = [[1, 2]] * 6
    meta = [0.1, 0.9, 0.5, 0.9, -2.0, 0.3]
    assert meta_rm_filter(judgments, meta) == [1, 2, 3]            # default k // 2 = 3
    assert meta_rm_filter(judgments, meta, k_meta=1) == [1]         # tie 0.9/0.9 -> earlier one
    assert meta_rm_filter(judgments, meta, k_meta=4) == [1, 2, 3, 5]
    assert meta_rm_filter(judgments, meta, k_meta=99) == list(range(6))
    assert meta_rm_filter([[1, 2]], [0.0]) == [0]                   # at least one
    with pytest.raises(ValueError):
        meta_rm_filter(judgments, meta[:3])
    with pytest.raises(ValueError):
        meta_rm_filter(judgments, meta, k_meta=0)


def test_k_meta_is_half_of_k_rounded_down():
    assert [k_meta_for(k) for k in (1, 2, 3, 4, 7, 8, 32)] == [1, 1, 1, 2, 3, 4, 16]


def test_meta_rm_guided_voting_drops_bad_judgments():
    truth = [0, 1]
    good, bad = [2, 9], [9, 1]  # scores in the original order
    judgments = [bad, bad, bad, good, good]
    meta = [-1.0, -2.0, -1.5, 2.0, 3.0]
    plain = voting_at_k(judgments, truth)
    guided = voting_at_k(judgments, truth, meta_rewards=meta, k_meta=2)
    assert plain.summed == [31, 21] and not plain.correct
    assert guided == VoteResult([4, 18], 2, 0, True, True, 1.0, None)


def test_voting_at_k_counts_invalid_and_reports_every_tie_rule():
    truth = [1, 0]
    r = voting_at_k([[7, 7], None, [5, 5]], truth, rng_seed=3)
    assert r.summed == [12, 12] and r.n_valid == 2 and r.n_invalid == 1
    assert r.correct_strict is False and r.credit == 0.5
    assert r.correct == (predict_best([12, 12], 3) == 0)
    none = voting_at_k([None] * 3, truth)
    assert none.summed is None and not none.correct and not none.correct_strict and none.n_invalid == 3
    assert none.credit == 0.5  # RewardBench: no valid judgment counts as a tie
    assert voting_at_k([[3, 3, 9]], [1, 0, 0]).credit == 0.0
    assert voting_at_k([[9, 9, 2]], [1, 0, 0]).credit == 0.5
    assert voting_at_k([None], [1, 0, 0]).credit == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        voting_at_k([], truth)


def test_single_responses_vote_to_a_mean_over_valid_judgments():
    # two invalid judgments must not make an item look worse than one with fewer valid votes
    a = voting_at_k([[8], None, None, [6]], [1])
    b = voting_at_k([[5], [5], [5], [5]], [0])
    assert a.mean == 7.0 and b.mean == 5.0 and a.mean > b.mean
    assert a.summed == [14] and a.correct is None
    assert voting_at_k([None, None], [1]).mean is None


def test_several_correct_responses_only_vote():
    r = voting_at_k([[8, 9, 2], [9, 9, 1]], [1, 1, 0])
    assert r.summed == [17, 18, 3] and r.correct is None and r.credit is None


# --- simulated judges ---------------------------------------------------------------------

def position_biased_judge(shown):
    """Always gives the higher score to the first position, whatever it shows."""
    return [9] + [5] * (len(shown) - 1)


def content_judge(shown):
    """Prefers the right content wherever it is shown."""
    return [9 if r == "good" else 4 for r in shown]


def run(judge, items, k, shuffle):
    results = []
    for item_id, (responses, truth) in enumerate(items):
        samples = []
        for j in range(k):
            order = shuffled_order(len(responses), item_id * 1000 + j) if shuffle else list(range(len(responses)))
            samples.append(unshuffle(judge(permute(responses, order)), order))
        results.append(voting_at_k(samples, truth, rng_seed=item_id))
    return results


def make_items(count, n, best_at=None, seed=0):
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        j = rng.randrange(n) if best_at is None else best_at
        items.append((["good" if i == j else "bad" for i in range(n)], [int(i == j) for i in range(n)]))
    return items


@pytest.mark.parametrize("best_at, unshuffled_accuracy", [(0, 1.0), (1, 0.0)])
def test_shuffling_turns_position_bias_into_chance(best_at, unshuffled_accuracy):
    items = make_items(300, 2, best_at=best_at)
    fixed = run(position_biased_judge, items, k=8, shuffle=False)
    assert sum(r.correct for r in fixed) / len(fixed) == unshuffled_accuracy  # bias decides everything
    shuffled = run(position_biased_judge, items, k=8, shuffle=True)
    acc = sum(r.correct for r in shuffled) / len(shuffled)
    assert 0.4 < acc < 0.6  # chance for n = 2: the bias gains nothing
    # its votes spread over both responses instead of piling on one position
    mean_gap = sum(abs(r.summed[0] - r.summed[1]) for r in shuffled) / len(shuffled)
    assert mean_gap < 0.5 * 8 * (9 - 5)


@given(st.integers(2, 6), st.integers(0, 10**6), st.integers(1, 8))
def test_content_judge_is_right_under_any_shuffle(n, seed, k):
    rng = random.Random(seed)
    j = rng.randrange(n)
    responses = ["good" if i == j else "bad" for i in range(n)]
    truth = [int(i == j) for i in range(n)]
    samples = []
    for s in range(k):
        order = shuffled_order(n, seed + s)
        shown_scores = content_judge(permute(responses, order))
        assert unshuffle(shown_scores, order) == content_judge(responses)
        samples.append(unshuffle(shown_scores, order))
    r = voting_at_k(samples, truth, rng_seed=seed)
    assert r.correct and r.correct_strict and r.summed == [9 * k if i == j else 4 * k for i in range(n)]
