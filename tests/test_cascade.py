"""Shared-prefix (cascade) decode attention equals plain paged decode attention."""
import pytest
import torch

from minigrm.cascade import cascade_decode_attention, decode_groups
from minigrm.kernels.paged_attention import paged_decode_attention_ref


def shared_tables(rng, groups, page, prefix_blocks, max_extra):
    """Block tables where each group's rows share `prefix_blocks` leading blocks."""
    tables, lens, nxt = [], [], 0
    for size in groups:
        prefix = list(range(nxt, nxt + prefix_blocks))
        nxt += prefix_blocks
        for _ in range(size):
            extra = int(torch.randint(1, max_extra + 1, (1,), generator=rng))
            own = list(range(nxt, nxt + extra))
            nxt += extra
            tables.append(prefix + own)
            lens.append(prefix_blocks * page + (extra - 1) * page + int(torch.randint(1, page + 1, (1,), generator=rng)))
    width = max(len(t) for t in tables)
    perm = torch.randperm(nxt, generator=rng).tolist()  # physical blocks in no particular order
    tables = [[perm[b] for b in t] + [-1] * (width - len(t)) for t in tables]
    return tables, lens, nxt


@pytest.mark.parametrize("Hkv,G,D", [(2, 1, 16), (1, 8, 32), (3, 3, 64)])
@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, None), (None, 20), (5.0, 9)])
def test_cascade_equals_paged_attention(Hkv, G, D, softcap, window):
    rng = torch.Generator().manual_seed(Hkv * 100 + G)
    page = 4
    tables, lens, n_blocks = shared_tables(rng, groups=[3, 1, 4], page=page, prefix_blocks=5, max_extra=3)
    k_cache = torch.randn(n_blocks, page, Hkv, D, generator=rng)
    v_cache = torch.randn(n_blocks, page, Hkv, D, generator=rng)
    q = torch.randn(len(lens), Hkv * G, D, generator=rng)
    groups, start = decode_groups(tables, lens, page)
    assert sorted(len(rows) for rows, _ in groups) == [3, 4] and all(n == 5 for _, n in groups)
    t, ln = torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, softcap, window)
    out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, start, D**-0.5, softcap, window)
    assert (out - ref).abs().max() < 1e-5


def test_groups_never_share_the_block_a_query_sits_in():
    tables = [[7, 8, 9], [7, 8, 5]]
    groups, start = decode_groups(tables, lens=[9, 8], block_size=4)  # row 1 sits in block 8
    assert groups == [([0, 1], 1)] and start == [4, 4]
    assert decode_groups([[1, 2], [3, 4]], [5, 5], 4) == ([], [0, 0])


def test_decode_groups_min_blocks():
    tables, lens = [[1, 2, 3, 9], [1, 2, 3, 10], [4, 5, 11]], [15, 15, 10]
    groups, start = decode_groups(tables, lens, block_size=4)
    assert groups == [([0, 1], 3)] and start == [12, 12, 0]
    assert decode_groups(tables, lens, block_size=4, min_blocks=3)[0] == [([0, 1], 3)]
    groups, start = decode_groups(tables, lens, block_size=4, min_blocks=4)  # too short a prefix: no cascade
    assert groups == [] and start == [0, 0, 0]
