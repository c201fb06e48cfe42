"""Decode attention over a paged KV cache: GQA-aware, split-KV (flash-decoding), softcap, window.

Contract: `paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale,
softcap=None, window=None, num_splits=None) -> out (B, H, D)` in q's dtype.
  q (B, H, D): one new token per sequence; its own K/V is already stored at position
  context_lens[b] - 1. k_cache, v_cache (num_blocks, block_size, Hkv, D); block_tables
  (B, max_blocks) int32: logical block i of sequence b is physical block block_tables[b, i]
  (entries past the sequence's length are never read); context_lens (B,) int32, >= 1.
  Query head h reads KV head h // G (H = Hkv * G). Scores s = (q . k) * scale; Gemma-2's
  softcap s = cap * tanh(s / cap) comes before masking; with a sliding window the query at
  p = len - 1 sees keys j with p - window < j <= p. Softmax in fp32.

Kernel 1, grid (B, Hkv, num_splits): one program owns one KV head of one sequence and one
contiguous slice of its keys. It gathers K/V tiles of BLOCK_N tokens through the block table
(token j lives at row j % block_size of physical block block_tables[b, j // block_size]) and
runs an online softmax for the G query heads of that KV head together, as a (G, D) tile padded
to 16 rows for tl.dot: each K/V byte is read once per group, not once per query head, which is
what makes GQA decode memory-bound instead of G times worse. Kernel 2 (only when num_splits >
1) merges the splits' (output, log-sum-exp) pairs. Splitting matters when B * Hkv programs
cannot fill the GPU (batch 1, long context); num_splits=None picks it from shapes alone (no
host sync, so the decode step stays CUDA-graph capturable).
Limits: head_dim D <= 256 (any D; it is padded to a power of two in registers), block_size a
power of two, q and caches of one dtype. Tested on CPU by the Triton interpreter, where bf16
dots run upcast to fp32 (see `_dot`); on GPU they are native bf16 tensor-core dots.
"""
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr):
    """a @ b accumulated in fp32. DOT_FP32 upcasts the operands first: only under the Triton
    interpreter, whose tl.dot multiplies bf16 operands as raw integers (triton 3.9)."""
    if DOT_FP32:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, start_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    scale, softcap, window, num_splits,
    G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    HAS_WINDOW: tl.constexpr, WRITE_LSE: tl.constexpr, HAS_START: tl.constexpr, PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    b, kvh, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    length = tl.load(lens_ptr + b)
    lo = 0  # first visible key
    if HAS_WINDOW:
        lo = tl.maximum(length - window, 0)
    if HAS_START:  # cascade: the keys before start[b] are the group's shared prefix, done apart
        lo = tl.maximum(lo, tl.load(start_ptr + b))
    chunk = tl.cdiv(tl.cdiv(length - lo, num_splits), BLOCK_N) * BLOCK_N  # whole tiles per split
    start = lo + split * chunk
    end = tl.minimum(start + chunk, length)  # start >= end: an empty split, writes lse = -inf

    offs_g, offs_d, offs_n = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    heads = kvh * G + offs_g  # (BLOCK_G,) the query heads sharing this KV head
    g_mask, d_mask = offs_g < G, offs_d < D
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_G, BLOCK_D)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
    l_i = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b * stride_bt
    for t in range(start, end, BLOCK_N):
        tok = t + offs_n  # (BLOCK_N,) logical positions
        valid = tok < end
        page = tl.load(bt_row + tok // PAGE, mask=valid, other=0).to(tl.int64)
        row = tok % PAGE
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + (page * stride_kb + row * stride_ks + kvh * stride_kh)[:, None]
                    + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        s = _dot(q, tl.trans(k), PRECISION, DOT_FP32) * scale  # (BLOCK_G, BLOCK_N) fp32
        if HAS_SOFTCAP:  # tanh(x) = 2 sigmoid(2x) - 1 (no tanh in tl core)
            s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
        s = tl.where(valid[None, :], s * 1.4426950408889634, float("-inf"))  # to log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every tile has a valid key
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # (BLOCK_G, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + (page * stride_vb + row * stride_vs + kvh * stride_vh)[:, None]
                    + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, DOT_FP32)
        m_i = m_new

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty split writes zeros
    o_ptrs = o_ptr + b * stride_ob + split * stride_os + heads[:, None] * stride_oh + offs_d
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=g_mask[:, None] & d_mask[None, :])
    if WRITE_LSE:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _merge_kernel(
    o_ptr, lse_ptr, out_ptr, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    stride_outb, stride_outh, num_splits,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b, h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs_s, offs_d = tl.arange(0, BLOCK_S), tl.arange(0, BLOCK_D)
    lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + offs_s, mask=offs_s < num_splits,
                  other=float("-inf"))  # (BLOCK_S,); split 0 is never empty, so max is finite
    w = tl.exp2(lse - tl.max(lse, axis=0))  # (BLOCK_S,) empty splits weigh 0
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + offs_s[:, None] * stride_os
                + offs_d[None, :], mask=(offs_s < num_splits)[:, None] & (offs_d < D)[None, :],
                other=0.0)  # (BLOCK_S, BLOCK_D) fp32
    o = tl.where((w > 0)[:, None], o, 0.0)  # a partial of weight 0 may be unwritten memory (cascade)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b * stride_outb + h * stride_outh + offs_d,
             out.to(out_ptr.dtype.element_ty), mask=offs_d < D)


