"""The fused sampler kernel (run by the Triton interpreter on CPU) against its torch twin,
and the twin against the distribution it claims to sample."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from minigrm import kernels  # noqa: E402
from minigrm.kernels.sampler import _sample_triton, sample, sample_ref, uniform  # noqa: E402

# One row of each kind: greedy, temperature only (x2), top-k, top-k >= V (off), top-k 1,
# top-p, top-p tiny, top-k then top-p.
ROWS = [  # (temperature, top_k, top_p)
    (0.0, 0, 1.0), (1.0, 0, 1.0), (0.6, 0, 1.0), (0.8, 20, 1.0), (0.9, 10**6, 1.0),
    (1.2, 1, 1.0), (0.7, 0, 0.9), (1.0, 0, 1e-6), (1.1, 30, 0.6),
]


def params(rows, seed0=1234, step0=0):
    T, k, p = zip(*rows)
    B = len(rows)
    return (torch.tensor(T, dtype=torch.float32), torch.tensor(k, dtype=torch.int32),
            torch.tensor(p, dtype=torch.float32),
            seed0 + 7919 * torch.arange(B, dtype=torch.int64) + (1 << 33),  # exercise high bits
            step0 + torch.arange(B, dtype=torch.int64))


def logits_like(B, V, dtype, pad=0, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V + pad, generator=g) * scale
    return x.to(dtype)[:, :V]  # row stride V + pad


def check_same(logits, args, softcap, block_v):
    tok, lp = _sample_triton(logits, *args, softcap=softcap, block_v=block_v)
    tok_ref, lp_ref = sample_ref(logits, *args, softcap=softcap)
    assert tok.dtype == torch.int64 and lp.dtype == torch.float32
    assert tok.tolist() == tok_ref.tolist()
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    z = logits.float() if softcap is None else softcap * torch.tanh(logits.float() / softcap)
    torch.testing.assert_close(lp, torch.log_softmax(z, -1).gather(1, tok[:, None])[:, 0], atol=1e-5, rtol=0)
    return tok, z


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("softcap", [None, 10.0])
def test_kernel_matches_reference_mixed_batch(dtype, softcap):
    logits = logits_like(len(ROWS), 1000, dtype, pad=24)
    assert logits.stride(0) > logits.shape[1]
    tok, z = check_same(logits, params(ROWS), softcap, block_v=256)
    assert tok[0] == z[0].argmax()  # greedy
    assert tok[5] == z[5].argmax() and tok[7] == z[7].argmax()  # top-k 1, tiny top-p
    assert (z[3] > z[3, tok[3]]).sum() < 20  # inside the top-k
    assert (z[8] > z[8, tok[8]]).sum() < 30


def test_kernel_matches_reference_large_odd_vocab():
    rows = [(0.0, 0, 1.0), (0.8, 0, 1.0), (0.8, 50, 1.0), (0.8, 0, 0.95), (1.0, 100, 0.8)]
    logits = logits_like(len(rows), 50257, torch.bfloat16, pad=63)
    check_same(logits, params(rows, seed0=99, step0=17), 30.0, block_v=4096)


def test_reference_noise_only_where_it_can_win_equals_noise_everywhere(monkeypatch):
    """Above DENSE_VOCAB the torch path draws noise only for the contenders of peaked rows (~1%
    of the tokens here); the tokens are those of drawing it for every token (each way checked to
    have run)."""
    from minigrm.kernels import sampler
    rows = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.6, 0, 1.0), (0.8, 40, 1.0), (1.1, 0, 0.9)] * 4
    logits = logits_like(len(rows), 3000, torch.float32, scale=12.0, seed=5)
    args = params(rows, seed0=11, step0=3)
    widths = []
    monkeypatch.setattr(sampler, "uniform", lambda *a: widths.append(len(a)) or uniform(*a))
    sparse = sample_ref(logits, *args)
    monkeypatch.setattr(sampler, "DENSE_VOCAB", 10**9)
    dense = sample_ref(logits, *args)
    assert widths == [5, 3]  # contenders only (rows, cols given), then every token
    assert torch.equal(sparse[0], dense[0]) and torch.equal(sparse[1], dense[1])
    assert (dense[0] != logits.argmax(-1)).sum() >= 3  # real draws: not always the most likely token
    # many draws of one row whose runners-up trail the best by 1 .. 12 (score units at T = 1): each
    # wins now and then, so a contender margin narrower than the noise's range changes some draws
    z = torch.full((3000,), -30.0)
    z[7], z[100:106] = 10.0, 10.0 - torch.tensor([1.0, 2.5, 4.0, 6.0, 9.0, 12.0])
    n = 2000
    many = (z.expand(n, -1), torch.ones(n), torch.zeros(n, dtype=torch.int32), torch.ones(n),
            torch.arange(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64))
    dense = sample_ref(*many)[0]
    monkeypatch.setattr(sampler, "DENSE_VOCAB", 1024)
    assert torch.equal(sample_ref(*many)[0], dense) and widths[-1] == 5
    assert (dense == 102).sum() > 10 and (dense == 103).any()  # runners-up 4 and 6 behind won (~25, ~3 expected)


def test_sparse_argmax_equals_argmax_of_the_filled_matrix():
    """The sparse path's argmax over given entries (the rest -inf) without building the matrix:
    argmax's answer, first column on ties (integer scores: many), entries in any order."""
    from minigrm.kernels.sampler import _argmax, _sparse_argmax
    g = torch.Generator().manual_seed(0)
    B, V = 40, 3000
    for _ in range(5):
        keep = torch.rand(B, V, generator=g) < 0.01
        keep[torch.arange(B), torch.randint(0, V, (B,), generator=g)] = True  # one entry per row at least
        rows, cols = keep.nonzero(as_tuple=True)
        perm = torch.randperm(rows.numel(), generator=g)
        rows, cols = rows[perm], cols[perm]
        score = torch.randint(-2, 3, (rows.numel(),), generator=g).float()
        full = torch.full((B, V), -torch.inf)
        full[rows, cols] = score
        assert torch.equal(_sparse_argmax(score, rows, cols, B, V), _argmax(full))


