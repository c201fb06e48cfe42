"""Chunked token log-probs equal the full log_softmax, in value and gradient, and never build
the full (N, V) logits."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minigrm.config import ModelConfig
from minigrm.logprob import sequence_logprobs, token_logprobs, token_logprobs_reference
from minigrm.model import CausalLM


def inputs(N=37, C=12, V=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, C, generator=g) * 2).to(dtype).requires_grad_()
    w = torch.randn(V, C, generator=g).to(dtype).requires_grad_()
    y = torch.randint(0, V, (N,), generator=g)
    return h, w, y


def grads(fn, h, w):
    out = fn()
    gw = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # weighted sum
    return out, torch.autograd.grad((out * gw).sum(), (h, w))


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 8, 1024])  # 37 rows: ragged last chunk, one chunk
def test_matches_full_log_softmax(softcap, temperature, chunk_size):
    h, w, y = inputs()
    ours, (gh, gw) = grads(lambda: token_logprobs(h, w, y, softcap, temperature, chunk_size), h, w)
    ref, (rh, rw) = grads(lambda: token_logprobs_reference(h, w, y, softcap, temperature), h, w)
    assert ours.dtype == torch.float32 and ours.shape == (37,)
    assert ref.std() > 1.0  # logits far from uniform: the test can see a wrong softcap/temperature
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-5, rtol=1e-5)


def test_reference_is_the_model_head():
    cfg = ModelConfig.from_dict(dict(model_type="gemma2", vocab_size=40, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                     head_dim=8, final_logit_softcapping=2.0))
    model = CausalLM(cfg)
    h, _, y = inputs(N=9, C=16, V=40)
    full = torch.log_softmax(model.head(h).float(), -1).gather(1, y[:, None]).squeeze(1)
    ours = token_logprobs(h, model.lm_head.weight, y, cfg.final_logit_softcapping, chunk_size=4)
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    h, w, y = inputs(N=7, C=5, V=11, dtype=torch.float64)
    f = lambda h, w: token_logprobs(h, w, y, softcap=2.0, temperature=0.8, chunk_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (h, w))


def test_grad_for_one_input_only_and_empty():
    h, w, y = inputs()
    w.requires_grad_(False)
    (gh,) = torch.autograd.grad(token_logprobs(h, w, y, chunk_size=5).sum(), h)
    (rh,) = torch.autograd.grad(token_logprobs_reference(h, w, y).sum(), h)
    torch.testing.assert_close(gh, rh, atol=1e-5, rtol=1e-5)
    e = token_logprobs(h[:0], w, y[:0])
    assert e.shape == (0,)


def test_bf16_inputs():
    h, w, y = inputs(dtype=torch.bfloat16)
    out = token_logprobs(h, w, y, softcap=3.0, chunk_size=8)
    out.sum().backward()
    assert out.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.bfloat16
    ref = token_logprobs_reference(h.float(), w.float(), y, softcap=3.0)
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_never_materialises_full_logits():
    N, V, C, chunk = 1024, 32000, 4, 64
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, C, generator=g, requires_grad=True)
    w = torch.randn(V, C, generator=g, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    with LargestTensor() as mode:
        token_logprobs(h, w, y, softcap=30.0, chunk_size=chunk).sum().backward()
    assert mode.max_numel == chunk * V  # 2M floats per chunk, never N * V = 33M
    assert h.grad.shape == (N, C) and w.grad.shape == (V, C)


def tiny_lm(**overrides):
    raw = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    raw.update(overrides)
    torch.manual_seed(0)
    return CausalLM(ModelConfig.from_dict(raw))


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_sequence_logprobs_matches_model_logits(family):
    gemma2 = dict(model_type="gemma2", head_dim=8, final_logit_softcapping=2.0)
    model = tiny_lm() if family == "llama" else tiny_lm(**gemma2)
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, 1:7] = True
    mask[2, 0] = True  # position 0 can never be a target: ignored
    out = sequence_logprobs(model, ids, mask, chunk_size=4)
    assert out.shape == (3, 11)
    full = torch.log_softmax(model(ids).float(), -1)[:, :-1]  # (B, T-1, V)
    full = full.gather(2, ids[:, 1:, None]).squeeze(2)  # (B, T-1)
    m = mask[:, 1:]
    torch.testing.assert_close(out[m], full[m], atol=1e-5, rtol=1e-5)
    assert (out[~m] == 0).all() and (out[2] == 0).all()
    params = [p for p in model.parameters()]
    g_ours = torch.autograd.grad(out.sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(full[m].sum(), params, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_peak_memory_is_a_few_chunks():
    N, V, C, chunk = 8192, 256000, 64, 512  # Gemma-2's vocabulary: full fp32 logits are 8.4 GB
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(N, C, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(V, C, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, V, (N,), device="cuda", generator=g)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = token_logprobs(h, w, y, softcap=30.0, chunk_size=chunk)
    out.sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 6 * chunk * V * 4 + 2 * V * C * 4  # a few fp32 chunks plus the fp32 weight-grad buffer
    ref = token_logprobs_reference(h[:chunk].float(), w.float(), y[:chunk], softcap=30.0)
    torch.testing.assert_close(out[:chunk], ref, atol=0.25, rtol=0.02)  # bf16 matmul rounding
