"""Rejective sampling rules, output-only loss masks, length-grouped batches and the SFT loss."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrm.config import ModelConfig
from minigrm.model import CausalLM
from minigrm.batching import length_grouped
from minigrm.rft import Rejection, reject_non_hinted, select, sft_batches, sft_example, sft_loss
from minigrm.training import LogprobForward


def test_non_hinted_rejection():
    assert reject_non_hinted([True, False, True]) == Rejection([0, 2], False)  # incorrect dropped
    assert reject_non_hinted([False, False, False]) == Rejection([], False)  # nothing to keep
    r = reject_non_hinted([True, True, True])  # too easy: the whole data point goes
    assert r.kept == [] and r.too_easy
    assert reject_non_hinted([False, True, False]).kept == [1]
    assert reject_non_hinted([]) == Rejection([], False)


def rec(item, sample, correct, hinted=False, valid=True):
    return {"item": item, "sample": sample, "hinted": hinted, "correct": correct, "valid": valid}


def test_rejection_accounting_on_constructed_trajectories():
    records = [rec("a", 0, True), rec("a", 1, True), rec("a", 2, True), rec("a", 3, True, hinted=True),  # too easy
               rec("b", 0, False, valid=False), rec("b", 1, True), rec("b", 2, False),
               rec("b", 3, False, hinted=True),
               rec("c", 0, False, valid=False), rec("c", 1, False), rec("c", 2, False)]
    accepted, stats = select(records)
    # a: its non-hinted samples are dropped with the item, its correct hinted one is kept
    assert sorted((r["item"], r["sample"]) for r in accepted) == [("a", 3), ("b", 1)]
    assert stats["too_easy_rate"] == pytest.approx(1 / 3) and stats["items"] == 3
    assert stats["acceptance_rate"] == pytest.approx(2 / 11) and stats["invalid_rate"] == pytest.approx(2 / 11)
    assert stats["hinted_acceptance_rate"] == 0.5 and stats["non_hinted_correct_rate"] == pytest.approx(4 / 9)


def test_loss_mask_covers_only_output_tokens():
    ids, mask = sft_example([5, 6, 7], [8, 9])
    assert ids == [5, 6, 7, 8, 9]
    assert mask == [False, False, False, True, True]  # token t is a target predicted from t - 1
    with pytest.raises(ValueError):
        sft_example([], [1])
    with pytest.raises(ValueError):
        sft_example([1], [])


def examples_of(lengths):  # n >= 2 tokens each: n // 2 prompt, the rest output, all distinct
    return [sft_example(list(range(1, 1 + n // 2)), [100 + i] * (n - n // 2)) for i, n in enumerate(lengths)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, 20), min_size=1, max_size=30), st.integers(20, 80))
def test_length_grouped_batches_cover_everything_within_budget(lengths, budget):
    groups = length_grouped(lengths, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each exactly once
    for g in groups:
        assert len(g) * max(lengths[i] for i in g) <= budget
    examples = examples_of(lengths)
    batches = sft_batches(examples, budget, pad_id=-7)
    seen = []
    for input_ids, loss_mask in batches:
        B, T = input_ids.shape
        assert B * T <= budget and input_ids.dtype == torch.long and loss_mask.dtype == torch.bool
        for row in range(B):
            n = int((input_ids[row] != -7).sum())
            assert (input_ids[row, n:] == -7).all() and not loss_mask[row, n:].any()  # right pads, masked
            ids, mask = input_ids[row, :n].tolist(), loss_mask[row, :n].tolist()
            seen.append((ids, mask))
    assert sorted(seen) == sorted(examples)


def test_batches_are_length_grouped_and_shuffle_is_seeded():
    examples = examples_of([3, 10, 4, 9, 5, 10])
    batches = sft_batches(examples, max_tokens_per_batch=20, pad_id=0)
    assert [b[0].shape for b in batches] == [(2, 10), (2, 9), (2, 4)]  # similar lengths together
    a = sft_batches(examples, 20, 0, shuffle_seed=1)
    b = sft_batches(examples, 20, 0, shuffle_seed=1)
    assert [x[0].tolist() for x in a] == [x[0].tolist() for x in b]
    assert sorted(x[0].shape for x in a) == sorted(x[0].shape for x in batches)
    with pytest.raises(ValueError, match="example 1"):
        sft_batches(examples, max_tokens_per_batch=9, pad_id=0)


def tiny_lm():
    torch.manual_seed(0)
    return CausalLM(ModelConfig.from_dict(dict(
        model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)))


def test_sft_loss_equals_naive_cross_entropy_on_outputs():
    model = tiny_lm()
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(1, 64, (n,), generator=g).tolist()  # noqa: E731
    examples = [sft_example(rand(5), rand(4)), sft_example(rand(3), rand(7)), sft_example(rand(8), rand(1))]
    [(input_ids, loss_mask)] = sft_batches(examples, max_tokens_per_batch=100, pad_id=0)
    loss = sft_loss(LogprobForward(model, chunk_size=3), (input_ids, loss_mask))
    # naive: one example at a time, full logits, cross-entropy over the output tokens only
    nll, count = 0.0, 0
    for prompt_and_output, mask in examples:
        ids = torch.tensor([prompt_and_output])
        logits = model(ids)[0, :-1]  # (T-1, V): position t-1 predicts token t
        m = torch.tensor(mask[1:])
        nll = nll + F.cross_entropy(logits[m], ids[0, 1:][m], reduction="sum")
        count += int(m.sum())
    assert count == 4 + 7 + 1
    torch.testing.assert_close(loss, nll / count, atol=1e-5, rtol=1e-5)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(nll / count, params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
