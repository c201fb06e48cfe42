"""Decode attention of multi-head latent attention (MLA, DeepSeek-V2, arXiv 2405.04434 section
2.1) in latent space over a paged cache: split-KV (flash-decoding), one latent row read per
query group, no per-head K/V.

Contract: `mla_decode_attention(q, cache, block_tables, context_lens, scale, rank,
num_splits=None) -> out (B, H, R)` in q's dtype, R = rank (kv_lora_rank, 512 in V2-Lite).
  q (B, H, R + Dr): one new token per sequence, each head's absorbed query [q_nope . W_UK_h,
  q_pe_h] (mla.py builds it; Dr = qk_rope_head_dim, 64). cache (num_blocks, block_size, 1,
  R + Dr): row [c_kv, k_pe] of every token, the key of all heads, whose first R columns c_kv
  are also the value; the new token's row is already stored at context_lens[b] - 1.
  block_tables (B, max_blocks) int32 as in paged_attention.py (entries past a sequence's
  length are never read); context_lens (B,) int32 >= 1. Scores s = (q . row) * scale, where
  `scale` already holds YaRN's mscale**2 (config.attn_scale); softmax in fp32; out = softmax(s)
  @ c_kv. The caller multiplies out by W_UV (the value up-projection) after attention.

Kernel 1, grid (B, ceil(H / 16), num_splits): one program owns 16 query heads of one
sequence and a contiguous slice of its tokens. It gathers BLOCK_N cache rows through the
block table and runs an online softmax for its 16 heads together: two dots per tile, the
(16, R) latent query against the (BLOCK_N, R) latent rows and the (16, Dr) rope query against
the (BLOCK_N, Dr) rope rows, then (16, BLOCK_N) probabilities times the same latent rows. With
H <= 16 (V2-Lite has 16) each cached row is read from memory once for all heads: MLA decode is
MQA with one 576-wide KV head, and its bytes per token are 1152 in bf16 against 2 * 16 * 128 * 2
= 8192 for the same heads with MHA. Kernel 2 (num_splits > 1) merges the splits' (output,
log-sum-exp) pairs: paged_attention.py's merge kernel, with D = R.

Sizes for H100/H200 (sm_90): BLOCK_H = 16 (the smallest mma M), R = 512 and Dr = 64 whole in
one program (padded to powers of two), BLOCK_N = 32 tokens per tile, 8 warps. Compiled for
sm_90 with triton 3.9 (ptxas resource usage, bf16): 170 registers per thread, no spill, 66 KB
of shared memory; 4 warps would need 255 registers and spill, BLOCK_N = 64 would need 250 and
114 KB. The merge of up to 64 splits of 512 floats runs on 8 warps beyond 32 splits (4 warps
spill there). The split count comes from shapes alone (no host sync), the grid from tensor
shapes: the launch can be captured in a CUDA graph. With H > 16 (V2-236B: 128) each group of 16 heads
reads the rows again; FlashMLA's 64-head wgmma tiles avoid that and are not reproduced here.
Tested on CPU by the Triton interpreter (tests/test_kernels_mla.py) against the torch twin.

Shared prefixes (`mla_cascade_decode_attention`, groups: cascade.CascadeGroups): the k samples
of one prompt share its latent rows. The split kernel runs from each row's `start` (its private
suffix); `_mla_prefix_kernel`, grid (group, head block, prefix split), stacks the group's rows
(cascade.MLA_GROUP_ROWS = 2) x 16 heads into one 32-query tile, so each shared row is read once
per two samples instead of once per sample; the merge kernel combines all partials. Compiled
for sm_90: 213 registers, no spill, 86 KB shared (4 rows x 16 heads spill). The torch twin (and
the CPU path) is cascade.py's, with the latent rows as K and their first R columns as V.
"""
import os

import torch
import triton
import triton.language as tl

from minigrm.cascade import cascade_decode_attention_ref
from minigrm.kernels import cuda_ms, use_triton
from minigrm.kernels.cascade_attention import cascade_partials, prefix_splits
from minigrm.kernels.paged_attention import _auto_splits, _dot, _merge_kernel

BLOCK_H = 16
REF_CHUNK_BYTES = 2**26  # the torch twin works on at most ~64 MB of fp32 cache rows at once


