"""Shared-prefix ("cascade") decode attention: the k samples of one prompt read its KV once.

The k judgments sampled for one query share the prompt's KV blocks (prefix sharing). Plain
paged decode attention still reads those blocks k times, once per sequence. Cascade attention
splits each sequence's keys into its group's shared prefix and its private suffix:

    prefix:  all rows x G query heads of a group stacked against the prefix K/V, read once
    suffix:  each sequence against its own remaining blocks
    merge:   o = (o_p * e^(lse_p - m) + o_s * e^(lse_s - m)) / (e^(lse_p - m) + e^(lse_s - m))

which is exact (softmax over a union of key sets, recombined by log-sum-exp). The torch path
takes a second level of prefixes (`CascadeGroups.inner`, prefix_groups.nested_groups): the k
shuffled GRM prompts of a query share the template, and each order's rows the part past it;
each level is stacked against its own prefix and all parts are merged at once.

`CascadeGroups` describes the groups of one decode batch; it only changes when rows come or
go, so the runner rebuilds it then, not every step (`build_groups`; which rows share what:
prefix_groups.py). Here is the torch path (the CPU path): every group of a level at once, padded
to the longest prefix and the largest group, no Python loop over groups; each row's suffix K/V is
gathered once and then grows by one token per step (O(rows) per step, not O(rows x suffix)); what
every layer computes alike (positions, masks) is made once per step (`_shared`). On CUDA
`cascade_decode_attention` runs the Triton kernels of kernels/cascade_attention.py on one level of
groups. Both are pinned to the plain paged attention reference (`kernels.paged_attention.paged_decode_attention_ref`) by
tests/test_cascade.py. MLA (latent attention: one KV head, V = the first R columns of K) uses
the same torch path with v_cache a view of k_cache (one gather serves both), and its own
kernels on CUDA (kernels/mla_decode.py).
"""
from dataclasses import dataclass, field

import torch

from .kernels import use_triton
from .prefix_groups import decode_groups, nested_groups

NEG_INF = float("-inf")
SUFFIX_CACHE_BYTES = 2**31  # torch path: the rows' dense K/V copies kept across steps, all layers together


@dataclass
class CascadeGroups:
    rows: torch.Tensor  # (NG, MAXR) int32 decode rows of each group, -1 = padding
    prefix_blocks: torch.Tensor  # (NG, NB) int32 physical blocks of each group's prefix, 0-padded
    prefix_len: torch.Tensor  # (NG,) int32 prefix tokens (a multiple of the block size; 0 = empty group)
    start: torch.Tensor | None  # (B,) int32 each row's first private position (0 outside groups; outer level)
    members: torch.Tensor  # (M,) int64 flat indices into rows.view(-1) that hold a row
    member_rows: torch.Tensor  # (M,) int64 rows.view(-1)[members]
    start_blocks: list[int] | None = None  # host: start // block_size per row
    suffix_blocks: int = 0  # host: max blocks of any row's suffix (the runner updates it as rows grow)
    unequal_prefixes: bool = True  # host: the groups' prefixes differ in length (the torch path masks the padding)
    in_order: bool = False  # host: rows.view(-1) is 0, 1, .., B - 1 (every row in a group, in order, no padding)
    prefix_kv: dict = field(default_factory=dict)  # torch path: each layer's gathered prefix K/V, kept
    # while these groups stand (their blocks are shared and full: never rewritten meanwhile)
    suffix_kv: dict = field(default_factory=dict)  # torch path: each layer's (K, V) buffers of the rows'
    # private keys, one token appended per step (_suffix_kv)
    caches: dict = field(default_factory=dict)  # torch path: the layers' K caches the two dicts are keyed by (_layer)
    row_ids: list | None = None  # host: each row's sequence id, to carry suffix K/V over a rebuild
    previous: "CascadeGroups | None" = None  # torch path: the groups these replaced (their suffix K/V)
    first: torch.Tensor | None = None  # (NG,) int32 first position of each group's prefix (None: 0)
    inner: "CascadeGroups | None" = None  # torch path: groups over blocks past this level's prefix
    # (nested_groups: each order's part of the k shuffled GRM prompts), merged in the same way