def test_many_seeds_temperature_and_top_p():
    # many draws over one small vocabulary: the hash, the noise and the kept sets all agree
    rows = [(0.5 + 0.1 * (i % 7), (0, 5, 40)[i % 3], (1.0, 0.9, 0.5, 0.99)[i % 4]) for i in range(24)]
    logits = logits_like(len(rows), 97, torch.float32, seed=3)
    check_same(logits, params(rows, seed0=5), None, block_v=32)


def test_ties_are_deterministic():
    # integer logits: many exact ties; greedy takes the first maximal index, top-k keeps every
    # token tied with the k-th largest, and both implementations agree
    g = torch.Generator().manual_seed(1)
    logits = torch.randint(-3, 4, (6, 300), generator=g).float()
    rows = [(0.0, 0, 1.0), (0.0, 5, 0.5), (1.0, 3, 1.0), (1.0, 1, 1.0), (0.5, 60, 1.0), (2.0, 0, 1.0)]
    tok, z = check_same(logits, params(rows), None, block_v=64)
    assert tok[0] == (z[0] == z[0].max()).nonzero()[0, 0]  # first index of the maximum
    assert z[3, tok[3]] == z[3].max()  # top-k 1 keeps all the maxima, so draws among them


def test_banned_tokens_at_minus_inf():
    # -inf logits (a whole first chunk of them, too) are never drawn and leave the logprobs finite
    logits = logits_like(5, 300, torch.float32, seed=2)
    logits[:, :70] = float("-inf")
    logits[:, 150:160] = float("-inf")
    rows = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.8, 25, 1.0), (1.0, 0, 0.9), (1.5, 250, 0.99)]
    for softcap in (None, 10.0):
        tok, z = check_same(logits, params(rows), softcap, block_v=64)
        assert ((tok >= 70) & ((tok < 150) | (tok >= 160))).all()


