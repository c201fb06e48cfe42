"""The GRM server as the reward of other trainers' RL runs (TRL, and anything that calls a function).

    from minigrm.integrations import grm_reward
    reward = grm_reward("http://127.0.0.1:8000", k=8)
    trainer = trl.GRPOTrainer(model=..., reward_funcs=reward, ...)

`grm_reward(url, ...)` returns a function with TRL GRPOTrainer's reward-function signature,
`reward(prompts, completions, **kwargs) -> list[float | None]`; `async_grm_reward` the same as a
coroutine function. The G completions of one prompt (TRL passes each prompt once per
completion, the G of a group adjacent) are judged TOGETHER in one multi-response GRM call: the
paper's pointwise GRM scores all responses of a query in one prompt, and the k judgments share
that prompt's prefix in the server's cache. A completion's reward is its mean voted score s
mapped to (s - 5.5) / 4.5 in [-1, 1], or None when every judgment of its group was invalid (TRL
then leaves it out of that reward's sum). Prompts and completions may be plain strings or TRL's
conversational lists of {"role", "content"} messages.

Only the standard library is used (urllib; the async variant runs the same call in a thread).
"""
import asyncio
import json
import urllib.error
import urllib.request

from .scoring import reward_of


def _text(message) -> str:
    """A TRL completion (a string, or [{"role": "assistant", "content": ...}]) -> its text."""
    if isinstance(message, str):
        return message
    return "".join(m["content"] for m in message if m.get("role") == "assistant")


def _groups(prompts) -> list[tuple[int, int]]:
    """[start, end) of each run of equal adjacent prompts: the G completions of one prompt."""
    spans, start = [], 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            spans.append((start, i))
            start = i
    return spans


def post(url: str, route: str, body: dict, timeout: float = 600.0) -> dict:
    """POST JSON, return JSON; an HTTP error raises with the server's message."""
    req = urllib.request.Request(url.rstrip("/") + route, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{route}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from None


def grm_reward(url: str, k: int = 8, temperature: float = 0.5, max_tokens: int = 1024, seed: int | None = None,
               timeout: float = 600.0):
    """A TRL reward function backed by a `python -m minigrm.serve` server (module docstring)."""

    def grm(prompts, completions, **kwargs) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        rewards: list[float | None] = [None] * len(completions)
        for start, end in _groups(prompts):
            body = {"prompt": prompts[start], "responses": [_text(c) for c in completions[start:end]], "k": k,
                    "temperature": temperature, "max_tokens": max_tokens, "seed": seed}
            out = post(url, "/score", body, timeout)
            if out["scores"] is not None:
                rewards[start:end] = [reward_of(s) for s in out["scores"]]
        return rewards

    grm.__name__ = "minigrm_grm"  # TRL logs each reward function under its name
    return grm


def async_grm_reward(url: str, **kw):
    """grm_reward as a coroutine function (for trainers that await their reward functions); the
    groups of one call are scored concurrently, so the server batches them together."""
    call = grm_reward(url, **kw)

    async def grm(prompts, completions, **kwargs) -> list[float | None]:
        spans = _groups(prompts)
        parts = await asyncio.gather(*(asyncio.to_thread(call, prompts[s:e], completions[s:e]) for s, e in spans))
        return [r for part in parts for r in part]

    grm.__name__ = "minigrm_grm"
    return grm