# MLA on the GPU: rows per prefix tile, each 16 heads of a 576-wide latent query (32 stacked
# queries; open choice, unmeasured: 64 would need FlashMLA-style tiles in shared memory)
MLA_GROUP_ROWS = 2


def kernel_group_rows(config) -> int:
    """Rows of one group the GPU prefix kernel stacks into a tile (larger groups are split):
    <= 64 stacked queries for grouped-query attention, MLA_GROUP_ROWS for latent attention."""
    if config.kv_lora_rank:
        return MLA_GROUP_ROWS
    return max(1, 64 // (config.num_attention_heads // config.num_key_value_heads))


def build_groups(block_tables, lens, block_size, min_blocks, device, max_rows=None,
                 torch_path=False) -> CascadeGroups | None:
    """The GPU kernels' groups (`decode_groups`: one level, cut to max_rows) as tensors, None when
    no group shares min_blocks blocks; or with `torch_path` `nested_groups`' two levels (the inner
    one as `.inner`), and groups even when none is shared: every row's whole K/V is then its
    suffix (`_suffix_kv`)."""
    if torch_path:
        groups, inner, start = nested_groups(block_tables, lens, block_size, min_blocks)
    else:
        (groups, start), inner = decode_groups(block_tables, lens, block_size, min_blocks, max_rows), []
        if not groups:
            return None
    g = _level(block_tables, [(r, 0, n) for r, n in groups], block_size, len(lens), device)
    g.start = _tensor(start, torch.int32, device)
    g.start_blocks = [x // block_size for x in start]
    g.suffix_blocks = max(-(-n // block_size) - s for n, s in zip(lens, g.start_blocks))
    if inner:
        g.inner = _level(block_tables, inner, block_size, len(lens), device)
    return g


def _level(block_tables, groups, block_size, B, device) -> CascadeGroups:
    """One level's groups [(rows, first block, end block)] as tensors; the rows' starts are set by
    the caller."""
    maxr, nb = max((len(r) for r, _, _ in groups), default=0), max((e - f for _, f, e in groups), default=0)
    rows = [r + [-1] * (maxr - len(r)) for r, _, _ in groups]
    blocks = [block_tables[r[0]][f:e] + [0] * (nb - e + f) for r, f, e in groups]
    padded = sum(rows, [])  # (NG * MAXR,) row per slot, -1 = padding
    t = lambda x, dt=torch.int32: _tensor(x, dt, device)  # noqa: E731
    rows_t = t(rows).view(len(groups), maxr)
    members = t([i for i, r in enumerate(padded) if r >= 0], torch.int64)
    return CascadeGroups(rows_t, t(blocks).view(len(groups), nb), t([(e - f) * block_size for _, f, e in groups]),
                         None, members, rows_t.view(-1)[members].long(),
                         unequal_prefixes=len({e - f for _, f, e in groups}) > 1,
                         in_order=padded == list(range(B)),
                         first=t([f * block_size for _, f, _ in groups]) if any(f for _, f, _ in groups) else None)


def _tensor(x, dtype, device):
    return torch.tensor(x, dtype=dtype).to(device, non_blocking=True)


def _gather(cache, blocks):
    """cache[blocks] for an index tensor of any shape (index_select: several times faster on CPU)."""
    return cache.index_select(0, blocks.reshape(-1)).view(*blocks.shape, *cache.shape[1:])


def _gather_kv(k_cache, v_cache, blocks):
    """(K, V) rows of `blocks` in fp32, (..., page, Hkv, D) each. MLA passes the latent cache as
    K and its first R columns as V (a view of the same rows): one gather serves both."""
    k = _gather(k_cache, blocks).float()
    if _latent(k_cache, v_cache):
        return k, k[..., :v_cache.shape[-1]]
    return k, _gather(v_cache, blocks).float()


def _latent(k, v) -> bool:
    """v is k's first columns (MLA's latent rows: V = the first R columns of K)."""
    return v.data_ptr() == k.data_ptr() and v.stride() == k.stride()


def _attend(s, v, bias=None):
    """softmax(s) @ v and log-sum-exp from scores s (..., Lq, L) (consumed), v (..., L, D);
    `bias` (0 for a valid key, -inf for a masked one; broadcast to s) masks keys. lse = -inf and
    output 0 where no key is valid. Shifted scores are clamped at -60 before exp: probabilities
    below e^-60 (~1e-26, far below fp32's resolution of the sum) would otherwise be denormal
    floats, on which exp and the p @ v matmul run 10-100x slower on x86 (real attention is
    peaky: most keys are there); the bias, added again after the clamp, keeps masked keys at
    exactly 0."""
    if bias is not None:
        s += bias
    m = s.amax(-1, keepdim=True).clamp_min_(-1e30)  # finite: exp(-inf - m) = 0, never nan
    p = s.sub_(m).clamp_(min=-60.0)
    if bias is not None:
        p += bias
    p = p.exp_()
    l = p.sum(-1, keepdim=True)  # noqa: E741
    o = (p @ v) / l.clamp_min(1e-30)
    return o, (m + l.log())[..., 0]


def _bias(valid):
    """A boolean key mask as the additive bias `_attend` takes: 0 where valid, -inf elsewhere."""
    return torch.where(valid, 0.0, NEG_INF)


def _attention(q, k, v, bias=None, softcap=None, fused=True):
    """(softmax(q @ k^T + bias) @ v, log-sum-exp); q (..., Lq, D) pre-scaled, k (..., L, D), v (..., L,
    Dv). On CPU without softcap (and `fused`: every query keeps a key, as the kernel returns lse 0,
    not -inf, for a query with none) one call of torch's fused flash kernel, which returns the
    log-sum-exp too and never holds the scores; MLA (v is k's first columns) attends with V = K and
    keeps Dv columns. Otherwise `_attend` on the scores."""
    latent = _latent(k, v)
    if fused and softcap is None and q.device.type == "cpu" and (v.shape[-1] == q.shape[-1] or latent):
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, k if latent else v,
                                                                            attn_mask=bias, scale=1.0)
        return o[..., :v.shape[-1]], lse
    return _attend(_capped(q @ k.transpose(-1, -2), softcap), v, bias)


def _capped(s, softcap):
    return s if softcap is None else softcap * torch.tanh(s / softcap)


def _shared(memo, key, make):
    """A value every layer of one decode step computes alike (positions, masks): made by the first
    layer and kept in the step's `memo` (a dict the decoder's backend passes; None: no memo)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def _layer(groups: CascadeGroups, k_cache) -> int:
    """The key of a layer's entries in the groups' per-layer dicts: its K cache's address. The
    groups hold the cache, so no other tensor takes that address while they stand (a freed cache's
    address, reused by another layer's, would otherwise find the freed one's gathered K/V)."""
    key = k_cache.data_ptr()
    groups.caches[key] = k_cache
    return key


def _suffix_kv(k_cache, v_cache, block_tables, lens, start, groups: CascadeGroups, fresh=None, memo=None):
    """Each row's private keys and values from `start` on: K (B, Hkv, L, D) and V (B, Hkv, L, Dv)
    fp32, L = suffix_blocks pages: views of buffers kept across steps and group rebuilds
    (`_suffix_buffers`), into which only this step's token, just stored in the paged cache, is
    copied: O(B) per step, not O(B * L). `fresh`: that token's (K, V) rows (B, Hkv, D | Dv) as the
    step computed them (the decoder's backend passes them: no read back from the cache); None: read
    back. Columns past a row's query are stale or zero: the caller masks them."""
    page, layer = k_cache.shape[1], _layer(groups, k_cache)
    B, L = start.shape[0], groups.suffix_blocks * page
    k, v = _suffix_buffers(k_cache, v_cache, block_tables, start, groups, layer)
    k, v = k[:B, :, :L], v[:B, :, :L]
    if fresh is None:
        pos = lens - 1
        slot = block_tables.gather(1, (pos // page)[:, None])[:, 0].long() * page + pos % page  # (B,)
        k_new, v_new = _gather_kv(k_cache.flatten(0, 1), v_cache.flatten(0, 1), slot)  # (B, Hkv, D | Dv)
    else:  # rounded to the cache's dtype as stored: the same values the cache holds
        k_new, v_new = (x if x.dtype == k_cache.dtype == torch.float32 else x.to(k_cache.dtype).float() for x in fresh)
    rows = _shared(memo, "rows_arange", lambda: torch.arange(B, device=lens.device))
    col = _shared(memo, "query_col", lambda: lens - 1 - start)  # (B,) each row's query, counted from its start
    k[rows, :, col] = k_new
    v[rows, :, col] = v_new
    return k, v


def _suffix_buffers(k_cache, v_cache, block_tables, start, groups: CascadeGroups, layer):
    """This layer's (R, Hkv, W, D | Dv) buffers of the rows' private K/V, R >= rows, W >= the
    suffix width, with room to grow (+50% when outgrown), so neither a row's new block nor a
    finished sequence re-lays out every row. A rebuild of the groups (rows came or went) takes
    the previous groups' buffers over in place: a row that holds the same sequence from the same
    start stays or moves (compaction moves the last rows into the holes), every position before
    the current one already in it; the other rows are gathered from the paged cache. Buffers over
    the SUFFIX_CACHE_BYTES budget are not kept: every row is gathered afresh each step then."""
    B, page, W = start.shape[0], k_cache.shape[1], block_tables.shape[1]
    n_blocks, dev = groups.suffix_blocks, start.device
    fits = lambda b: b[0].shape[0] >= B and b[0].shape[2] >= n_blocks * page  # noqa: E731
    buf, moves, fresh = groups.suffix_kv.get(layer), [], set()
    if buf is not None and fits(buf):  # the step's common case: kept, room left
        return buf
    if buf is None:
        buf, moves = _take_over(groups, layer)
        fresh = set(range(B)) - {r for _, r in moves}
    if buf is None or not fits(buf):
        buf = _grow(buf, B, n_blocks * page, k_cache, v_cache)
    k, v = buf
    moved = [(a, b) for a, b in moves if a != b]
    if moved:  # the right-hand side is gathered first: chains of moves are safe
        s, d = (torch.tensor(x, device=dev) for x in zip(*moved))
        k[d] = k[s]
        if not _latent(k, v):
            v[d] = v[s]
    if fresh:
        f = torch.tensor(sorted(fresh), device=dev)
        idx = start[f, None] // page + torch.arange(n_blocks, device=dev)  # (F, n_blocks) logical blocks
        blocks = block_tables[f].gather(1, idx.clamp(max=W - 1)).long().clamp_(0, k_cache.shape[0] - 1)  # >= W: masked
        kf, vf = _gather_kv(k_cache, v_cache, blocks)  # (F, n_blocks, page, Hkv, D | Dv)
        k[f, :, :n_blocks * page] = kf.flatten(1, 2).transpose(1, 2)
        v[f, :, :n_blocks * page] = vf.flatten(1, 2).transpose(1, 2)
    kept = sum(x[0].nbytes + (0 if _latent(*x) else x[1].nbytes) for key, x in groups.suffix_kv.items() if key != layer)
    if kept + k.nbytes + (0 if _latent(k, v) else v.nbytes) <= SUFFIX_CACHE_BYTES:
        groups.suffix_kv[layer] = (k, v)
    return k, v


def _take_over(groups: CascadeGroups, layer):
    """The previous groups' buffers of this layer (released from them) and the (old row, new row)
    pairs holding the same sequence from the same start; (None, []) when there are none."""
    prev = groups.previous
    if prev is None or layer not in prev.suffix_kv or groups.row_ids is None or prev.row_ids is None:
        return None, []
    buf = prev.suffix_kv.pop(layer)
    where = {key: r for r, key in enumerate(zip(prev.row_ids, prev.start_blocks)) if key[0] is not None}
    return buf, [(where[key], r) for r, key in enumerate(zip(groups.row_ids, groups.start_blocks)) if key in where]


def _grow(buf, rows: int, width: int, k_cache, v_cache):
    """Zeroed buffers (so columns no row has reached hold no non-finite values) with room for
    `rows` x `width` tokens, each dimension +50% when outgrown, the old content copied in."""
    R0, W0 = (0, 0) if buf is None else (buf[0].shape[0], buf[0].shape[2])
    R = R0 if rows <= R0 else max(rows, R0 * 3 // 2)
    W = W0 if width <= W0 else max(width, W0 * 3 // 2)
    k = torch.zeros(R, k_cache.shape[2], W, k_cache.shape[3], device=k_cache.device)
    latent = _latent(k_cache, v_cache)
    v = k[..., :v_cache.shape[-1]] if latent else torch.zeros(R, v_cache.shape[2], W, v_cache.shape[3],
                                                                device=k_cache.device)
    if buf is not None:
        k[:R0, :, :W0] = buf[0]
        if not latent:
            v[:R0, :, :W0] = buf[1]
    return k, v


def _suffix(q, k_cache, v_cache, block_tables, lens, start, groups, softcap, window, fresh=None, memo=None):
    """Each row against its own keys from `start` on (`_suffix_kv`). q (B, Hkv, G, D) fp32,
    pre-scaled. -> (out (B, Hkv, G, Dv) fp32, lse (B, Hkv, G))."""
    k, v = _suffix_kv(k_cache, v_cache, block_tables, lens, start, groups, fresh, memo)  # (B, Hkv, L, D | Dv)

    def mask():  # (B, 1, 1, L) additive: the row's columns up to its query (and within the window)
        col = torch.arange(v.shape[2], device=q.device)  # (L,) position - start
        last = _shared(memo, "query_col", lambda: lens - 1 - start)[:, None]  # (B, 1) the query's column
        valid = col <= last  # (B, L)
        if window is not None:
            valid &= col > last - window
        return _bias(valid)[:, None, None, :]
    # fused: ~2x faster than matmuls and a softmax for B = 256 tiny attentions (each query keeps its own key)
    return _attention(q, k, v, _shared(memo, ("suffix_mask", v.shape[2], window), mask), softcap)


def _prefixes(q, k_cache, v_cache, groups: CascadeGroups, query_pos, softcap, window, memo=None):
    """Every group's rows stacked against its shared prefix, read once per group.
    q (B, Hkv, G, D) fp32, pre-scaled -> (out (B, Hkv, G, Dv), lse (B, Hkv, G)); lse = -inf
    outside groups."""
    B, Hkv, G, D = q.shape
    NG, MAXR = groups.rows.shape
    key = _layer(groups, k_cache)
    if key not in groups.prefix_kv:  # gathered once per layer while the groups stand
        k, v = _gather_kv(k_cache, v_cache, groups.prefix_blocks)  # (NG, NB, page, Hkv, D | Dv)
        k = k.flatten(1, 2).transpose(1, 2).contiguous()
        v = k[..., :v.shape[-1]] if _latent(k_cache, v_cache) else v.flatten(1, 2).transpose(1, 2).contiguous()
        groups.prefix_kv[key] = (k, v)
    k, v = groups.prefix_kv[key]  # (NG, Hkv, Lp, D), (NG, Hkv, Lp, Dv)
    Dv = v.shape[-1]
    Lp = k.shape[-2]
    # (NG, MAXR); padding reads row 0, dropped
    rows = None if groups.in_order else _shared(memo, ("rows", id(groups)), lambda: groups.rows.long().clamp_min(0))
    qs = (q if rows is None else q.index_select(0, rows.view(-1))).view(NG, MAXR, Hkv, G, D)
    qs = qs.transpose(1, 2).reshape(NG, Hkv, MAXR * G, D)  # queries stacked per KV head

    def mask():  # additive, (NG, 1, 1 | MAXR * G, Lp), or None: every key of every prefix seen
        valid = None
        j = torch.arange(Lp, device=q.device) if groups.unequal_prefixes or window is not None else None
        if groups.unequal_prefixes:  # mask the padding
            valid = (j[None, :] < groups.prefix_len[:, None])[:, None, None, :]  # (NG, 1, 1, Lp)
        if window is not None:
            qpos = query_pos.view(NG, MAXR) if rows is None else query_pos[rows]
            kpos = j[None, None, :] if groups.first is None else j[None, None, :] + groups.first[:, None, None]
            w = kpos > qpos[:, :, None] - window  # (NG, MAXR, Lp)
            w = w[:, :, None, :].expand(NG, MAXR, G, Lp).reshape(NG, 1, MAXR * G, Lp)
            valid = w if valid is None else valid & w
        return None if valid is None else _bias(valid)
    # fused only without a window (which can leave a query no prefix key) and not for MLA, whose
    # 576-wide latent rows against long prefixes run faster as two matmuls (bench_deepseek shapes)
    fused = window is None and not _latent(k, v)
    o, lse = _attention(qs, k, v, _shared(memo, ("prefix_mask", id(groups), G, window), mask), softcap, fused)
    o = o.view(NG, Hkv, MAXR, G, Dv).permute(0, 2, 1, 3, 4).reshape(NG * MAXR, Hkv, G, Dv)
    lse = lse.view(NG, Hkv, MAXR, G).permute(0, 2, 1, 3).reshape(NG * MAXR, Hkv, G)
    if groups.in_order:  # the stacked rows are the batch's rows: nothing to scatter
        return o, lse
    out = q.new_zeros(B, Hkv, G, Dv).index_copy_(0, groups.member_rows, o.index_select(0, groups.members))
    out_lse = q.new_full((B, Hkv, G), NEG_INF).index_copy_(0, groups.member_rows, lse.index_select(0, groups.members))
    return out, out_lse


def merge(*parts):
    """Attention over the union of disjoint key sets from each part's (output, log-sum-exp)."""
    m = parts[0][1]
    for _, lse in parts[1:]:
        m = torch.maximum(m, lse)
    m = m.clamp_min(-1e30)
    num = den = None
    for o, lse in parts:
        w = torch.exp(lse - m)
        num, den = (o * w[..., None], w) if num is None else (num + o * w[..., None], den + w)
    return num / den[..., None]


def cascade_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, groups: CascadeGroups,
                                 scale, softcap=None, window=None, fresh=None, memo=None):
    """q (B, H, D); block_tables (B, max_blocks); context_lens (B,); groups.suffix_blocks >=
    every row's blocks past its start. -> (B, H, Dv), equal to paged decode attention. Torch,
    no loop over groups. MLA: k_cache the latent rows (one KV head of R + Dr), v_cache their
    first R columns (a view), q the absorbed queries: latent attention with shared prefixes.
    `fresh` (optional): the (K, V) rows (B, Hkv, D | Dv) of each row's last position, just stored.
    `memo` (optional): a dict the layers of one decode step share, so what they compute alike
    (positions, masks) is computed once per step (the torch path is bound by op count)."""
    B, H, D = q.shape
    Hkv = k_cache.shape[2]
    qg = (q.float() * scale).view(B, Hkv, H // Hkv, D)  # scores come out scaled
    lens, start = _shared(memo, "lens", lambda: (context_lens.long(), groups.start.long()))
    o_s, lse_s = _suffix(qg, k_cache, v_cache, block_tables, lens, start, groups, softcap, window, fresh, memo)
    if groups.rows.shape[0] == 0:  # no shared prefix (dense groups): the suffix holds every key
        return o_s.reshape(B, H, v_cache.shape[-1]).to(q.dtype)
    parts, level = [(o_s, lse_s)], groups
    query_pos = _shared(memo, "query_pos", lambda: lens - 1)
    while level is not None:
        parts.append(_prefixes(qg, k_cache, v_cache, level, query_pos, softcap, window, memo))
        level = level.inner
    return merge(*parts).reshape(B, H, v_cache.shape[-1]).to(q.dtype)


def cascade_decode_attention(q, k_cache, v_cache, block_tables, context_lens, groups: CascadeGroups,
                             scale, softcap=None, window=None, fresh=None, memo=None):
    """Shared-prefix decode attention: Triton kernels on CUDA, the torch path otherwise (which
    takes the step's own K/V rows as `fresh`, when given, instead of reading them back, and
    shares what every layer computes alike through the step's `memo`)."""
    if use_triton(q):
        from .kernels.cascade_attention import cascade_decode_attention_triton
        return cascade_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, groups,
                                               scale, softcap, window)
    return cascade_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, groups,
                                        scale, softcap, window, fresh, memo)
