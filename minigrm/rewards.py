"""Correctness of a judgment and the rule-based RL reward (paper Eq. 10 and 11).

Paper: arXiv 2504.02495 §3.2 (rule-based RL), Eq. 10 / 11; GRM_SPEC.md §3.

Contract:
- `truth` holds the ground-truth rewards r_1..r_n of the n responses (e.g. [1, 0] for a
  chosen/rejected pair, a one-hot list for best-of-N, [label] for a single response).
- n >= 2: the judgment is correct iff S_j > S_i for every i != j, j = argmax r (strict: a
  tie with the labelled best is incorrect). A truth without a unique maximum is a data
  error, not model output, and raises ValueError.
- n = 1: correct iff S_1 == r_1 (r_1 in {0, 1} with the single-response prompt).
- `scores is None` (an invalid judgment, see parser.py) is incorrect.
- `rule_reward` is +1.0 when correct and -1.0 otherwise (Eq. 11); no format reward.
- Scores of the wrong length mean the caller parsed with the wrong n: ValueError.
"""


def best_index(truth) -> int:
    """The index of the unique maximum of `truth` (0 for a single response)."""
    if not truth:
        raise ValueError("truth must hold the ground-truth reward of at least one response")
    top = max(truth)
    winners = [i for i, r in enumerate(truth) if r == top]
    if len(winners) != 1:
        raise ValueError(f"truth {list(truth)} has no unique maximum (tied at indices {winners}); "
                         "Eq. 10 needs one labelled best response")
    return winners[0]


def is_correct(scores, truth) -> bool:
    """Eq. 10: does the judgment's score list agree with the ground truth?"""
    j = best_index(truth)  # validates the data even when the judgment is invalid
    if scores is None:
        return False
    if len(scores) != len(truth):
        raise ValueError(f"got {len(scores)} scores for {len(truth)} responses")
    if len(truth) == 1:
        return scores[0] == truth[0]
    return all(scores[j] > s for i, s in enumerate(scores) if i != j)


def rule_reward(scores, truth) -> float:
    """Eq. 11: +1 for a correct judgment, -1 otherwise (invalid judgments included)."""
    return 1.0 if is_correct(scores, truth) else -1.0