def test_determinism_batch_independence_and_steps():
    logits = logits_like(4, 500, torch.float32, seed=7)
    rows = [(1.0, 0, 1.0), (0.9, 20, 1.0), (1.0, 0, 0.9), (1.3, 40, 0.7)]
    args = params(rows)
    tok, lp = _sample_triton(logits, *args, block_v=128)
    tok2, lp2 = _sample_triton(logits, *args, block_v=128)
    assert torch.equal(tok, tok2) and torch.equal(lp, lp2)
    # row 2 alone, and placed first in a reordered batch: a sequence's draw depends only on
    # (its logits, seed, step), not on its neighbours
    alone = _sample_triton(logits[2:3], *(a[2:3] for a in args), block_v=128)[0]
    order = torch.tensor([2, 0, 3, 1])
    shuffled = _sample_triton(logits[order], *(a[order] for a in args), block_v=128)[0]
    assert alone.item() == tok[2] and torch.equal(shuffled, tok[order])
    # another step draws other noise
    T, k, p, seeds, steps = args
    assert not torch.equal(uniform(seeds, steps, 500), uniform(seeds, steps + 1, 500))
    flat = logits_like(64, 500, torch.float32, scale=0.1)  # near-uniform: draws spread out
    a = params([(1.0, 0, 1.0)] * 64)
    t0 = sample_ref(flat, *a)[0]
    t1 = sample_ref(flat, *a[:4], a[4] + 1)[0]
    assert (t0 != t1).float().mean() > 0.9


def test_torch_path_in_row_chunks_equals_one_call(monkeypatch):
    """The CPU path draws rows in chunks (small temporaries); the tokens and logprobs are those
    of one whole-batch call, for every kind of row and a softcap."""
    from minigrm.kernels import sampler
    logits = logits_like(9, 300, torch.float32, seed=3)
    args = params([(1.0, 0, 1.0), (0.0, 0, 1.0), (0.7, 25, 1.0), (1.2, 0, 0.8), (0.5, 10, 0.9)] * 2)
    args = tuple(a[:9] for a in args)
    whole = sample_ref(logits, *args, softcap=4.0)
    monkeypatch.setattr(sampler, "use_triton", lambda t: False)
    monkeypatch.setattr(sampler, "TORCH_CHUNK", 2 * 300)  # two rows per chunk, the last one alone
    calls = []
    monkeypatch.setattr(sampler, "sample_ref", lambda x, *a, **k: calls.append(len(x)) or sample_ref(x, *a, **k))
    chunked = sample(logits, *args, softcap=4.0)
    assert calls == [2, 2, 2, 2, 1]
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])


def test_known_kinds_equal_kinds_read_back():
    """The engine passes the rows' kinds (all greedy / some greedy / some truncating) from the
    sequences' parameters instead of reading them from the device: the same tokens and logprobs
    for every mix, whole and in chunks; and they matter (a wrong 'no row greedy' draws where a
    greedy row must not)."""
    from minigrm.kernels.sampler import sampling_kinds
    logits = logits_like(6, 300, torch.float32, seed=5)
    mixes = [[(0.0, 0, 1.0)] * 6, [(0.8, 0, 1.0)] * 6, [(0.0, 0, 1.0), (0.8, 0, 1.0)] * 3,
             [(0.8, 7, 1.0), (0.9, 0, 1.0)] * 3, [(0.0, 0, 1.0), (0.7, 0, 0.8), (1.1, 300, 1.0)] * 2]
    for rows in mixes:
        args = params(rows)
        kinds = sampling_kinds(*args[:3], 300)
        ref = sample_ref(logits, *args)
        for got in (sample_ref(logits, *args, kinds=kinds), sample(logits, *args, kinds=kinds)):
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    assert sampling_kinds(*params(mixes[4])[:3], 300) == (False, True, True)
    args = params(mixes[2])
    assert not torch.equal(sample_ref(logits, *args, kinds=(False, False, False))[0], sample_ref(logits, *args)[0])


