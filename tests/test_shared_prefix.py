"""Prefix-shared log-probs (shared_prefix.py) equal the per-sequence forward, values and gradients
w.r.t. every parameter, family by family (fp32); and the prompt really is computed once."""
import pytest
import torch

import minigrm
from factories import VOCAB, hf_model, save_hf
from minigrm.logprob import sequence_logprobs
from minigrm.shared_prefix import shared_prefix_hidden
from minigrm.training import LogprobForward

FAMILIES = ["llama", "qwen2", "qwen3", "gemma2", "deepseek_v2"]
P, G = 11, 3  # a prompt longer than gemma2's sliding window (7)
LENGTHS = [9, 5, 1]  # completions of different lengths, right-padded with 0

pytestmark = pytest.mark.usefixtures("one_thread")


def group(seed=0):
    """(G, P + 9) ids: one prompt, G completions; (G, P + 9) mask of the completions' tokens."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (P,), generator=g)
    ids = torch.zeros(G, P + max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, n in enumerate(LENGTHS):
        ids[row, :P] = prompt
        ids[row, P:P + n] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, P:P + n] = True
    return ids, mask


@pytest.fixture(scope="module", params=FAMILIES)
def model(request, tmp_path_factory):
    return minigrm.load_model(save_hf(hf_model(request.param), tmp_path_factory.mktemp(request.param))).train()


def values_and_grads(fn, model):
    out = fn()
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # a weighted sum
    params = [p for p in model.parameters()]
    return out, torch.autograd.grad((out * weights).sum(), params, allow_unused=True)


def test_equals_per_sequence_values_and_gradients(model):
    ids, mask = group()
    shared, g_shared = values_and_grads(lambda: sequence_logprobs(model, ids, mask, chunk_size=4, prompt_len=P), model)
    plain, g_plain = values_and_grads(lambda: sequence_logprobs(model, ids, mask, chunk_size=4), model)
    assert shared.shape == (G, P + max(LENGTHS) - 1) and plain[mask[:, 1:]].std() > 0.5
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)
    n_checked = 0
    for a, b in zip(g_shared, g_plain):
        if b is None:  # e.g. a Gemma-2 sliding window's unused nothing; both paths agree on it
            assert a is None
            continue
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        n_checked += b.abs().sum() > 0
    assert n_checked > 10  # gradients reach the layers


def test_hidden_states_equal_the_decoder(model):
    ids, _ = group(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(shared_prefix_hidden(model.model, ids, P), model.model(ids), atol=1e-5, rtol=1e-5)


def test_prompt_runs_once_and_under_grad_checkpointing(tmp_path):
    model = minigrm.load_model(save_hf(hf_model("llama"), tmp_path)).train()
    rows = []
    model.model.layers[1].mlp.down_proj.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    ids, mask = group()
    policy = LogprobForward(model)
    out, g_ref = values_and_grads(lambda: policy(ids, mask), model)
    assert rows == [G * ids.shape[1]]  # per sequence: G * (P + Tc) rows
    rows.clear()
    model.model.gradient_checkpointing = True
    shared, g_shared = values_and_grads(lambda: policy(ids, mask, prompt_len=P), model)
    assert rows[:2] == [P, G * (ids.shape[1] - P)]  # the prompt once, then the completions (+ recompute)
    torch.testing.assert_close(shared, out, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_shared, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rows_must_share_the_prompt(tmp_path):
    model = minigrm.load_model(save_hf(hf_model("qwen2"), tmp_path))
    ids, mask = group()
    ids[1, 4] += 1
    with pytest.raises(ValueError, match="do not share their first 11 tokens"):
        sequence_logprobs(model, ids, mask, prompt_len=P)
    with pytest.raises(ValueError, match="prompt_len"):
        sequence_logprobs(model, ids, mask, prompt_len=ids.shape[1])


def test_bench_update_shared_keeps_fewer_activations():
    """The benchmark's deterministic figure (its timings are for people, not tests): the shared
    path keeps far fewer activations for the backward; LoRA trains r * (in + out) per projection."""
    from minigrm import bench_update
    args = ["--layers", "1", "--prompt-len", "48", "--completion-len", "8", "--repeats", "1", "--threads", "1",
            "--lora-rank", "4"]
    r = {v: bench_update.run(bench_update.parse_args(args + ["--variant", v])) for v in bench_update.VARIANTS}
    assert r["shared"]["saved_mb"] < 0.6 * r["per-sequence"]["saved_mb"]
    C, C_kv, inner = 576, 192, 1536  # SmolLM2-135M: q, o (C -> C), k, v (C -> C_kv), gate, up, down (C <-> inner)
    assert r["shared"]["trainable"] == 4 * (2 * (C + C) + 2 * (C + C_kv) + 3 * (C + inner))