_SM_COUNT = {}


def _auto_splits(q, B, Hkv, max_tokens, block_n):
    """Enough programs for ~2 waves of SMs, each split at least 256 keys (never < one tile)."""
    if not q.is_cuda:
        return 1
    dev = q.device.index if q.device.index is not None else torch.cuda.current_device()
    if dev not in _SM_COUNT:
        _SM_COUNT[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
    want = triton.cdiv(2 * _SM_COUNT[dev], B * Hkv)
    return max(1, min(want, max_tokens // max(256, block_n), 64))


def _check(q, k_cache, v_cache, block_tables, context_lens):
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"paged attention: q must be (B, H, D) and both caches (num_blocks, "
                         f"block_size, Hkv, D); got {tuple(q.shape)}, {tuple(k_cache.shape)}, "
                         f"{tuple(v_cache.shape)}")
    (B, H, D), (_, page, Hkv, Dk) = q.shape, k_cache.shape
    if Dk != D or H % Hkv:
        raise ValueError(f"paged attention: q {tuple(q.shape)} does not fit cache "
                         f"{tuple(k_cache.shape)} (same D, H a multiple of Hkv)")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or context_lens.shape != (B,):
        raise ValueError(f"paged attention: block_tables must be ({B}, max_blocks) and "
                         f"context_lens ({B},), got {tuple(block_tables.shape)}, "
                         f"{tuple(context_lens.shape)}")
    if block_tables.is_floating_point() or context_lens.is_floating_point():
        raise TypeError("paged attention: block_tables and context_lens must be integer tensors")
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise TypeError(f"paged attention: q {q.dtype} and caches {k_cache.dtype} differ")
    return B, H, D, page, Hkv


def _kernel_checks(q, k_cache, v_cache, block_tables, context_lens):
    B, H, D, page, Hkv = _check(q, k_cache, v_cache, block_tables, context_lens)
    if D > 256 or page & (page - 1):
        raise ValueError(f"paged attention kernel: needs head_dim <= 256 (got {D}) and a "
                         f"power-of-two block_size (got {page})")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("paged attention kernel: q and caches need contiguous head_dim")
    return B, H, D, page, Hkv


def _tiles(D):
    BLOCK_D = max(16, triton.next_power_of_2(D))
    return BLOCK_D, 64 if BLOCK_D <= 128 else 32  # K and V tiles of 8-16 KB in bf16


def launch_splits(q, k_cache, v_cache, block_tables, context_lens, scale, softcap, window, S, o, lse, start=None):
    """The split kernel writing S partial (output, log2-sum-exp2) pairs per row and head into
    o (B, H, >=S, D) fp32 and lse (B, H, >=S) fp32 (splits 0..S-1), keys from start[b] on
    when given (cascade.py's private suffixes). Merge them with `merge_splits`."""
    B, H, D, page, Hkv = q.shape[0], q.shape[1], q.shape[2], k_cache.shape[1], k_cache.shape[2]
    BLOCK_D, BLOCK_N = _tiles(D)
    _split_kernel[(B, Hkv, S)](
        q, k_cache, v_cache, block_tables, context_lens, start if start is not None else context_lens, o, lse,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_tables.stride(0), o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
        float(scale), float(softcap or 1.0), int(window or 0), S,
        G=H // Hkv, D=D, PAGE=page, BLOCK_G=max(16, triton.next_power_of_2(H // Hkv)), BLOCK_D=BLOCK_D,
        BLOCK_N=BLOCK_N, HAS_SOFTCAP=softcap is not None, HAS_WINDOW=window is not None,
        WRITE_LSE=True, HAS_START=start is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1" and q.dtype != torch.float32,
        num_warps=4 if BLOCK_D <= 128 else 8,
    )


def merge_splits(o, lse, out, num_splits: int):
    """out (B, H, D) = the log-sum-exp merge of the first num_splits partials of o / lse."""
    B, H, D = out.shape
    BLOCK_D = max(16, triton.next_power_of_2(D))
    _merge_kernel[(B, H)](o, lse, out, o.stride(0), o.stride(1), o.stride(2), lse.stride(0), lse.stride(1),
                          out.stride(0), out.stride(1), num_splits,
                          D=D, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=BLOCK_D, num_warps=4)


def paged_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, scale,
                                  softcap=None, window=None, num_splits=None):
    B, H, D, page, Hkv = _kernel_checks(q, k_cache, v_cache, block_tables, context_lens)
    BLOCK_D, BLOCK_N = _tiles(D)
    max_tokens = block_tables.shape[1] * page
    S = num_splits or _auto_splits(q, B, Hkv, max_tokens, BLOCK_N)
    out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)  # (B, H, D)
    lens = context_lens.contiguous()
    if S == 1:  # the split kernel normalises and writes `out` itself
        _split_kernel[(B, Hkv, 1)](
            q, k_cache, v_cache, block_tables, lens, lens, out, out,
            q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
            block_tables.stride(0), out.stride(0), out.stride(1), 0, 0, 0,
            float(scale), float(softcap or 1.0), int(window or 0), 1,
            G=H // Hkv, D=D, PAGE=page, BLOCK_G=max(16, triton.next_power_of_2(H // Hkv)), BLOCK_D=BLOCK_D,
            BLOCK_N=BLOCK_N, HAS_SOFTCAP=softcap is not None, HAS_WINDOW=window is not None,
            WRITE_LSE=False, HAS_START=False, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1" and q.dtype != torch.float32,
            num_warps=4 if BLOCK_D <= 128 else 8,
        )
        return out
    o = torch.empty(B, H, S, D, dtype=torch.float32, device=q.device)  # per-split outputs
    lse = torch.empty(B, H, S, dtype=torch.float32, device=q.device)  # their log2-sum-exp2
    launch_splits(q, k_cache, v_cache, block_tables, lens, scale, softcap, window, S, o, lse)
    merge_splits(o, lse, out, S)
    return out


