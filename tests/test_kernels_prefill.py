"""Packed varlen prefill attention over the paged cache: the Triton kernel (interpreted on CPU)
equals the torch twin, and the twin equals per-sequence contiguous causal attention."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU

import pytest  # noqa: E402
import torch  # noqa: E402

from minigrm.kernels.paged_attention import gather_kv  # noqa: E402
from minigrm.kernels.prefill_attention import (PrefillMeta, _packs, prefill_attention_ref,  # noqa: E402
                                               prefill_attention_triton)
from minigrm.layers import causal_attention  # noqa: E402


def prefill_case(q_len, ctx, Hkv=2, G=2, D=16, page=4, dtype=torch.float32, seed=0):
    """S sequences: ctx[s] tokens of K/V in shuffled paged blocks, the last q_len[s] of them new."""
    g = torch.Generator().manual_seed(seed)
    n_blocks = [-(-c // page) for c in ctx]
    perm = torch.randperm(sum(n_blocks) + 2, generator=g).tolist()
    tables, used = [], 0
    for nb in n_blocks:
        tables.append(perm[used:used + nb])
        used += nb
    k_cache = torch.randn(len(perm), page, Hkv, D, generator=g).to(dtype)
    v_cache = torch.randn(len(perm), page, Hkv, D, generator=g).to(dtype)
    q = torch.randn(sum(q_len), Hkv * G, D, generator=g).to(dtype)
    return q, k_cache, v_cache, PrefillMeta.build(q_len, ctx, tables, "cpu")


def contiguous_reference(q, k_cache, v_cache, meta, scale, softcap, window):
    """One sequence at a time, gathered contiguously: the model's own causal attention."""
    out = []
    for s, (start, n, c) in enumerate(zip(meta.q_start_host, meta.q_len_host, meta.ctx_host)):
        k, v = gather_kv(k_cache, v_cache, meta.tables[s], c)
        out.append(causal_attention(q[None, start:start + n], k[None], v[None], scale, softcap, window)[0])
    return torch.cat(out)


CASES = [  # (q_len, ctx): whole prompts, chunks on top of a cached prefix, one-token chunks
    ([7, 1, 12], [7, 9, 30]),
    ([20, 3, 5, 16], [20, 19, 5, 40]),
]


@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, None), (None, 6), (4.0, 9)])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_prefill_reference_equals_contiguous_attention(case, softcap, window):
    q, k_cache, v_cache, meta = prefill_case(*CASES[case], G=3)
    ref = contiguous_reference(q, k_cache, v_cache, meta, 0.3, softcap, window)
    for max_scores in (2**25, 1):  # one pack, or one sequence per pack
        out = prefill_attention_ref(q, k_cache, v_cache, meta, 0.3, softcap, window, max_scores=max_scores)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("G,D,dtype,softcap,window", [
    (1, 16, torch.float32, None, None), (3, 24, torch.float32, 5.0, 6), (2, 64, torch.bfloat16, None, 9)])
def test_prefill_kernel_equals_reference(G, D, dtype, softcap, window):
    q, k_cache, v_cache, meta = prefill_case(*CASES[1], G=G, D=D, dtype=dtype, seed=G)
    ref = prefill_attention_ref(q, k_cache, v_cache, meta, D**-0.5, softcap, window)
    out = prefill_attention_triton(q, k_cache, v_cache, meta, D**-0.5, softcap, window, block_m=16)  # 2 tiles
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **tol)


def test_packs_sort_by_length_and_bound_memory():
    assert _packs([5, 100, 1, 90], [50, 100, 60, 90], heads=1, max_scores=10**9) == [[2, 0, 3, 1]]
    packs = _packs([5, 100, 1, 90], [50, 100, 60, 90], heads=1, max_scores=2 * 100 * 100)
    assert packs == [[2, 0], [3, 1]]  # the short chunks are not padded to the long prompts
    assert _packs([3], [3], heads=8, max_scores=1) == [[0]]  # a pack always takes one sequence
