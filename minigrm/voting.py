"""Inference-time scaling: shuffled sampling, voting (Eq. 14) and meta-RM-guided voting.

Paper: arXiv 2504.02495 §4 (Eq. 14, meta RM guided voting); GRM_SPEC.md §6.

Contract:
- Before each of the k samples the responses are shown in a seeded random order:
  `order = shuffled_order(n, seed)`, `shown = permute(responses, order)`, so shown[p] is
  responses[order[p]]. The judgment scores the shown list; `unshuffle(scores, order)` maps
  its scores back to the original order. Shuffling turns a position bias of the judge into
  noise that averages out instead of a systematic preference.
- `vote` is Eq. 14: S*_i = sum_j S_{i,j} over the valid judgments j (invalid ones, None, are
  left out; no valid one -> None). Summing k scores in 1..10 spreads the reward over
  k..10k: voting expands the discrete range and breaks ties of single samples, which is
  why the reward gets finer-grained (and more accurate) with k.
- `predict_best` breaks ties of S* as the paper does: shuffle, then argmax (the first
  maximum in a seeded random order), i.e. uniform among tied maxima and reproducible.
  `strict_best` returns None on a tie (tie = wrong: the strict accuracy we also report).
- `meta_rm_filter` keeps the top k_meta of the k judgments by meta reward (default k // 2,
  at least 1; ties by original order) and returns their indices in original order. It
  ranks all k as the paper does; an invalid judgment that is kept adds nothing to the vote.
- `voting_at_k` runs the whole thing for one item with n >= 2 and reports both tie rules.
  (Single responses are scored by their voted sum, e.g. for ROC-AUC; use `vote` directly.)
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


def meta_rm_filter(judgments, meta_rewards, k_meta: int | None = None) -> list[int]:
    """Indices (in original order) of the k_meta judgments with the highest meta reward."""
    k = len(judgments)
    if len(meta_rewards) != k:
        raise ValueError(f"{len(meta_rewards)} meta rewards for {k} judgments")
    if k_meta is None:
        k_meta = max(1, k // 2)
    if k_meta < 1:
        raise ValueError(f"k_meta must be >= 1, got {k_meta}")
    ranked = sorted(range(k), key=lambda i: -meta_rewards[i])  # stable: ties keep original order
    return sorted(ranked[:k_meta])


@dataclass(frozen=True)
class VoteResult:
    summed: list[int] | None    # S* in original response order, None if no valid judgment
    n_valid: int                # judgments that entered the vote
    n_invalid: int              # invalid judgments among all k samples (kept or not)
    correct: bool               # paper's rule: ties broken by shuffle-then-argmax
    correct_strict: bool        # a tie at the top counts as wrong


def voting_at_k(samples, truth, rng_seed=0, meta_rewards=None, k_meta: int | None = None) -> VoteResult:
    """Voting@k (or MetaRM@k when `meta_rewards` is given) for one item.

    samples: k pairs (shown_scores or None, order) as produced with `shuffled_order`.
    truth: ground-truth rewards in original order with a unique maximum (n >= 2).
    """
    if len(truth) < 2:
        raise ValueError("voting_at_k needs n >= 2 responses; for one response use vote()")
    j = best_index(truth)
    kept = range(len(samples)) if meta_rewards is None else meta_rm_filter(samples, meta_rewards, k_meta)
    scores = [unshuffle(samples[i][0], samples[i][1]) for i in kept]
    summed = vote(scores)
    n_valid = sum(s is not None for s in scores)
    if summed is not None and len(summed) != len(truth):
        raise ValueError(f"judgments score {len(summed)} responses, truth has {len(truth)}")
    n_invalid = sum(shown is None for shown, _ in samples)
    return VoteResult(summed, n_valid, n_invalid,
                      predict_best(summed, rng_seed) == j, strict_best(summed) == j)
