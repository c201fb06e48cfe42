"""The GRM task: one judgment of one item, from the order the responses are shown in to its reward.

Paper: arXiv 2504.02495 §3 (pointwise GRM, Eq. 10 / 11), §4 (shuffled parallel sampling);
GRM_SPEC §1-§3 and §6. Every script (infer_scale.py, train_rft.py, train_rl.py, the demo, the
server) runs a judgment through these functions and nothing else:

    order = grm.order(item, sample, seed)          # order[p] = the response shown at position p
    msgs = grm.messages(item, order)               # one user turn (+ tokenizer's chat template)
    ... sample it with seeds=[grm.stream_seed(item, sample, seed)] ...
    v = grm.judge(item, order, completion.text, completion.finish_reason)
    v.scores        # in the ORIGINAL response order, or None (invalid)
    v.correct       # Eq. 10 (None where it does not apply), v.reward = Eq. 11 (+1 / -1)

Prompt variants (`training`, `baseline`):
  - pairs and lists: the default prompt (scores 1..10), always; `hint=True` appends the RFT
    hint naming the labelled best as shown;
  - single responses: at evaluation (ReaLMistake) the default prompt, scores 1..10, where Eq. 10
    does not apply (`correct` is None; they are scored by ROC-AUC); in training
    (`training=True`) the paper's n = 1 training prompt, score 0/1, correct iff it equals the label.
  - several correct responses (RewardBench 2 "Ties"): the default prompt; `correct` is None.
  - `baseline=True`: the paper's LLM-as-a-judge prompt (pick the best response, \boxed{index});
    the pick becomes one-hot scores in the original order, so Eq. 10 and voting (a majority vote)
    apply unchanged. Pairs and lists only.

One truncation rule: a judgment counts only if generation stopped by itself
(finish_reason "stop"). A judgment that hit the token limit is invalid ("length") even when
it had closed its \\boxed{}: the model had not finished writing it. A prompt the engine refused
(longer than the context) is invalid ("error").

One seed convention: every random choice about an item is drawn from a generator seeded by
(run seed, item id, what is drawn), so it does not depend on which other items are in the run,
on their order, or on the process (sharded runs draw the same). `sample` is "greedy" or an int
(the k sampled judgments of infer_scale, the N_RFT + hinted samples of RFT, the data position of
a GRPO rollout). The greedy judgment also sees a shuffled order: otherwise a judge with a
position bias would score differently depending on where the dataset stores the chosen response.
"""
import random
from dataclasses import dataclass

from .parser import parse_judgment
from .prompts import grm_messages, judge_messages, single_response_messages
from .rewards import best_index, is_correct, rule_reward
from .voting import permute, unshuffle

GREEDY = "greedy"


def _rng(item, seed: int, *what) -> random.Random:
    """random.Random seeded with a string: hashed with SHA-512, the same in every process."""
    return random.Random("|".join(map(str, (seed, item.id, *what))))


def order(item, sample, seed: int) -> list[int]:
    """The order the responses are shown in for this (item, sample, seed): order[p] = index."""
    shown = list(range(len(item.responses)))
    _rng(item, seed, "order", sample).shuffle(shown)
    return shown


def stream_seed(item, sample, seed: int) -> int:
    """The sampler's random stream for this judgment (Engine.generate(..., seeds=[...]))."""
    return _rng(item, seed, "stream", sample).getrandbits(63)


def tie_seed(item, seed: int) -> int:
    """The item's own tie-break draw (voting.predict_best), the same for every k and setting."""
    return _rng(item, seed, "tie").getrandbits(63)


def coin(item, seed: int, what: str) -> float:
    """A uniform [0, 1) draw about the item (e.g. whether RFT gives it a hinted sample)."""
    return _rng(item, seed, what).random()


def _binary(item, training: bool) -> bool:
    return training and item.kind == "single"


def single_best(item) -> bool:
    """Eq. 10 needs one labelled best: false for RewardBench 2's Ties items (several correct) and
    for unlabelled items (truth None: a live request to the reward server)."""
    if item.truth is None:
        return False
    return len(item.truth) == 1 or sum(r == max(item.truth) for r in item.truth) == 1


def check_trainable(items) -> None:
    """Training grades by Eq. 10, which needs one labelled best: refuse items with several."""
    bad = [it.id for it in items if not single_best(it)]
    if bad:
        raise ValueError(f"{len(bad)} item(s) have several correct responses (e.g. id {bad[0]!r}, RewardBench 2 "
                         "Ties): Eq. 10 needs one labelled best, so they can be evaluated but not trained on")


def messages(item, order: list[int], training: bool = False, hint: bool = False,
             baseline: bool = False) -> list[dict]:
    """The GRM prompt for this item with its responses shown in `order` (one user turn);
    `baseline`: the LLM-as-a-judge prompt instead (pick the best response by its index)."""
    if baseline:
        if item.kind == "single":
            raise ValueError(f"item {item.id}: the LLM-as-a-judge baseline picks among several responses")
        return judge_messages(item.prompt, permute(item.responses, order))
    if _binary(item, training):
        return single_response_messages(item.prompt, item.responses[0])
    if hint and (item.kind == "single" or not single_best(item)):
        raise ValueError(f"item {item.id}: the hint names one best response; a {item.kind} item has none")
    shown = permute(item.responses, order)
    return grm_messages(item.prompt, shown, order.index(best_index(item.truth)) if hint else None)


@dataclass(frozen=True)
class Verdict:
    scores: list[int] | None  # original response order; None = invalid
    reason: str | None        # why invalid: the parser's reason, "length" or "error"
    correct: bool | None      # Eq. 10; None where it does not apply (see the module docstring)
    reward: float | None      # Eq. 11: +1 correct, -1 otherwise (an invalid judgment included)

    @property
    def valid(self) -> bool:
        return self.scores is not None


def judge(item, order: list[int], text: str, finish_reason: str = "stop", training: bool = False,
          baseline: bool = False) -> Verdict:
    """Parse one generated judgment and grade it against the item's ground truth. A baseline
    judgment (one index in 1..n) becomes one-hot scores, so voting over them is a majority vote."""
    n = len(item.responses)
    lo, hi = (0, 1) if _binary(item, training) else (1, n) if baseline else (1, 10)
    if finish_reason != "stop":
        scores, reason = None, "length" if finish_reason == "length" else "error"
    else:
        j = parse_judgment(text, 1 if baseline else n, lo, hi)
        shown = j.scores if not baseline or j.scores is None else [int(p == j.scores[0] - 1) for p in range(n)]
        scores, reason = unshuffle(shown, order), j.reason
    if (item.kind == "single" and not training) or not single_best(item):
        return Verdict(scores, reason, None, None)
    return Verdict(scores, reason, is_correct(scores, item.truth), rule_reward(scores, item.truth))
