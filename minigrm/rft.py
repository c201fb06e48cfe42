"""Rejective fine-tuning (the cold start, GRM_SPEC §4): which trajectories to keep, and the
next-token loss on the GRM output only.

Contract:
    reject_non_hinted([c_1..c_N]) -> Rejection(kept, too_easy)   N_RFT = 3 in the paper
    select(trajectory records) -> (accepted records, rates)     both rules over a run's samples
    sft_example(prompt_ids, output_ids) -> (input_ids, loss_mask)  Python lists
    chat_example(tok, messages, answer_text) -> (input_ids, loss_mask) in tok's template
    sft_batches(examples, max_tokens_per_batch, pad_id) -> [(input_ids, loss_mask) (B, T)]
    sft_loss(policy, (input_ids, loss_mask)) -> mean NLL over target tokens (0-d fp32)

Rules (§4): non-hinted sampling draws N_RFT trajectories per data point; incorrect ones are
dropped (Eq. 10, invalid judgments count as incorrect), and if *all* are correct the data point
is "too easy" and dropped altogether. A hinted trajectory is kept iff correct.

Mask semantics (shared with training.LogprobForward): loss_mask[t] = 1 means token t is a
target, predicted from position t - 1. Only the GRM output tokens (everything the model
generated after the chat template's generation prompt, EOS included) are targets.

Batching: length-grouped and right-padded (batching.py says why not packed).
"""
import random
from typing import NamedTuple

import torch

from .batching import length_grouped, right_pad


class Rejection(NamedTuple):
    kept: list[int]  # indices of the trajectories to train on
    too_easy: bool  # all N_RFT correct: the whole data point is dropped


def reject_non_hinted(trajectories_correct: list[bool]) -> Rejection:
    if trajectories_correct and all(trajectories_correct):
        return Rejection([], True)
    return Rejection([i for i, c in enumerate(trajectories_correct) if c], False)


def select(records: list[dict], reject: bool = True) -> tuple[list[dict], dict]:
    """Rejective sampling over sampled trajectory records {"item", "sample", "hinted", "correct",
    "valid"} -> (accepted records, rates): per item, the non-hinted ones by reject_non_hinted; a
    hinted one is kept iff correct. reject=False keeps every record (the paper's "w/o rejective
    sampling" ablation); the rates are those rejection would have had."""
    by_item: dict[str, list[dict]] = {}
    for r in records:
        by_item.setdefault(r["item"], []).append(r)
    accepted, too_easy = [], 0
    for rs in by_item.values():
        plain = sorted((r for r in rs if not r["hinted"]), key=lambda r: r["sample"])
        rejection = reject_non_hinted([r["correct"] for r in plain])
        too_easy += rejection.too_easy
        accepted += [plain[i] for i in rejection.kept] + [r for r in rs if r["hinted"] and r["correct"]]
    if not reject:
        accepted = list(records)
    plain = [r for r in records if not r["hinted"]]
    hinted = [r for r in records if r["hinted"]]
    n = max(len(records), 1)
    stats = {"items": len(by_item), "trajectories": len(records), "accepted": len(accepted),
             "acceptance_rate": len(accepted) / n, "too_easy_rate": too_easy / max(len(by_item), 1),
             "invalid_rate": sum(not r["valid"] for r in records) / n,
             "non_hinted_correct_rate": sum(r["correct"] for r in plain) / max(len(plain), 1),
             "hinted_acceptance_rate": sum(r["correct"] for r in hinted) / len(hinted) if hinted else None}
    return accepted, stats


def sft_example(prompt_ids: list[int], output_ids: list[int]) -> tuple[list[int], list[bool]]:
    """Prompt (chat template included) + GRM output -> (input_ids, loss_mask), loss on the
    output only. The prompt cannot be empty: the first output token needs a position to be
    predicted from."""
    if not prompt_ids or not output_ids:
        raise ValueError(f"sft_example needs a non-empty prompt and output, got "
                         f"{len(prompt_ids)} prompt and {len(output_ids)} output tokens")
    input_ids = list(prompt_ids) + list(output_ids)
    loss_mask = [False] * len(prompt_ids) + [True] * len(output_ids)
    return input_ids, loss_mask


def chat_example(tok, messages: list[dict], answer: str) -> tuple[list[int], list[bool]]:
    """A conversation and the assistant's answer TEXT -> (input_ids, loss_mask) in `tok`'s own
    chat template and vocabulary: the prompt is `messages` with the generation prompt, the
    targets are the answer and whatever the template closes the turn with (end-of-turn token).
    Re-encoding the text (rather than reusing a sampler's token ids) is what lets RFT data come
    from a sampler with another tokenizer."""
    prefix = tok.apply_chat_template(messages, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
    if not full.startswith(prefix):
        raise ValueError("the chat template does not render the conversation as prompt + answer; "
                         "pass a template that does (--chat-template)")
    return sft_example(tok.encode(prefix), tok.encode(full[len(prefix):]))


def sft_batches(examples: list[tuple[list[int], list[bool]]], max_tokens_per_batch: int,
                pad_id: int, shuffle_seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, loss_mask) examples -> length-grouped, right-padded batches of
    ((B, T) long input_ids, (B, T) bool loss_mask) with B * T <= max_tokens_per_batch (pads are
    never targets). With shuffle_seed the batch order is shuffled (a batch's examples stay together)."""
    for i, (ids, mask) in enumerate(examples):
        if len(ids) != len(mask):
            raise ValueError(f"example {i}: {len(ids)} ids but {len(mask)} mask entries")
    groups = length_grouped([len(ids) for ids, _ in examples], max_tokens_per_batch)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(groups)
    return [(right_pad([examples[i][0] for i in g], pad_id), right_pad([examples[i][1] for i in g], False, torch.bool))
            for g in groups]


def sft_loss(policy, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token NLL over every target token of the batch (a token-level mean, so long
    outputs weigh more than short ones, as in ordinary SFT). `policy` is a training.LogprobForward
    (possibly DDP / FSDP2-wrapped); batch = ((B, T) long input_ids, (B, T) loss_mask) -> 0-d fp32."""
    input_ids, loss_mask = batch
    logp = policy(input_ids, loss_mask)  # (B, T-1), 0 off-target
    return -logp.sum() / loss_mask[:, 1:].sum().clamp(min=1)
