"""Each attention-path Triton kernel equals its torch reference (run by the Triton interpreter on
CPU), and the paged references equal the contiguous model code they stand in for."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU

import types  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import minigrm.kernels as kernels  # noqa: E402
from minigrm.kernels.kv_store import store_kv, store_kv_ref, store_latent  # noqa: E402
from minigrm.kernels.paged_attention import (  # noqa: E402
    gather_kv, paged_decode_attention, paged_decode_attention_ref)
from minigrm.kernels.rmsnorm import rms_norm, rms_norm_ref  # noqa: E402
from minigrm.kernels.rope import apply_rope, apply_rope_ref  # noqa: E402
from minigrm.layers import RMSNorm, RotaryEmbedding, apply_rope_qk, apply_rope as model_apply_rope  # noqa: E402
from minigrm.layers import causal_attention  # noqa: E402

FP32 = dict(atol=1e-5, rtol=1e-5)
ATTN32 = dict(atol=2e-5, rtol=2e-5)
BF16 = dict(atol=2e-2, rtol=1.6e-2)  # ~2 bf16 ulp (the interpreter truncates fp32 -> bf16)


@pytest.fixture
def triton_backend():
    kernels.set_backend("triton")
    yield
    kernels.set_backend("auto")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- rmsnorm

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_kernel_matches_reference(triton_backend, with_residual, offset, dtype):
    g = gen(0)
    N, C = 7, 80  # odd rows, a width that is not a power of two
    x = (torch.randn(N, 2 * C, generator=g) * 3).to(dtype)[:, :C]  # strided rows
    res = torch.randn(N, C, generator=g).to(dtype) if with_residual else None
    w = (torch.randn(C, generator=g) * 0.5 + (0 if offset else 1)).to(dtype)
    y, h = rms_norm(x, w, 1e-6, offset, res)
    y_ref, h_ref = rms_norm_ref(x, w, 1e-6, offset, res)
    assert y.dtype == h.dtype == dtype and y.shape == h.shape == (N, C)
    # fp32: the residual stream is exact. bf16: the interpreter casts fp32 -> bf16 by
    # truncation (the GPU rounds to nearest even, like torch), so allow an ulp.
    tol = dict(atol=0, rtol=0) if dtype == torch.float32 else BF16
    torch.testing.assert_close(h, h_ref, **tol)
    torch.testing.assert_close(y, y_ref, **(FP32 if dtype == torch.float32 else BF16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(5, 48), (3, 7, 576), (256, 32), (2, 1, 2304)])
def test_rms_norm_reference_is_the_model_norm(offset, dtype, shape):
    """Bit for bit, at widths with and without a vector tail (the model's fp32 norm is one
    F.rms_norm call, the others F.rms_norm then HF's cast and scale)."""
    g, C = gen(1), shape[-1]
    x, r = torch.randn(*shape, generator=g).to(dtype), torch.randn(*shape, generator=g).to(dtype)
    norm = RMSNorm(C, 1e-5, offset).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(C, generator=g))
        y, h = rms_norm_ref(x.reshape(-1, C), norm.weight, 1e-5, offset, r.reshape(-1, C))
        assert torch.equal(h, (x + r).reshape(-1, C)) and torch.equal(y, norm(x + r).reshape(-1, C))


# ---------------------------------------------------------------- rope

def inv_freq_for(D, theta=10000.0):
    return 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float) / D))


@pytest.mark.parametrize("D,dtype", [(64, torch.float32), (128, torch.float32),
                                     (128, torch.bfloat16)])