@triton.jit
def _latent_tiles(q_lat, q_pe, c_ptr, table_row, start, end, stride_cb, stride_cs, scale,
                  R: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                  PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """Online softmax of BLOCK_M latent queries over the cache rows [start, end) of one block
    table: -> (acc (BLOCK_M, BLOCK_R) unnormalised, m_i running max and l_i sum, log2 units)."""
    offs_n, offs_r, offs_p = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_P)
    r_mask, p_mask = offs_r < R, offs_p < DR
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_R], tl.float32)
    for t in range(start, end, BLOCK_N):
        tok = t + offs_n  # (BLOCK_N,) logical positions
        valid = tok < end
        page = tl.load(table_row + tok // PAGE, mask=valid, other=0).to(tl.int64)
        rows = c_ptr + (page * stride_cb + (tok % PAGE) * stride_cs)[:, None]  # (BLOCK_N, 1) row starts
        c = tl.load(rows + offs_r[None, :], mask=valid[:, None] & r_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_R)
        k_pe = tl.load(rows + R + offs_p[None, :], mask=valid[:, None] & p_mask[None, :], other=0.0)  # (BLOCK_N, BLOCK_P)
        s = _dot(q_lat, tl.trans(c), PRECISION, DOT_FP32) + _dot(q_pe, tl.trans(k_pe), PRECISION, DOT_FP32)
        s = tl.where(valid[None, :], s * (scale * 1.4426950408889634), float("-inf"))  # (BLOCK_M, BLOCK_N), log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has a valid token
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot(p.to(c.dtype), c, PRECISION, DOT_FP32)  # values: the same rows
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _mla_split_kernel(
    q_ptr, c_ptr, bt_ptr, lens_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_cb, stride_cs, stride_bt,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    scale, num_splits, H, start_ptr,
    R: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    WRITE_LSE: tl.constexpr, HAS_START: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    b, hb, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    length = tl.load(lens_ptr + b)
    lo = 0  # first key of this program's range
    if HAS_START:  # cascade: the keys before start[b] are the group's shared prefix, done apart
        lo = tl.load(start_ptr + b)
    chunk = tl.cdiv(tl.cdiv(length - lo, num_splits), BLOCK_N) * BLOCK_N  # whole tiles per split
    start = lo + split * chunk
    end = tl.minimum(start + chunk, length)  # start >= end: an empty split, writes lse = -inf

    offs_h, offs_r, offs_p = hb * BLOCK_H + tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_P)
    h_mask, r_mask, p_mask = offs_h < H, offs_r < R, offs_p < DR
    q_row = q_ptr + b * stride_qb + offs_h[:, None] * stride_qh
    q_lat = tl.load(q_row + offs_r[None, :], mask=h_mask[:, None] & r_mask[None, :], other=0.0)  # (BLOCK_H, BLOCK_R)
    q_pe = tl.load(q_row + R + offs_p[None, :], mask=h_mask[:, None] & p_mask[None, :], other=0.0)  # (BLOCK_H, BLOCK_P)
    acc, m_i, l_i = _latent_tiles(q_lat, q_pe, c_ptr, bt_ptr + b * stride_bt, start, end, stride_cb, stride_cs,
                                  scale, R, DR, PAGE, BLOCK_H, BLOCK_R, BLOCK_P, BLOCK_N, PRECISION, DOT_FP32)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty split writes zeros
    o_ptrs = o_ptr + b * stride_ob + split * stride_os + offs_h[:, None] * stride_oh + offs_r[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=h_mask[:, None] & r_mask[None, :])
    if WRITE_LSE:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + b * stride_lb + offs_h * stride_lh + split, lse, mask=h_mask)


