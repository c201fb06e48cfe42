"""Shared-prefix (cascade) decode attention equals plain paged decode attention."""
import pytest
import torch

from minigrm import cascade
from minigrm.cascade import build_groups, cascade_decode_attention
from minigrm.prefix_groups import decode_groups, nested_groups
from minigrm.kernels.paged_attention import paged_decode_attention_ref


def shared_tables(rng, groups, page, prefix_blocks, max_extra):
    """Block tables where each group's rows share `prefix_blocks` leading blocks (an int, or
    one per group)."""
    tables, lens, nxt = [], [], 0
    for gi, size in enumerate(groups):
        n_pre = prefix_blocks if isinstance(prefix_blocks, int) else prefix_blocks[gi]
        prefix = list(range(nxt, nxt + n_pre))
        nxt += n_pre
        for _ in range(size):
            extra = int(torch.randint(1, max_extra + 1, (1,), generator=rng))
            own = list(range(nxt, nxt + extra))
            nxt += extra
            tables.append(prefix + own)
            lens.append(n_pre * page + (extra - 1) * page + int(torch.randint(1, page + 1, (1,), generator=rng)))
    width = max(len(t) for t in tables)
    perm = torch.randperm(nxt, generator=rng).tolist()  # physical blocks in no particular order
    tables = [[perm[b] for b in t] + [-1] * (width - len(t)) for t in tables]
    return tables, lens, nxt


def cascade_case(Hkv, G, D, groups=(3, 1, 4), prefix_blocks=5, seed=0, page=4, dtype=torch.float32):
    rng = torch.Generator().manual_seed(seed)
    tables, lens, n_blocks = shared_tables(rng, list(groups), page, prefix_blocks, max_extra=3)
    k_cache = torch.randn(n_blocks, page, Hkv, D, generator=rng).to(dtype)
    v_cache = torch.randn(n_blocks, page, Hkv, D, generator=rng).to(dtype)
    q = torch.randn(len(lens), Hkv * G, D, generator=rng).to(dtype)
    t, ln = torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32)
    return q, k_cache, v_cache, t, ln, tables, lens


@pytest.mark.parametrize("Hkv,G,D", [(2, 1, 16), (1, 8, 32), (3, 3, 64)])
@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, None), (None, 20), (5.0, 9), (None, 6)])
def test_cascade_equals_paged_attention(Hkv, G, D, softcap, window):
    """Window 6: some rows' queries are more than 6 past their prefix, which they then do not
    see at all (an empty part of the log-sum-exp merge)."""
    page = 4
    q, k_cache, v_cache, t, ln, tables, lens = cascade_case(Hkv, G, D, seed=Hkv * 100 + G)
    groups = build_groups(tables, lens, page, 1, "cpu")
    assert groups.rows.shape == (2, 4) and groups.prefix_len.tolist() == [20, 20]
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, softcap, window)
    out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, D**-0.5, softcap, window)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("window", [None, 11])
def test_cascade_unequal_prefixes_and_split_groups(window):
    """Groups with prefixes of different lengths (padded, masked), groups cut into chunks of
    at most max_rows rows (as the GPU kernel's tile requires) and lone rows as groups of one
    (the torch path) give the same attention."""
    q, k_cache, v_cache, t, ln, tables, lens = cascade_case(2, 2, 16, groups=(5, 2, 3, 1), prefix_blocks=[6, 2, 4, 3])
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, 0.25, 3.0, window)
    for max_rows, torch_path in ((None, False), (2, False), (1, False), (None, True)):
        groups = build_groups(tables, lens, 4, 1, "cpu", max_rows, torch_path)
        assert sorted(groups.prefix_len.tolist())[-1] == 24
        out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, 0.25, 3.0, window)
        assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("softcap,window,budget", [(None, None, None), (5.0, 7, None), (None, None, 0)])