def gather_kv(k_cache, v_cache, block_table_row, length: int):
    """One sequence's keys and values, laid out contiguously: two (length, Hkv, D) tensors."""
    page = k_cache.shape[1]
    blocks = block_table_row[: -(-length // page)].long()  # the ceil(length / page) used blocks
    k = k_cache[blocks].flatten(0, 1)[:length]  # (length, Hkv, D)
    v = v_cache[blocks].flatten(0, 1)[:length]
    return k, v


def paged_decode_attention_ref(q, k_cache, v_cache, block_tables, context_lens, scale,
                               softcap=None, window=None, num_splits=None):
    """The readable twin (and the CPU path): gather every sequence's K/V through its block
    table into a padded (B, L, Hkv, D) batch, mask positions past its length (and outside its
    window), attend in fp32."""
    B, H, D, page, Hkv = _check(q, k_cache, v_cache, block_tables, context_lens)
    lens = context_lens.long()
    n_blocks = -(-int(lens.max()) // page)
    blocks = block_tables[:, :n_blocks].reshape(-1).long().clamp(0, k_cache.shape[0] - 1)  # unused: any block
    k = k_cache.index_select(0, blocks).view(B, -1, Hkv, D).transpose(1, 2)  # (B, Hkv, L, D), L = n_blocks * page
    v = v_cache.index_select(0, blocks).view(B, -1, Hkv, D).transpose(1, 2)
    j = torch.arange(k.shape[2], device=q.device)[None, :]  # key positions
    valid = j < lens[:, None]  # (B, L); the query sits at p = len - 1
    if window is not None:
        valid &= j > lens[:, None] - 1 - window
    mask = valid[:, None, None, :]  # (B, 1, 1, L)
    if softcap is None:
        out = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float(), attn_mask=mask,
                                             scale=scale, enable_gqa=H != Hkv)  # (B, H, 1, D)
        return out[:, :, 0].to(q.dtype)
    qg = q.float().view(B, Hkv, H // Hkv, D)  # query head h reads KV head h // G
    s = (qg @ k.float().transpose(-1, -2)) * scale  # (B, Hkv, G, L)
    s = softcap * torch.tanh(s / softcap)  # Gemma-2, before masking
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return (p @ v.float()).reshape(B, H, D).to(q.dtype)


def paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale,
                           softcap=None, window=None, num_splits=None):
    """Attention of one new query per sequence over its paged KV cache. -> (B, H, D)."""
    fn = paged_decode_attention_triton if use_triton(q) else paged_decode_attention_ref
    return fn(q, k_cache, v_cache, block_tables, context_lens, scale, softcap, window, num_splits)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("paged attention benchmark needs CUDA (kernel tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    page, dt = 16, torch.bfloat16
    for B, H, Hkv, D, ctx in ((1, 32, 8, 128, 8192), (32, 8, 4, 256, 2048), (256, 14, 2, 64, 2048)):
        nblk = ctx // page
        k_cache = torch.randn(B * nblk, page, Hkv, D, device="cuda", dtype=dt)
        v_cache = torch.randn_like(k_cache)
        tables = torch.randperm(B * nblk, device="cuda", dtype=torch.int32).view(B, nblk)
        lens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
        q = torch.randn(B, H, D, device="cuda", dtype=dt)
        nbytes = 2 * k_cache.numel() * k_cache.element_size()  # every K and V byte once
        args = (q, k_cache, v_cache, tables, lens, D ** -0.5)
        fns = (("triton", paged_decode_attention_triton), ("torch", paged_decode_attention_ref))
        for name, fn in fns:
            ms = cuda_ms(lambda: fn(*args), iters=10, warmup=2)
            print(f"B={B:3d} H={H:2d} Hkv={Hkv} D={D:3d} ctx={ctx:5d} {name:6s} "
                  f"{ms * 1e3:9.1f} us  {nbytes / ms / 1e6:7.1f} GB/s")