def _fmix32(x):
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_uniform_hash_pinned_and_uniform():
    seed, step, v = -(3 << 40) - 5, 123, 77  # negative seeds use their two's-complement bits
    key = _fmix32((seed & 0xFFFFFFFF) ^ 0x9E3779B9)
    for word in ((seed >> 32) & 0xFFFFFFFF, step, 0):
        key = _fmix32(key ^ word)
    x = _fmix32(key ^ _fmix32(v))
    expect = (2 * (x >> 9) + 1) / 2**24
    got = uniform(torch.tensor([seed]), torch.tensor([step]), 100)
    assert got[0, v].item() == expect
    u = uniform(torch.arange(200, dtype=torch.int64), torch.zeros(200, dtype=torch.int64), 1000)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002 and abs(u.var().item() - 1 / 12) < 0.001
    hist = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    assert ((hist - expected) ** 2 / expected).sum() < 45  # chi-square, 15 dof


def _draw(z, T, k, p, n=20000):
    rows = z.expand(n, -1)
    full = lambda v, dt: torch.full((n,), v, dtype=dt)  # noqa: E731
    tok, _ = sample_ref(rows, full(T, torch.float32), full(k, torch.int32), full(p, torch.float32),
                        torch.arange(n, dtype=torch.int64) // 10, torch.arange(n, dtype=torch.int64) % 10)
    return torch.bincount(tok, minlength=z.numel()).double()


def _chi2(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0
    expected = probs[keep] * counts.sum()
    return ((counts[keep] - expected) ** 2 / expected).sum().item()


def test_sampler_is_statistically_right():
    z = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))
    # temperature only: frequencies follow softmax(z / T); chi-square 4 dof, 99.99% bound 23.5
    probs = torch.softmax(z.double() / 0.7, 0)
    assert _chi2(_draw(z, 0.7, 0, 1.0), probs) < 23.5
    # top-k 2: only the two largest, renormalised
    probs = torch.tensor([0.5, 0.25, 0, 0, 0], dtype=torch.float64) / 0.75
    assert _chi2(_draw(z, 1.0, 2, 1.0), probs) < 15.1
    # top-p 0.8: cumulative 0.5, 0.75, 0.9 -> the three largest
    probs = torch.tensor([0.5, 0.25, 0.15, 0, 0], dtype=torch.float64) / 0.9
    assert _chi2(_draw(z, 1.0, 0, 0.8), probs) < 18.5
    # top-k 3 then top-p 0.8 of the renormalised rest: 0.5/0.9 = 0.56 < 0.8 <= 0.83 -> two
    probs = torch.tensor([0.5, 0.25, 0, 0, 0], dtype=torch.float64) / 0.75
    assert _chi2(_draw(z, 1.0, 3, 0.8), probs) < 15.1
    # greedy: always the argmax
    assert _draw(z, 0.0, 0, 1.0, n=100)[0] == 100


def test_dispatch_and_checks():
    logits = logits_like(2, 64, torch.float32)
    args = params([(1.0, 0, 0.9), (0.0, 0, 1.0)])
    try:
        kernels.set_backend("torch")
        ref = sample(logits, *args)
        kernels.set_backend("triton")
        got = sample(logits, *args, block_v=32)
    finally:
        kernels.set_backend("auto")
    assert torch.equal(ref[0], got[0])
    T, k, p, seeds, steps = args
    with pytest.raises(ValueError, match="top_k"):
        _sample_triton(logits, T, k.long(), p, seeds, steps)
    with pytest.raises(ValueError, match="unit column stride"):
        _sample_triton(logits.t(), T, k, p, seeds, steps)