def test_cascade_over_decode_steps_keeps_equal(softcap, window, budget, monkeypatch):
    """The engine keeps one CascadeGroups while its rows stand: the torch path gathers each
    row's suffix once, then appends one token per step into buffers with room to grow (+50%: a
    new block rarely re-lays them out), and when the rows change the new groups take the buffers
    over, moving the rows that stay. Step by step, across block boundaries and a rebuild, it
    equals paged attention; with no memory budget for the kept copies (budget 0) it gathers
    every step and still does."""
    if budget is not None:
        monkeypatch.setattr(cascade, "SUFFIX_CACHE_BYTES", budget)
    grows, gathers = [], []
    grow, gather = cascade._grow, cascade._gather_kv
    monkeypatch.setattr(cascade, "_grow", lambda *a: grows.append(a[2]) or grow(*a))
    monkeypatch.setattr(cascade, "_gather_kv", lambda k, v, b: gathers.append(tuple(b.shape)) or gather(k, v, b))
    page, Hkv, G, D = 4, 2, 2, 8
    rng = torch.Generator().manual_seed(0)
    shared = {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2], 3: [3, 4], 4: [3, 4], 5: []}  # two groups, one lone row
    tables, nxt = [], 5
    for r in range(6):
        tables.append(shared[r] + list(range(nxt, nxt + 5)))  # room for the tokens to come
        nxt += 5
    lens = [len(shared[r]) * page + 1 + r % 3 for r in range(6)]
    k_cache, v_cache = torch.randn(nxt, page, Hkv, D, generator=rng), torch.randn(nxt, page, Hkv, D, generator=rng)
    ids = list(range(6))

    def regroup(previous):  # as the runner: tensors of the rows, groups carrying the previous ones' K/V
        g = build_groups(tables, lens, page, 1, "cpu", torch_path=True)
        g.row_ids, g.previous = list(ids), previous
        return torch.tensor([r + [-1] * (8 - len(r)) for r in tables], dtype=torch.int32), g

    t, groups = regroup(None)
    for step in range(14):
        if step:  # one more token per row: its K/V lands in the cache (as store_kv does), then attend
            for r, n in enumerate(lens):
                block, off = tables[r][n // page], n % page
                k_cache[block, off] = torch.randn(Hkv, D, generator=rng)
                v_cache[block, off] = torch.randn(Hkv, D, generator=rng)
            lens = [n + 1 for n in lens]
        if step == 7:  # rows 1 and 4 finish, the others come in another order
            keep = [2, 0, 5, 3]
            tables, lens, ids = [tables[r] for r in keep], [lens[r] for r in keep], [ids[r] for r in keep]
            old = groups
            t, groups = regroup(old)
        groups.suffix_blocks = max(-(-n // page) - s for n, s in zip(lens, groups.start_blocks))  # as the runner
        q = torch.randn(len(lens), Hkv * G, D, generator=rng)
        ln = torch.tensor(lens, dtype=torch.int32)
        ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, softcap, window)
        out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, D**-0.5, softcap, window)
        assert (out - ref).abs().max() < 1e-5, step
        if step == 7:
            assert not old.suffix_kv  # its buffer was taken over, not gathered again
    assert len(groups.suffix_kv) == (1 if budget is None else 0)  # one layer's suffix, kept across the steps
    if budget is None:
        assert grows == [4, 8, 12, 16]  # re-laid out only when the width outgrows the room (+50%: 12 -> 18)
        # per step: the suffix's fresh rows (rows, blocks), the new token's slots (rows,), the prefixes once per
        # groups. All 6 rows at the start; at the rebuild (step 7) only rows 3 and 5, whose start moved (3 is
        # alone now, 5 has a full block of its own): rows 2 and 0 keep theirs, moved to rows 0 and 1
        assert gathers[:3] == [(6, 1), (6,), (2, 3)] and gathers[9:12] == [(2, 3), (4,), (3, 3)]
        assert all(len(b) == 1 for b in gathers[3:9] + gathers[12:])  # otherwise only the new token


@pytest.mark.parametrize("window", [None, 6])
def test_cascade_takes_the_steps_own_kv_and_in_order_rows(window, monkeypatch):
    """The decoder's backend hands the torch path each row's K/V of this step (`fresh`, as it
    just stored them): the same output, bit for bit, as reading them back, without that per-step
    gather. Groups that hold every row in order (in_order) skip the scatter of the stacked rows
    and still equal paged attention; rows out of order are not taken as in order."""
    page, Hkv, G, D = 4, 2, 2, 8
    q, k_cache, v_cache, t, ln, tables, lens = cascade_case(Hkv, G, D, groups=(4, 4), prefix_blocks=3, seed=7)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, None, window)
    pos = ln.long() - 1
    slot = t.gather(1, (pos // page)[:, None])[:, 0].long() * page + pos % page
    fresh = (k_cache.flatten(0, 1)[slot], v_cache.flatten(0, 1)[slot])  # (B, Hkv, D) each
    outs = []
    gathers = []
    gather = cascade._gather_kv
    monkeypatch.setattr(cascade, "_gather_kv", lambda k, v, b: gathers.append(tuple(b.shape)) or gather(k, v, b))
    for use in (None, fresh):
        groups = build_groups(tables, lens, page, 1, "cpu")
        assert groups.in_order
        for step in range(2):
            gathers.clear()
            outs.append(cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, D**-0.5, None, window, fresh=use))
        assert ((8,) in gathers) == (use is None)  # the last step's reads: the new tokens' slots only without fresh
    assert all(torch.equal(o, outs[0]) for o in outs) and (outs[0] - ref).abs().max() < 1e-5
    perm = [0, 4, 1, 5, 2, 6, 3, 7]  # the same rows, the groups interleaved
    groups = build_groups([tables[r] for r in perm], [lens[r] for r in perm], page, 1, "cpu")
    assert not groups.in_order
    out = cascade_decode_attention(q[perm], k_cache, v_cache, t[perm], ln[perm], groups, D**-0.5, None, window)
    assert (out - ref[perm]).abs().max() < 1e-5


def test_layers_of_a_step_share_positions_and_masks():
    """The decoder's backend hands every layer of a decode step the same `memo`: positions and
    masks are made by the first layer and reused (fewer ops per layer: the torch path is bound by
    op count), keyed by what they depend on, so layers with and without a sliding window
    (Gemma-2 alternates them) each get their own masks and still equal paged attention."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Ops.n += 1
            return func(*args, **(kwargs or {}))
    page, Hkv, G, D = 4, 2, 2, 8
    tables, lens = grm_tables()
    rng = torch.Generator().manual_seed(2)
    t = torch.tensor([r + [0] * (9 - len(r)) for r in tables], dtype=torch.int32)
    ln = torch.tensor(lens, dtype=torch.int32)
    groups = build_groups(tables, lens, page, 1, "cpu", torch_path=True)
    memo, ops = {}, []
    for layer, window in enumerate([None, 6, None, 6]):  # one decode step through four layers
        # each layer's cache is dropped after it: the groups hold it, so the next layer's (same size)
        # cannot take its address and find its gathered K/V (the groups key them by the address)
        k_cache, v_cache = torch.randn(50, page, Hkv, D, generator=rng), torch.randn(50, page, Hkv, D, generator=rng)
        q = torch.randn(len(lens), Hkv * G, D, generator=rng)
        ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, None, window)
        Ops.n = 0
        with Ops():
            out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, D**-0.5, None, window, memo=memo)
        ops.append(Ops.n)
        assert (out - ref).abs().max() < 1e-5, layer
        del k_cache, v_cache
    assert ops[2] < ops[0] and ops[3] < ops[1]  # the second layer of each kind makes no masks
    assert {k for k in memo if isinstance(k, tuple) and k[0] == "suffix_mask"} == {("suffix_mask", 4, None),
                                                                                    ("suffix_mask", 4, 6)}


def test_groups_never_share_the_block_a_query_sits_in():
    tables = [[7, 8, 9], [7, 8, 5]]
    groups, start = decode_groups(tables, lens=[9, 8], block_size=4)  # row 1 sits in block 8
    assert groups == [([0, 1], 1)] and start == [4, 4]
    assert decode_groups([[1, 2], [3, 4]], [5, 5], 4) == ([], [0, 0])
    assert nested_groups([[1, 2], [3, 4]], [5, 5], 4) == ([], [], [0, 0])  # no group: no cascade
    # the torch path, once a group exists: a lone row with full blocks is a group of one over them
    assert nested_groups([[7, 8, 9], [7, 8, 5], [3, 4, 6]], [9, 8, 10], 4) == ([([0, 1], 1), ([2], 2)], [], [4, 4, 8])


def test_shuffled_prompts_group_by_their_longest_shared_prefix():
    """The k shuffled GRM prompts of a query share the template and the query, and the samples
    of one order share the whole prompt: rows split into the groups that read the fewest blocks
    per step (here 20 instead of 30 as one group over the template), and the attention over
    them equals paged attention. Where a split saves nothing (every row diverges alone right
    after the shared part) the rows stay one group."""
    template, qa, qb = [1, 2], [3, 4], [11, 12]
    tables = [template + qa + [5, 6, 7], template + qa + [5, 6, 7], template + qa + [8, 9, 10],
              template + qa + [8, 9, 10], template + qb + [13, 14], template + qb + [13, 14]]
    lens = [len(t) * 4 + 1 for t in tables]  # each query sits in a block of its own
    groups, start = decode_groups(tables, lens, 4)
    assert sorted(groups) == [([0, 1], 7), ([2, 3], 7), ([4, 5], 6)] and start == [28, 28, 28, 28, 24, 24]
    lone = [template + qa + [20 + r] for r in range(4)]  # diverge one block after the shared 4
    assert decode_groups(lone, [len(t) * 4 + 1 for t in lone], 4)[0] == [([0, 1, 2, 3], 4)]
    rng = torch.Generator().manual_seed(3)
    width, n_blocks = max(map(len, tables)) + 1, 40
    t = torch.tensor([r + [30 + i] + [0] * (width - len(r) - 1) for i, r in enumerate(tables)], dtype=torch.int32)
    ln = torch.tensor(lens, dtype=torch.int32)
    k_cache, v_cache = torch.randn(n_blocks, 4, 2, 8, generator=rng), torch.randn(n_blocks, 4, 2, 8, generator=rng)
    q = torch.randn(6, 4, 8, generator=rng)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, 0.3)
    g = build_groups(t.tolist(), lens, 4, 1, "cpu")
    assert sorted(g.prefix_len.tolist()) == [24, 28, 28]
    assert (cascade_decode_attention(q, k_cache, v_cache, t, ln, g, 0.3) - ref).abs().max() < 1e-5


def grm_tables():
    """Block tables of the GRM workload's shape: a shared template (blocks 1-3), two queries, each
    shown in shuffled orders (two orders of query a, three rows and one; query b's two rows one
    order), the samples of one order sharing the whole prompt; a row of another prompt, alone."""
    template, qa, qb = [1, 2, 3], [4], [11]
    order1, order2, order3 = [5, 6, 7], [8, 9, 10], [12, 13]
    tables = [template + qa + order1, template + qa + order2, template + qa + order1, template + qa + order1,
              template + qb + order3, template + qb + order3, [20, 21, 22, 23]]
    tables = [t + [40 + r] for r, t in enumerate(tables)]  # each row's query sits in a block of its own
    return tables, [(len(t) - 1) * 4 + 1 + r % 3 for r, t in enumerate(tables)]


def test_nested_groups_read_every_shared_block_once():
    """The torch path's two levels: one outer group over what all of a template's rows share
    (blocks 0-2), inner groups over each order's part past it (query a's order 1: rows 0, 2, 3;
    query b's one order: rows 4, 5), the row alone in its order an inner group of one over its
    own blocks, the row of another prompt an outer group of one. Every row's suffix starts past
    its deepest level. One level (`decode_groups`) would read the template 2 times or the
    order parts 3 times; here 3 + 4 + 3 + 4 + 4 blocks are read, each once."""
    tables, lens = grm_tables()
    outer, inner, start = nested_groups(tables, lens, 4)
    assert outer == [([0, 1, 2, 3, 4, 5], 3), ([6], 4)]
    assert sorted(inner) == [([0, 2, 3], 3, 7), ([1], 3, 7), ([4, 5], 3, 6)]
    assert start == [28, 28, 28, 28, 24, 24, 16]
    assert nested_groups(tables, lens, 4, min_blocks=4)[1] == []  # a 3-block template: too short an outer prefix
    # no inner group (every row diverges right after the shared part): the inner level is not built
    lone = [[1, 2, 3, 4, 20 + r, 30 + r] for r in range(4)]
    assert nested_groups(lone, [21] * 4, 4) == ([([0, 1, 2, 3], 4)], [], [16] * 4)


@pytest.mark.parametrize("softcap,window", [(None, None), (5.0, None), (None, 7), (5.0, 13), (None, 18)])
def test_nested_cascade_equals_paged_attention(softcap, window):
    """Attention over the two levels (the inner prefixes start past the outer one: the sliding
    window is measured from their true positions) equals paged attention, step by step, with
    the suffix buffers kept across steps and taken over when the rows change."""
    page, Hkv, G, D = 4, 2, 2, 8
    tables, lens = grm_tables()
    rng = torch.Generator().manual_seed(5)
    tables = [t + list(range(50 + 4 * r, 54 + 4 * r)) for r, t in enumerate(tables)]  # room for new tokens
    k_cache, v_cache = torch.randn(80, page, Hkv, D, generator=rng), torch.randn(80, page, Hkv, D, generator=rng)
    ids, groups = list(range(len(lens))), None
    for step in range(9):
        if step:  # one more token per row: its K/V in the cache, as store_kv does
            for r, n in enumerate(lens):
                k_cache[tables[r][n // page], n % page] = torch.randn(Hkv, D, generator=rng)
                v_cache[tables[r][n // page], n % page] = torch.randn(Hkv, D, generator=rng)
            lens = [n + 1 for n in lens]
        if step in (0, 5):  # (re)build, as the runner: at step 5 rows 2 and 6 have finished
            if step:
                keep = [0, 1, 3, 4, 5]
                tables, lens, ids = [tables[r] for r in keep], [lens[r] for r in keep], [ids[r] for r in keep]
            old, groups = groups, build_groups(tables, lens, page, 1, "cpu", torch_path=True)
            groups.row_ids, groups.previous = list(ids), old
            assert groups.inner is not None and groups.inner.first.tolist() == [12] * groups.inner.rows.shape[0]
        groups.suffix_blocks = max(-(-n // page) - s for n, s in zip(lens, groups.start_blocks))
        t = torch.tensor([r + [0] * (12 - len(r)) for r in tables], dtype=torch.int32)
        ln = torch.tensor(lens, dtype=torch.int32)
        q = torch.randn(len(lens), Hkv * G, D, generator=rng)
        ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, softcap, window)
        out = cascade_decode_attention(q, k_cache, v_cache, t, ln, groups, D**-0.5, softcap, window)
        assert (out - ref).abs().max() < 1e-5, step


def test_decode_groups_min_blocks():
    tables, lens = [[1, 2, 3, 9], [1, 2, 3, 10], [4, 5, 11]], [15, 15, 10]
    groups, start = decode_groups(tables, lens, block_size=4)
    assert groups == [([0, 1], 3)] and start == [12, 12, 0]
    assert decode_groups(tables, lens, block_size=4, min_blocks=3)[0] == [([0, 1], 3)]
    groups, start = decode_groups(tables, lens, block_size=4, min_blocks=4)  # too short a prefix: no cascade
    assert groups == [] and start == [0, 0, 0]


# --- the Triton kernels (interpreted on CPU) against the same reference ------------------------

@pytest.mark.parametrize("Hkv,G,D,dtype,softcap,window", [
    (2, 1, 16, torch.float32, None, None), (1, 4, 32, torch.float32, 5.0, 9), (2, 3, 24, torch.float32, None, 9),
    (2, 2, 64, torch.bfloat16, 5.0, None)])
def test_cascade_kernel_equals_paged_attention(triton_interpreter, Hkv, G, D, dtype, softcap, window):
    from minigrm.kernels.cascade_attention import cascade_decode_attention_triton
    q, k_cache, v_cache, t, ln, tables, lens = cascade_case(Hkv, G, D, groups=(5, 2, 3, 1), prefix_blocks=[6, 2, 4, 3],
                                                            dtype=dtype)
    t = t.clamp_min(0)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, 0.3, softcap, window)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for max_rows, splits, prefix_splits in ((None, 1, 1), (2, 2, 3)):
        groups = build_groups(tables, lens, 4, 1, "cpu", max_rows)
        out = cascade_decode_attention_triton(q, k_cache, v_cache, t, ln, groups, 0.3, softcap, window,
                                              splits, prefix_splits)
        assert out.dtype == dtype and (out.float() - ref.float()).abs().max() < tol


def test_cascade_kernel_with_static_buffers(triton_interpreter):
    """As a CUDA graph runs it: groups copied into larger buffers (unused groups empty, extra
    padding columns), rows outside every group, start 0 for them."""
    from minigrm.kernels.cascade_attention import cascade_decode_attention_triton
    q, k_cache, v_cache, t, ln, tables, lens = cascade_case(2, 2, 16, groups=(4, 1, 3), prefix_blocks=[5, 2, 3])
    t = t.clamp_min(0)
    g = build_groups(tables, lens, 4, 3, "cpu", 3)  # the 2-block group is too short: its rows stay plain
    NG, MAXR = g.rows.shape
    rows = torch.full((8, 5), -1, dtype=torch.int32)
    rows[:NG, :MAXR] = g.rows
    blocks = torch.zeros(8, 12, dtype=torch.int32)
    blocks[:NG, :g.prefix_blocks.shape[1]] = g.prefix_blocks
    plen = torch.zeros(8, dtype=torch.int32)
    plen[:NG] = g.prefix_len
    static = type(g)(rows, blocks, plen, g.start, None, None)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, 0.3)
    out = cascade_decode_attention_triton(q, k_cache, v_cache, t, ln, static, 0.3)
    assert (out - ref).abs().max() < 1e-5


@pytest.fixture
def triton_interpreter():
    import os
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported (conftest.py does)")
    yield