def test_rope_kernel_matches_reference(triton_backend, D, dtype):
    g = gen(2)
    N, H, Hkv = 5, 6, 2
    qkv = torch.randn(N, H + 2 * Hkv, D, generator=g).to(dtype)  # a fused QKV output
    q, k = qkv[:, :H], qkv[:, H:H + Hkv]  # strided views, as the engine will pass them
    pos = torch.tensor([0, 1, 17, 1000, 4095])
    q_out, k_out = apply_rope(q, k, pos, inv_freq_for(D))
    q_ref, k_ref = apply_rope_ref(q, k, pos, inv_freq_for(D))
    tol = FP32 if dtype == torch.float32 else BF16
    torch.testing.assert_close(q_out, q_ref, **tol)
    torch.testing.assert_close(k_out, k_ref, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_reference_is_the_model_rope(dtype):
    D, g = 32, gen(3)
    cfg = types.SimpleNamespace(head_dim=D, qk_rope_head_dim=0, rope_theta=10000.0, rope_scaling=None)
    rotary = RotaryEmbedding(cfg)
    q, k = torch.randn(6, 4, D, generator=g).to(dtype), torch.randn(6, 2, D, generator=g).to(dtype)
    pos = torch.tensor([3, 0, 9, 100, 2, 7])
    cos, sin = rotary(pos, dtype)  # (N, D)
    q_ref, k_ref = apply_rope_ref(q, k, pos, rotary.inv_freq)
    assert torch.equal(q_ref, model_apply_rope(q[None], cos[None], sin[None])[0])
    assert torch.equal(k_ref, model_apply_rope(k[None], cos[None], sin[None])[0])
    q2, k2 = apply_rope_qk(q[None], k[None], cos[None], sin[None])  # the model's one chain for both
    assert torch.equal(q2[0], q_ref) and torch.equal(k2[0], k_ref)


# ---------------------------------------------------------------- kv store

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_kernel_matches_reference_and_skips_negative_slots(triton_backend, dtype):
    g = gen(4)
    N, Hkv, D, num_blocks, page = 9, 2, 64, 4, 16
    kv = torch.randn(N, 3 * Hkv, D, generator=g).to(dtype)
    k, v = kv[:, Hkv:2 * Hkv], kv[:, 2 * Hkv:]  # strided, rows contiguous
    slots = torch.randperm(num_blocks * page, generator=g)[:N]
    slots[[1, 4, 8]] = -1
    k_cache = torch.randn(num_blocks, page, Hkv, D, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, page, Hkv, D, generator=g).to(dtype)
    kc_ref, vc_ref, before = k_cache.clone(), v_cache.clone(), k_cache.clone()
    store_kv(k, v, k_cache, v_cache, slots)
    store_kv_ref(k, v, kc_ref, vc_ref, slots)
    assert torch.equal(k_cache, kc_ref) and torch.equal(v_cache, vc_ref)
    flat, flat_before = k_cache.view(-1, Hkv, D), before.view(-1, Hkv, D)
    written = slots[slots >= 0]
    untouched = torch.ones(num_blocks * page, dtype=torch.bool)
    untouched[written] = False
    assert torch.equal(flat[untouched], flat_before[untouched])  # skipped and other rows kept
    assert torch.equal(flat[written], k[slots >= 0])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_store_latent_writes_rows_and_skips_negative_slots(backend):
    """MLA's one latent cache: the kernel (HAS_V=False, one tensor) and the torch twin write the
    same rows; a slot of -1 (a CUDA-graph padding row) writes nothing, never the last slot."""
    kernels.set_backend(backend)
    g = gen(5)
    N, W, num_blocks, page = 7, 40, 3, 4
    rows = torch.randn(N, W, generator=g)
    slots = torch.randperm(num_blocks * page - 1, generator=g)[:N]  # never the last slot
    slots[[0, 5]] = -1
    cache = torch.full((num_blocks, page, 1, W), 7.0)
    try:
        store_latent(rows, cache, slots)
    finally:
        kernels.set_backend("auto")
    flat = cache.view(-1, W)
    assert torch.equal(flat[slots[slots >= 0]], rows[slots >= 0])
    untouched = torch.ones(num_blocks * page, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert (flat[untouched] == 7.0).all()


# ---------------------------------------------------------------- paged decode attention

def paged_layout(lens, Hkv, D, page, dtype=torch.float32, seed=0):
    """Random K/V for each sequence, scattered into shuffled physical blocks.

    Returns (k_cache, v_cache, block_tables, context_lens, seqs) with seqs[b] = (k, v) of
    shape (len_b, Hkv, D) contiguous. Unused block-table entries hold garbage (-1, huge)."""
    g = gen(seed)
    n_used = [-(-n // page) for n in lens]
    num_blocks = sum(n_used) + 3  # some blocks belong to nobody
    max_blocks = max(n_used) + 2
    perm = torch.randperm(num_blocks, generator=g)
    k_cache = torch.randn(num_blocks, page, Hkv, D, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, page, Hkv, D, generator=g).to(dtype)
    tables = torch.randint(-1, 2, (len(lens), max_blocks), generator=g, dtype=torch.int32)
    tables[tables == 1] = 10**6
    seqs, used = [], 0
    for b, (n, nb) in enumerate(zip(lens, n_used)):
        tables[b, :nb] = perm[used:used + nb].to(torch.int32)
        used += nb
        seqs.append(gather_kv(k_cache, v_cache, tables[b], n))
    return k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), seqs


def attention_case(lens, G, D, page, dtype=torch.float32, Hkv=2, seed=0):
    k_cache, v_cache, tables, ctx, seqs = paged_layout(lens, Hkv, D, page, dtype, seed)
    q = torch.randn(len(lens), Hkv * G, D, generator=gen(seed + 1)).to(dtype)
    return q, k_cache, v_cache, tables, ctx, seqs


LENS = [1, 17, 33, 100]


@pytest.mark.parametrize("G,D,page", [
    (1, 64, 16), (2, 64, 32), (8, 64, 16),  # GQA ratios
    (2, 80, 16), (2, 96, 32), (2, 128, 32), (2, 256, 16),  # head dims
])
def test_paged_attention_kernel_matches_reference(triton_backend, G, D, page):
    q, k_cache, v_cache, tables, ctx, _ = attention_case(LENS, G, D, page)
    args = (q, k_cache, v_cache, tables, ctx, D ** -0.5)
    out = paged_decode_attention(*args)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, paged_decode_attention_ref(*args), **ATTN32)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("window", [None, 20])
def test_paged_attention_kernel_softcap_and_window(triton_backend, softcap, window):
    q, k_cache, v_cache, tables, ctx, _ = attention_case(LENS, 4, 64, 16, seed=5)
    q = q * 4  # large scores, so the softcap bends them
    args = (q, k_cache, v_cache, tables, ctx, 64 ** -0.5, softcap, window)
    torch.testing.assert_close(paged_decode_attention(*args),
                               paged_decode_attention_ref(*args), **ATTN32)


@pytest.mark.parametrize("window", [None, 150])
def test_paged_attention_split_kv_is_invariant(triton_backend, window):
    q, k_cache, v_cache, tables, ctx, _ = attention_case([300, 1, 65, 200], 2, 64, 32, seed=6)
    args = (q, k_cache, v_cache, tables, ctx, 0.125, 30.0, window)
    ref = paged_decode_attention_ref(*args)
    outs = [paged_decode_attention(*args, num_splits=s) for s in (1, 2, 7)]
    for out in outs:
        torch.testing.assert_close(out, ref, **ATTN32)
        torch.testing.assert_close(out, outs[0], **ATTN32)


def test_paged_attention_kernel_bf16(triton_backend):
    q, k_cache, v_cache, tables, ctx, _ = attention_case([1, 17, 100], 4, 128, 16, torch.bfloat16)
    args = (q, k_cache, v_cache, tables, ctx, 128 ** -0.5, 50.0, 40)
    out = paged_decode_attention(*args, num_splits=3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, paged_decode_attention_ref(*args), **BF16)


def test_paged_attention_kernel_rejects_bad_shapes(triton_backend):
    q, k_cache, v_cache, tables, ctx, _ = attention_case([5], 1, 64, 16)
    with pytest.raises(ValueError, match="H a multiple of Hkv"):
        paged_decode_attention(q[:, :1], k_cache, v_cache, tables, ctx, 1.0)
    big = torch.zeros(2, 16, 2, 512)
    with pytest.raises(ValueError, match="head_dim <= 256"):
        paged_decode_attention(torch.zeros(1, 2, 512), big, big, tables, ctx, 1.0)


@pytest.mark.parametrize("softcap,window", [(None, None), (None, 9), (20.0, None), (20.0, 9)])
def test_paged_reference_equals_contiguous_causal_attention(softcap, window):
    lens, G, Hkv, D = [1, 17, 33], 2, 2, 32
    k_cache, v_cache, tables, ctx, seqs = paged_layout(lens, Hkv, D, 16, seed=7)
    q_last, expected = [], []
    for b, (k, v) in enumerate(seqs):
        q_full = torch.randn(1, lens[b], Hkv * G, D, generator=gen(b))  # (1, T, H, D)
        full = causal_attention(q_full, k[None], v[None], 0.2, softcap, window)  # (1, T, H, D)
        q_last.append(q_full[0, -1])
        expected.append(full[0, -1])
    out = paged_decode_attention_ref(torch.stack(q_last), k_cache, v_cache, tables, ctx,
                                     0.2, softcap, window)
    torch.testing.assert_close(out, torch.stack(expected), **ATTN32)


def test_store_then_paged_kernel_equals_contiguous_attention(triton_backend):
    """The decode path end to end: store_kv writes the new token, the kernel attends to it."""
    lens, G, Hkv, D, page = [3, 40], 4, 2, 64, 16
    k_cache, v_cache, tables, ctx, seqs = paged_layout(lens, Hkv, D, page, seed=8)
    new_k = torch.randn(2, Hkv, D, generator=gen(9))  # (B, Hkv, D) the token at len - 1
    new_v = torch.randn(2, Hkv, D, generator=gen(10))
    pos = ctx.long() - 1
    slots = tables[torch.arange(2), pos // page].long() * page + pos % page
    store_kv(new_k, new_v, k_cache, v_cache, slots)
    q = torch.randn(2, Hkv * G, D, generator=gen(11))
    out = paged_decode_attention(q, k_cache, v_cache, tables, ctx, 0.125, None, 16)
    for b, (k, v) in enumerate(seqs):
        k, v = k.clone(), v.clone()
        k[-1], v[-1] = new_k[b], new_v[b]
        q_full = torch.zeros(1, lens[b], Hkv * G, D)
        q_full[0, -1] = q[b]
        full = causal_attention(q_full, k[None], v[None], 0.125, None, 16)
        torch.testing.assert_close(out[b], full[0, -1], **ATTN32)