@triton.jit
def _mla_prefix_kernel(
    q_ptr, c_ptr, rows_ptr, pb_ptr, plen_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_cb, stride_cs, stride_rows, stride_pb,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    scale, num_splits, first_slot, H,
    MAXR: tl.constexpr, R: tl.constexpr, DR: tl.constexpr, PAGE: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    """Grid (group, head block, split of the prefix): the group's MAXR rows x BLOCK_H heads
    stacked into one (BLOCK_M, R + Dr) query tile against its shared prefix, each latent row
    read once for all of them; writes partial slot first_slot + split of each (row, head)."""
    grp, hb, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    plen = tl.load(plen_ptr + grp)
    if plen > 0:  # an unused group of the static (CUDA-graph) buffers does nothing
        offs_m, offs_r, offs_p = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_R), tl.arange(0, BLOCK_P)
        r = offs_m // BLOCK_H  # stacked query m: row r of the group, head hb * BLOCK_H + m % BLOCK_H
        head = hb * BLOCK_H + offs_m % BLOCK_H
        row = tl.load(rows_ptr + grp * stride_rows + r, mask=r < MAXR, other=-1).to(tl.int64)
        m_mask = (row >= 0) & (head < H)
        row = tl.where(row >= 0, row, 0)
        q_row = q_ptr + row[:, None] * stride_qb + head[:, None] * stride_qh
        q_lat = tl.load(q_row + offs_r[None, :], mask=m_mask[:, None] & (offs_r < R)[None, :], other=0.0)
        q_pe = tl.load(q_row + R + offs_p[None, :], mask=m_mask[:, None] & (offs_p < DR)[None, :], other=0.0)
        chunk = tl.cdiv(tl.cdiv(plen, num_splits), BLOCK_N) * BLOCK_N
        start = split * chunk
        end = tl.minimum(start + chunk, plen)
        acc, m_i, l_i = _latent_tiles(q_lat, q_pe, c_ptr, pb_ptr + grp * stride_pb, start, end, stride_cb,
                                      stride_cs, scale, R, DR, PAGE, BLOCK_M, BLOCK_R, BLOCK_P, BLOCK_N,
                                      PRECISION, DOT_FP32)
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        slot = first_slot + split
        tl.store(o_ptr + row[:, None] * stride_ob + head[:, None] * stride_oh + slot * stride_os + offs_r[None, :],
                 out, mask=m_mask[:, None] & (offs_r < R)[None, :])
        tl.store(lse_ptr + row * stride_lb + head * stride_lh + slot, lse, mask=m_mask)


def _check(q, cache, block_tables, context_lens, rank):
    if q.dim() != 3 or cache.dim() != 4 or cache.shape[2] != 1:
        raise ValueError(f"MLA decode: q must be (B, H, R + Dr) and the cache (num_blocks, block_size, 1, "
                         f"R + Dr); got {tuple(q.shape)}, {tuple(cache.shape)}")
    (B, H, D), page = q.shape, cache.shape[1]
    if cache.shape[3] != D or not 0 < rank < D:
        raise ValueError(f"MLA decode: q {tuple(q.shape)} does not fit cache {tuple(cache.shape)} "
                         f"with rank {rank} (same R + Dr, 0 < R < R + Dr)")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or context_lens.shape != (B,):
        raise ValueError(f"MLA decode: block_tables must be ({B}, max_blocks) and context_lens ({B},), "
                         f"got {tuple(block_tables.shape)}, {tuple(context_lens.shape)}")
    if block_tables.is_floating_point() or context_lens.is_floating_point():
        raise TypeError("MLA decode: block_tables and context_lens must be integer tensors")
    if q.dtype != cache.dtype:
        raise TypeError(f"MLA decode: q {q.dtype} and cache {cache.dtype} differ")
    return B, H, D, page


def _kernel_sizes(q, cache, block_tables, context_lens, rank):
    """Checks and tile sizes shared by the kernels' launches: (B, H, page, BLOCK_R, BLOCK_P, BLOCK_N)."""
    B, H, D, page = _check(q, cache, block_tables, context_lens, rank)
    if page & (page - 1) or D > 1024:
        raise ValueError(f"MLA decode kernel: needs a power-of-two block_size (got {page}) and R + Dr <= 1024")
    if q.stride(2) != 1 or cache.stride(3) != 1:
        raise ValueError("MLA decode kernel: q and the cache need contiguous rows")
    BLOCK_R, BLOCK_P = max(16, triton.next_power_of_2(rank)), max(16, triton.next_power_of_2(D - rank))
    return B, H, page, BLOCK_R, BLOCK_P, 32 if BLOCK_R >= 256 else 64


