"""Inference-time scaling: shuffled sampling, voting (Eq. 14) and meta-RM-guided voting.

Paper: arXiv 2504.02495 §4 (Eq. 14, meta RM guided voting); GRM_SPEC.md §6.

Contract:
- Before each of the k samples the responses are shown in a seeded random order
  (grm.order): `shown = permute(responses, order)`, so shown[p] is responses[order[p]]. The
  judgment scores the shown list; `unshuffle(scores, order)` maps its scores back to the
  original order (grm.judge does it), and voting works in the original order. Shuffling turns a position bias of the judge into
  noise that averages out instead of a systematic preference.
- `vote` is Eq. 14: S*_i = sum_j S_{i,j} over the valid judgments j (invalid ones, None, are
  left out; no valid one -> None). Summing k scores in 1..10 spreads the reward over
  k..10k: voting expands the discrete range and breaks ties of single samples, which is
  why the reward gets finer-grained (and more accurate) with k.
- `predict_best` breaks ties of S* as the paper does: shuffle, then argmax (the first
  maximum in a seeded random order), i.e. uniform among tied maxima and reproducible.
  `strict_best` returns None on a tie (tie = wrong: the strict accuracy we also report).
- `meta_rm_filter` keeps the top k_meta of the k judgments by meta reward and returns their
  indices in original order (ties by original order). It ranks all k as the paper does; an
  invalid judgment that is kept adds nothing to the vote. `k_meta_for(k)` is the one rule for
  its default: the paper's k/2 (MetaRM@8 keeps 4, MetaRM@32 keeps 16), rounded down for odd k
  (the paper only uses even k), at least 1.
- `voting_at_k` runs the whole thing for one item, for every k (k = 1 included) and every
  item shape, so evaluation has one path for every setting:
    n >= 2, one labelled best   correct (paper's tie rule), correct_strict (tie = wrong) and
                                credit (RewardBench's convention: a tie among t responses that
                                holds the best earns 1/t, no valid judgment earns 1/n; for a
                                pair that is "a tie or an invalid judgment counts 0.5"; it is
                                the expected value of the paper's rule over its tie-break);
    n >= 2, several best        (RewardBench 2 "Ties") only the voted scores: its own rule
                                lives in benchmarks.py;
    n = 1                       `mean`: the voted score divided by the number of valid
                                judgments, comparable across items however many were invalid
                                (None when none was valid); used for ROC-AUC.
  The caller passes the item's own tie-break seed (grm.tie_seed): the paper draws the tie
  shuffle independently for every item.
"""
import random
from dataclasses import dataclass

from .rewards import best_index


def shuffled_order(n: int, seed) -> list[int]:
    """A seeded random permutation of range(n): order[p] = original index shown at position p."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _check_order(order, n: int) -> None:
    if sorted(order) != list(range(n)):
        raise ValueError(f"order {list(order)} is not a permutation of range({n})")


def permute(items: list, order: list[int]) -> list:
    """The items in shown order: permute(items, order)[p] = items[order[p]]."""
    _check_order(order, len(items))
    return [items[i] for i in order]


def unshuffle(shown_scores, order: list[int]):
    """Scores of the shown list mapped back to the original order (None stays None)."""
    if shown_scores is None:
        return None
    _check_order(order, len(shown_scores))
    original = [0] * len(order)
    for p, i in enumerate(order):
        original[i] = shown_scores[p]
    return original


def vote(judgment_scores) -> list[int] | None:
    """Eq. 14: element-wise sum of the valid score lists; None when none is valid."""
    valid = [s for s in judgment_scores if s is not None]
    if not valid:
        return None
    n = len(valid[0])
    if any(len(s) != n for s in valid):
        raise ValueError(f"score lists of different lengths: {sorted({len(s) for s in valid})}")
    return [sum(col) for col in zip(*valid)]


def predict_best(summed, rng_seed=0) -> int | None:
    """The paper's tie-break: argmax after a seeded shuffle (uniform among tied maxima)."""
    if summed is None:
        return None
    order = shuffled_order(len(summed), rng_seed)
    return max(order, key=lambda i: summed[i])  # max keeps the first maximum it meets


def strict_best(summed) -> int | None:
    """The argmax of S*, or None when it is tied (or there was no valid judgment)."""
    if summed is None:
        return None
    top = max(summed)
    winners = [i for i, s in enumerate(summed) if s == top]
    return winners[0] if len(winners) == 1 else None


def k_meta_for(k: int) -> int:
    """MetaRM@k keeps this many judgments: the paper's k/2, rounded down, at least 1."""
    return max(1, k // 2)


def meta_rm_filter(judgments, meta_rewards, k_meta: int | None = None) -> list[int]:
    """Indices (in original order) of the k_meta judgments with the highest meta reward."""
    k = len(judgments)
    if len(meta_rewards) != k:
        raise ValueError(f"{len(meta_rewards)} meta rewards for {k} judgments")
    if k_meta is None:
        k_meta = k_meta_for(k)
    if k_meta < 1:
        raise ValueError(f"k_meta must be >= 1, got {k_meta}")
    ranked = sorted(range(k), key=lambda i: -meta_rewards[i])  # stable: ties keep original order
    return sorted(ranked[:k_meta])


@dataclass(frozen=True)
class VoteResult:
    summed: list[int] | None     # S* in original response order, None if no valid judgment
    n_valid: int                 # judgments that entered the vote
    n_invalid: int               # invalid judgments among all k samples (kept or not)
    correct: bool | None         # paper's rule: ties broken by shuffle-then-argmax (None: n = 1 or several best)
    correct_strict: bool | None  # a tie at the top counts as wrong
    credit: float | None         # RewardBench's convention (see the module docstring)
    mean: float | None           # n = 1: the voted score per valid judgment


def _credit(summed, truth) -> float:
    if summed is None:
        return 1.0 / len(truth)
    top = max(summed)
    tied = [i for i, s in enumerate(summed) if s == top]
    return 1.0 / len(tied) if best_index(truth) in tied else 0.0


def voting_at_k(judgments, truth, rng_seed=0, meta_rewards=None, k_meta: int | None = None) -> VoteResult:
    """Voting@k (or MetaRM@k when `meta_rewards` is given) for one item.

    judgments: the k judgments' scores in the ORIGINAL response order (grm.judge maps them back
    from the shown order), None for an invalid one. truth: the ground-truth rewards (module docstring).
    """
    if not judgments:
        raise ValueError("voting_at_k needs at least one judgment")
    kept = range(len(judgments)) if meta_rewards is None else meta_rm_filter(judgments, meta_rewards, k_meta)
    scores = [judgments[i] for i in kept]
    summed = vote(scores)
    n_valid = sum(s is not None for s in scores)
    if summed is not None and len(summed) != len(truth):
        raise ValueError(f"judgments score {len(summed)} responses, truth has {len(truth)}")
    n_invalid = sum(s is None for s in judgments)
    if len(truth) == 1:
        mean = None if summed is None else summed[0] / n_valid
        return VoteResult(summed, n_valid, n_invalid, None, None, None, mean)
    if sum(r == max(truth) for r in truth) > 1:  # several correct responses: no single best
        return VoteResult(summed, n_valid, n_invalid, None, None, None, None)
    j = best_index(truth)
    return VoteResult(summed, n_valid, n_invalid, predict_best(summed, rng_seed) == j,
                      strict_best(summed) == j, _credit(summed, truth), None)
