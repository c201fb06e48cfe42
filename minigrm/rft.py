"""Rejective fine-tuning (the cold start, GRM_SPEC §4): which trajectories to keep, and the
next-token loss on the GRM output only.

Contract:
    reject_non_hinted([c_1..c_N]) -> Rejection(kept, too_easy)   N_RFT = 3 in the paper
    reject_hinted(correct) -> bool                                keep iff correct
    sft_example(prompt_ids, output_ids) -> (input_ids, loss_mask)  Python lists
    chat_example(tok, messages, answer_text) -> (input_ids, loss_mask) in tok's template
    length_grouped(lengths, max_tokens) -> [[example index, ...], ...]
    sft_batches(examples, max_tokens_per_batch, pad_id) -> [(input_ids, loss_mask) (B, T)]
    sft_loss(policy, (input_ids, loss_mask)) -> mean NLL over target tokens (0-d fp32)

Rules (§4): non-hinted sampling draws N_RFT trajectories per data point; incorrect ones are
dropped (Eq. 10, invalid judgments count as incorrect), and if *all* are correct the data point
is "too easy" and dropped altogether. A hinted trajectory is kept iff correct.

Mask semantics (shared with training.LogprobForward): loss_mask[t] = 1 means token t is a
target, predicted from position t - 1. Only the GRM output tokens (everything the model
generated after the chat template's generation prompt, EOS included) are targets.

Batching: the decoder attends plain-causally over a whole row and has no block-diagonal
mask, so true sequence packing would let one example attend to the one before it. Instead
this is **length-grouped batching**: examples sorted by length, longest first, cut into
batches whose padded size B × T stays within a token budget, right-padded with pad_id
(pads are never targets, and causal attention never lets a real token see the pads after it).
Shuffle the returned batch order (seeded) in the training loop: the groups come out sorted.
"""
import random
from typing import NamedTuple

import torch



class Rejection(NamedTuple):
    kept: list[int]  # indices of the trajectories to train on
    too_easy: bool  # all N_RFT correct: the whole data point is dropped


def reject_non_hinted(trajectories_correct: list[bool]) -> Rejection:
    if trajectories_correct and all(trajectories_correct):
        return Rejection([], True)
    return Rejection([i for i, c in enumerate(trajectories_correct) if c], False)


def reject_hinted(correct: bool) -> bool:
    return bool(correct)


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


def length_grouped(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group example indices, longest first, so that len(group) * longest <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable among equal lengths
    groups: list[list[int]] = []
    for i in order:
        if lengths[i] > max_tokens:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the batch budget of "
                             f"{max_tokens}; truncate or drop it before batching")
        # the group's first example is its longest, so the padded size is count * that length
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def sft_batches(examples: list[tuple[list[int], list[bool]]], max_tokens_per_batch: int,
                pad_id: int, shuffle_seed: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, loss_mask) examples -> length-grouped, right-padded batches of
    ((B, T) long input_ids, (B, T) bool loss_mask) with B * T <= max_tokens_per_batch.
    With shuffle_seed the batch order is shuffled (the examples inside a batch stay grouped)."""
    groups = length_grouped([len(ids) for ids, _ in examples], max_tokens_per_batch)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(groups)
    batches = []
    for group in groups:
        T = max(len(examples[i][0]) for i in group)
        input_ids = torch.full((len(group), T), pad_id, dtype=torch.long)  # (B, T)
        loss_mask = torch.zeros((len(group), T), dtype=torch.bool)  # (B, T), pads are no target
        for row, i in enumerate(group):
            ids, mask = examples[i]
            assert len(ids) == len(mask), f"example {i}: {len(ids)} ids but {len(mask)} mask entries"
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            loss_mask[row, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
        batches.append((input_ids, loss_mask))
    return batches


def sft_loss(policy, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token NLL over every target token of the batch (a token-level mean, so long
    outputs weigh more than short ones, as in ordinary SFT). `policy` is a training.LogprobForward
    (possibly DDP / FSDP2-wrapped); batch = ((B, T) long input_ids, (B, T) loss_mask) -> 0-d fp32."""
    input_ids, loss_mask = batch
    logp = policy(input_ids, loss_mask)  # (B, T-1), 0 off-target
    return -logp.sum() / loss_mask[:, 1:].sum().clamp(min=1)
