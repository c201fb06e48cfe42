"""Scoring one request with the GRM: k shuffled judgments, voting, the meta RM (paper §4, Eq. 14).

The live counterpart of infer_scale.py's per-item evaluation, for callers that have no ground
truth (the reward server, RL reward functions):

    req = Request(prompt, responses, k=8, k_meta=None, seed=0)
    orders, messages = plan(req)                      # k shuffled orders, k GRM prompts (grm.py)
    ... sample one judgment per prompt; optionally rate each with the meta RM ...
    out = result(req, orders, completions, meta_rewards=None)

`result` returns
    scores   per response, the voted score divided by the number of valid judgments that entered
             the vote (Eq. 14's sum S*, made comparable across k and across requests with different
             numbers of invalid judgments); None when no judgment was valid
    votes    the valid judgments' scores in the original response order (the vote's terms)
    n_valid, n_invalid
    best     argmax of S* with the paper's tie rule (a seeded shuffle, then argmax), None if no vote
    tie      whether S* has several maxima
    meta     the meta reward of each judgment, when a meta RM rated them (MetaRM@k keeps the top
             k_meta, default k/2 rounded down: voting.k_meta_for)
    judgments  the k generated texts, when asked
Orders and the tie-break come from (seed, request) through grm.py, so a seeded request is
reproducible; without a seed a random one is drawn per request.
"""
import os
from dataclasses import dataclass

from . import grm
from .data import Item
from .voting import k_meta_for, meta_rm_filter, predict_best, vote


@dataclass
class Request:
    prompt: str | list[dict]       # the query: a string or {"role", "content"} turns ending with the user's
    responses: list[str]           # the n >= 1 responses to score together
    k: int = 8                     # judgments sampled
    k_meta: int | None = None      # MetaRM@k: keep this many by meta reward (None: plain voting)
    temperature: float = 0.5       # the paper's sampling temperature
    max_tokens: int = 1024
    seed: int | None = None
    return_judgments: bool = False

    def __post_init__(self):
        if self.seed is None:
            self.seed = int.from_bytes(os.urandom(7), "little")
        kind = "single" if len(self.responses) == 1 else "list"
        self.item = Item("request", self.prompt, list(self.responses), None, kind)


def plan(req: Request) -> tuple[list[list[int]], list[list[dict]]]:
    """The k orders the responses are shown in, and the k GRM prompts (one user turn each)."""
    orders = [grm.order(req.item, j, req.seed) for j in range(req.k)]
    return orders, [grm.messages(req.item, o) for o in orders]


def result(req: Request, orders, completions, meta_rewards=None) -> dict:
    """The response of one scored request (module docstring)."""
    verdicts = [grm.judge(req.item, o, c.text, c.finish_reason) for o, c in zip(orders, completions)]
    scores = [v.scores for v in verdicts]
    kept = list(range(len(scores)))
    if meta_rewards is not None and req.k_meta is not None:
        kept = meta_rm_filter(scores, meta_rewards, req.k_meta or k_meta_for(req.k))
    votes = [scores[i] for i in kept if scores[i] is not None]
    summed = vote(votes)
    out = {"scores": None if summed is None else [s / len(votes) for s in summed],
           "votes": votes, "n_valid": sum(s is not None for s in scores),
           "n_invalid": sum(s is None for s in scores),
           "best": predict_best(summed, grm.tie_seed(req.item, req.seed)),
           "tie": summed is not None and summed.count(max(summed)) > 1}
    if meta_rewards is not None:
        out["meta"] = list(meta_rewards)
    if req.return_judgments:
        out["judgments"] = [c.text for c in completions]
    return out


def reward_of(score: float) -> float:
    """A mean voted score in 1..10 -> a reward in [-1, 1] (the servers' and integrations' mapping)."""
    return (score - 5.5) / 4.5