def _launch_options(q, BLOCK_R):
    return dict(PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1" and q.dtype != torch.float32,
                num_warps=8 if BLOCK_R >= 256 else 4, num_stages=2)


def _merge(o, lse, out, num_splits: int, BLOCK_R: int):
    """out (B, H, R) = the log-sum-exp merge of the partials (paged_attention.py's merge kernel;
    8 warps beyond 32 splits of 512 floats, where 4 would spill)."""
    B, H, R = out.shape
    BLOCK_S = triton.next_power_of_2(num_splits)
    _merge_kernel[(B, H)](o, lse, out, o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
                          out.stride(0), out.stride(1), num_splits, D=R, BLOCK_S=BLOCK_S, BLOCK_D=BLOCK_R,
                          num_warps=8 if BLOCK_S * BLOCK_R > 16384 else 4)


def mla_decode_attention_triton(q, cache, block_tables, context_lens, scale, rank, num_splits=None):
    B, H, page, BLOCK_R, BLOCK_P, BLOCK_N = _kernel_sizes(q, cache, block_tables, context_lens, rank)
    D = q.shape[2]
    head_blocks = triton.cdiv(H, BLOCK_H)
    S = num_splits or _auto_splits(q, B, head_blocks, block_tables.shape[1] * page, BLOCK_N)
    out = torch.empty(B, H, rank, dtype=q.dtype, device=q.device)  # (B, H, R)
    if S == 1:  # the split kernel normalises and writes `out` itself
        o, lse, so, sl = out, out, (out.stride(0), out.stride(1), 0), (0, 0)
    else:
        o, lse = cascade_partials(B, H, S, 0, rank, q.device)  # per-split outputs and log2-sum-exp2
        so, sl = (o.stride(0), o.stride(1), o.stride(2)), (lse.stride(0), lse.stride(1))
    _mla_split_kernel[(B, head_blocks, S)](
        q, cache, block_tables, context_lens.contiguous(), o, lse,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), block_tables.stride(0), *so, *sl,
        float(scale), S, H, context_lens,
        R=rank, DR=D - rank, PAGE=page, BLOCK_H=BLOCK_H, BLOCK_R=BLOCK_R, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
        WRITE_LSE=S > 1, HAS_START=False, **_launch_options(q, BLOCK_R),
    )
    if S > 1:
        _merge(o, lse, out, S, BLOCK_R)
    return out


