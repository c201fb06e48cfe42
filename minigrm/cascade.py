"""Shared-prefix ("cascade") decode attention: the k samples of one prompt read its KV once.

The k judgments sampled for one query share the prompt's KV blocks (prefix sharing). Plain
paged decode attention still reads those blocks k times, once per sequence. Cascade attention
splits each sequence's keys into the group's shared prefix and its private suffix:

    prefix:  all n*H queries of the group stacked against the prefix K/V, read once
    suffix:  each sequence against its own remaining blocks
    merge:   o = (o_p * e^(lse_p - m) + o_s * e^(lse_s - m)) / (e^(lse_p - m) + e^(lse_s - m))

which is exact (softmax over a union of key sets, recombined by log-sum-exp). This is the torch
path used on CPU, where the gathered K/V copies dominate a decode step; its slow twin is
`kernels.paged_attention.paged_decode_attention_ref` (tests/test_cascade.py). On GPU the Triton
paged kernel runs instead (a fused cascade kernel is future work).
"""
import torch

NEG_INF = float("-inf")


def decode_groups(block_tables: list[list[int]], lens: list[int], block_size: int, min_blocks: int = 1):
    """Group decode rows by shared leading blocks. -> [(rows, n_shared_blocks)] for groups
    of >= 2 rows that share >= min_blocks blocks, and each row's first private position."""
    by_first: dict[int, list[int]] = {}
    for r, t in enumerate(block_tables):
        by_first.setdefault(t[0], []).append(r)
    groups, start = [], [0] * len(block_tables)
    for rows in by_first.values():
        if len(rows) < 2:
            continue
        n = min((lens[r] - 1) // block_size for r in rows)  # never share the block a query sits in
        first = block_tables[rows[0]]
        for r in rows[1:]:
            t = block_tables[r]
            n = next((i for i in range(n) if t[i] != first[i]), n)
        if n >= max(min_blocks, 1):
            groups.append((rows, n))
            for r in rows:
                start[r] = n * block_size
    return groups, start


def _softmax_parts(s, valid):
    """Masked scores (..., L) -> (probabilities, log-sum-exp); lse = -inf where nothing is valid."""
    s = s.masked_fill(~valid, NEG_INF)
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse.clamp_min(-1e30)[..., None]), lse


def _capped(s, softcap):
    return s if softcap is None else softcap * torch.tanh(s / softcap)


def _suffix(q, k, v, positions, query_pos, scale, softcap, window):
    """Each row against its own keys. q (R, Hkv, G, D); k, v (R, L, Hkv, D); positions (R, L)
    absolute, -1 = padding. -> (out (R, Hkv, G, D) fp32, lse (R, Hkv, G))."""
    s = _capped(torch.einsum("rkgd,rlkd->rkgl", q, k.float()) * scale, softcap)
    valid = (positions >= 0) & (positions <= query_pos[:, None])  # (R, L)
    if window is not None:
        valid &= positions > query_pos[:, None] - window
    p, lse = _softmax_parts(s, valid[:, None, None, :])
    return torch.einsum("rkgl,rlkd->rkgd", p, v.float()), lse


def _prefix(q, k, v, query_pos, scale, softcap, window):
    """All rows of a group against one shared prefix, read once. q (R, Hkv, G, D);
    k, v (Lp, Hkv, D) at positions 0..Lp-1. -> (out (R, Hkv, G, D), lse (R, Hkv, G))."""
    R, Hkv, G, D = q.shape
    qs = q.permute(1, 0, 2, 3).reshape(Hkv, R * G, D)  # the group's queries stacked per KV head
    s = _capped(qs @ k.float().permute(1, 2, 0) * scale, softcap)  # (Hkv, R*G, Lp)
    valid = torch.ones(R, k.shape[0], dtype=torch.bool, device=q.device)  # prefix < every query
    if window is not None:
        valid = torch.arange(k.shape[0], device=q.device)[None, :] > query_pos[:, None] - window
    p, lse = _softmax_parts(s, valid.repeat_interleave(G, dim=0)[None])
    out = (p @ v.float().transpose(0, 1)).view(Hkv, R, G, D).permute(1, 0, 2, 3)
    return out, lse.view(Hkv, R, G).permute(1, 0, 2)


def cascade_decode_attention(q, k_cache, v_cache, block_tables, context_lens, groups, start,
                             scale, softcap=None, window=None):
    """q (B, H, D); block_tables (B, max_blocks); context_lens (B,); groups/start from
    `decode_groups`. -> (B, H, D), equal to paged decode attention."""
    B, H, D = q.shape
    page, Hkv = k_cache.shape[1], k_cache.shape[2]
    qg = q.float().view(B, Hkv, H // Hkv, D)
    lens = context_lens.long()
    query_pos = lens - 1
    start = torch.tensor(start, device=q.device)

    # suffix: each row's blocks from its first private block on
    first_block = start // page
    n_blocks = int((-(-lens // page) - first_block).max())
    idx = first_block[:, None] + torch.arange(n_blocks, device=q.device)  # (B, n_blocks)
    blocks = block_tables.long().gather(1, idx.clamp(max=block_tables.shape[1] - 1)).clamp(0, k_cache.shape[0] - 1)
    positions = (idx[:, :, None] * page + torch.arange(page, device=q.device)).flatten(1)  # (B, L)
    positions = positions.masked_fill(positions >= lens[:, None], -1)
    out, lse = _suffix(qg, k_cache[blocks].flatten(1, 2), v_cache[blocks].flatten(1, 2), positions,
                       query_pos, scale, softcap, window)

    # shared prefixes: one read per group, merged into the suffix results by log-sum-exp
    for rows, n in groups:
        rows_t = torch.tensor(rows, device=q.device)
        pre = block_tables[rows[0], :n].long()
        k, v = k_cache[pre].flatten(0, 1), v_cache[pre].flatten(0, 1)  # (Lp, Hkv, D)
        o_p, lse_p = _prefix(qg[rows_t], k, v, query_pos[rows_t], scale, softcap, window)
        o_s, lse_s = out[rows_t], lse[rows_t]
        m = torch.maximum(lse_p, lse_s).clamp_min(-1e30)
        w_p, w_s = torch.exp(lse_p - m), torch.exp(lse_s - m)
        out[rows_t] = (o_p * w_p[..., None] + o_s * w_s[..., None]) / (w_p + w_s)[..., None]
    return out.reshape(B, H, D).to(q.dtype)