def mla_decode_attention_ref(q, cache, block_tables, context_lens, scale, rank, num_splits=None):
    """The readable twin (and the CPU path): each sequence's rows gathered through its block
    table, one (B, L, R + Dr) row set shared by all heads (no head axis), scores and softmax
    in fp32, masked past each length. Batches of sequences at a time, so at most
    REF_CHUNK_BYTES of fp32 rows exist at once (L = the table width, never a lens.max() sync)."""
    B, H, D, page = _check(q, cache, block_tables, context_lens, rank)
    L = block_tables.shape[1] * page
    out = torch.empty(B, H, rank, dtype=q.dtype, device=q.device)
    step = max(1, REF_CHUNK_BYTES // (L * D * 4))  # sequences per chunk
    for b0 in range(0, B, step):
        blocks = block_tables[b0:b0 + step].long().clamp(0, cache.shape[0] - 1)  # unused entries: any block
        rows = cache[blocks].flatten(1, 2)[:, :, 0].float()  # (b, L, R + Dr)
        s = torch.bmm(q[b0:b0 + step].float(), rows.transpose(1, 2)) * scale  # (b, H, L)
        valid = torch.arange(L, device=q.device) < context_lens[b0:b0 + step, None].long()  # (b, L)
        p = s.masked_fill(~valid[:, None, :], float("-inf")).softmax(dim=-1)
        out[b0:b0 + step] = torch.bmm(p, rows[..., :rank]).to(q.dtype)  # (b, H, R)
    return out


def mla_cascade_decode_attention_triton(q, cache, block_tables, context_lens, groups, scale, rank,
                                        num_splits=None, num_prefix_splits=None):
    """Three launches, no host sync (CUDA-graph capturable), as cascade_attention.py: the split
    kernel over each row's private suffix (from groups.start), the prefix kernel (the group's
    rows x 16 heads stacked, each shared latent row read once per group tile), the merge."""
    B, H, page, BLOCK_R, BLOCK_P, BLOCK_N = _kernel_sizes(q, cache, block_tables, context_lens, rank)
    D = q.shape[2]
    NG, MAXR = groups.rows.shape
    head_blocks = triton.cdiv(H, BLOCK_H)
    S = num_splits or _auto_splits(q, B, head_blocks, block_tables.shape[1] * page, BLOCK_N)
    P = num_prefix_splits or prefix_splits(groups, page)
    o, lse = cascade_partials(B, H, S, P, rank, q.device)
    lens = context_lens.contiguous()
    so, sl = (o.stride(0), o.stride(1), o.stride(2)), (lse.stride(0), lse.stride(1))
    _mla_split_kernel[(B, head_blocks, S)](
        q, cache, block_tables, lens, o, lse,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), block_tables.stride(0), *so, *sl,
        float(scale), S, H, groups.start,
        R=rank, DR=D - rank, PAGE=page, BLOCK_H=BLOCK_H, BLOCK_R=BLOCK_R, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
        WRITE_LSE=True, HAS_START=True, **_launch_options(q, BLOCK_R),
    )
    _mla_prefix_kernel[(NG, head_blocks, P)](
        q, cache, groups.rows, groups.prefix_blocks, groups.prefix_len, o, lse,
        q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), groups.rows.stride(0),
        groups.prefix_blocks.stride(0), *so, *sl, float(scale), P, S, H,
        MAXR=MAXR, R=rank, DR=D - rank, PAGE=page, BLOCK_H=BLOCK_H,
        BLOCK_M=triton.next_power_of_2(MAXR * BLOCK_H), BLOCK_R=BLOCK_R, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N,
        **_launch_options(q, BLOCK_R),
    )
    out = torch.empty(B, H, rank, dtype=q.dtype, device=q.device)
    _merge(o, lse, out, S + P, BLOCK_R)
    return out


def mla_cascade_decode_attention_ref(q, cache, block_tables, context_lens, groups, scale, rank):
    """The torch twin (and the CPU path): cascade.py's shared-prefix attention with the latent
    rows as the one KV head and their first R columns (a view) as the values."""
    return cascade_decode_attention_ref(q, cache, cache[..., :rank], block_tables, context_lens, groups, scale)


def mla_cascade_decode_attention(q, cache, block_tables, context_lens, groups, scale, rank):
    """Latent attention with shared prefixes (groups: cascade.CascadeGroups). -> (B, H, R),
    equal to mla_decode_attention."""
    if use_triton(q):
        return mla_cascade_decode_attention_triton(q, cache, block_tables, context_lens, groups, scale, rank)
    return mla_cascade_decode_attention_ref(q, cache, block_tables, context_lens, groups, scale, rank)


def mla_decode_attention(q, cache, block_tables, context_lens, scale, rank, num_splits=None):
    """Latent-space attention of one new query per sequence over its paged rows. -> (B, H, R)."""
    fn = mla_decode_attention_triton if use_triton(q) else mla_decode_attention_ref
    return fn(q, cache, block_tables, context_lens, scale, rank, num_splits)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("MLA decode benchmark needs CUDA (kernel tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    page, dt, R, Dr, H = 16, torch.bfloat16, 512, 64, 16  # DeepSeek-V2-Lite
    for B, ctx in ((1, 8192), (64, 1536), (256, 1536)):
        nblk = ctx // page
        cache = torch.randn(B * nblk, page, 1, R + Dr, device="cuda", dtype=dt)
        tables = torch.randperm(B * nblk, device="cuda", dtype=torch.int32).view(B, nblk)
        lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
        q = torch.randn(B, H, R + Dr, device="cuda", dtype=dt)
        nbytes = cache.numel() * cache.element_size()  # every cached row once
        args = (q, cache, tables, lens, 0.1, R)
        for name, fn in (("triton", mla_decode_attention_triton), ("torch", mla_decode_attention_ref)):
            ms = cuda_ms(lambda: fn(*args), iters=10, warmup=2)
            print(f"B={B:3d} ctx={ctx:5d} {name:6s} {ms * 1e3:9.1f} us  {nbytes / ms / 1e6:7.1f} GB/s")
