"""Variable-length (packed) prefill attention over a paged KV cache: causal, GQA, softcap, window.

Contract: `prefill_attention(q, k_cache, v_cache, meta, scale, softcap=None, window=None)
-> out (N, H, D)` in q's dtype.
  q (N, H, D): the new tokens of S sequences packed back to back; sequence s owns rows
  [q_start[s], q_start[s] + q_len[s]), which are its positions ctx[s] - q_len[s] .. ctx[s] - 1
  (a prompt chunk on top of ctx - q_len cached tokens). Its K/V for all ctx[s] positions is
  already in the cache, reached through tables[s] (logical block i -> physical block).
  Query at position p sees keys j with p - window < j <= p (window None: all j <= p);
  scores (q . k) * scale, Gemma-2's softcap cap * tanh(s / cap) before masking; softmax fp32.

Kernel, grid (query tiles, H): the host cuts every sequence's rows into tiles of BLOCK_M
(`tile_seq`, `tile_m0`), so one launch covers all sequences whatever their lengths (no loop
over sequences, no padding to the longest). A program runs a flash-attention online softmax
for its BLOCK_M queries of one head over the keys from the window's start to its last
query's position, gathering K/V tiles through the block table. Memory is linear in the
tokens (no N x N mask: the reason the old per-sequence SDPA path with a boolean mask could
use no flash/efficient backend).

The torch twin (the CPU path) pads sequences into a few packs bounded in score memory (sorted
by length, so short chunks are not padded to a long prompt), gathers each pack's keys through
its tables and runs one SDPA per pack (causal without a mask when the pack holds only whole
prompts and no window, masked otherwise): a loop over packs, not over sequences.
"""
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton
from minigrm.kernels.paged_attention import _dot


@dataclass
class PrefillMeta:
    q_start: torch.Tensor  # (S,) int32 first packed row of each sequence
    q_len: torch.Tensor  # (S,) int32 its new tokens
    ctx: torch.Tensor  # (S,) int32 its keys: cached + new
    tables: torch.Tensor  # (S, max_blocks) int32
    q_start_host: list[int]
    q_len_host: list[int]
    ctx_host: list[int]

    @classmethod
    def build(cls, q_len: list[int], ctx: list[int], tables: list[list[int]], device):
        starts = [0]
        for n in q_len[:-1]:
            starts.append(starts[-1] + n)
        W = max(len(t) for t in tables)
        pinned = torch.device(device).type == "cuda"
        packed = torch.tensor([starts, q_len, ctx], dtype=torch.int32, pin_memory=pinned)
        t = torch.tensor([row + [0] * (W - len(row)) for row in tables], dtype=torch.int32, pin_memory=pinned)
        packed, t = packed.to(device, non_blocking=True), t.to(device, non_blocking=True)
        return cls(packed[0], packed[1], packed[2], t, starts, list(q_len), list(ctx))


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, bt_ptr, qs_ptr, ql_ptr, ctx_ptr, tile_seq_ptr, tile_m0_ptr,
    stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_on, stride_oh, stride_bt,
    scale, softcap, window,
    G: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    tile, h = tl.program_id(0), tl.program_id(1)
    s = tl.load(tile_seq_ptr + tile).to(tl.int64)
    m0 = tl.load(tile_m0_ptr + tile)
    q_first = tl.load(qs_ptr + s).to(tl.int64)
    q_len = tl.load(ql_ptr + s)
    ctx = tl.load(ctx_ptr + s)
    kvh = h // G
    offs_m, offs_d, offs_n = m0 + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
    m_mask, d_mask = offs_m < q_len, offs_d < D
    qpos = ctx - q_len + offs_m  # (BLOCK_M,) absolute positions of the tile's queries
    q = tl.load(q_ptr + (q_first + offs_m)[:, None] * stride_qn + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
    hi = tl.minimum(ctx - q_len + m0 + BLOCK_M, ctx)  # keys after the tile's last query are never seen
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(ctx - q_len + m0 - window + 1, 0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a fully masked tile gives p = 0, not nan
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + s * stride_bt
    for start in range(lo, hi, BLOCK_N):
        tok = start + offs_n  # (BLOCK_N,) key positions
        k_valid = tok < hi
        page = tl.load(bt_row + tok // PAGE, mask=k_valid, other=0).to(tl.int64)
        row = tok % PAGE
        kv_mask = k_valid[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + (page * stride_kb + row * stride_ks + kvh * stride_kh)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
        sc = _dot(q, tl.trans(k), PRECISION, DOT_FP32) * scale  # (BLOCK_M, BLOCK_N) fp32
        if HAS_SOFTCAP:  # tanh(x) = 2 sigmoid(2x) - 1
            sc = softcap * (2.0 * tl.sigmoid(2.0 * sc / softcap) - 1.0)
        seen = k_valid[None, :] & (tok[None, :] <= qpos[:, None])
        if HAS_WINDOW:
            seen = seen & (tok[None, :] > qpos[:, None] - window)
        sc = tl.where(seen, sc * 1.4426950408889634, float("-inf"))  # log2 units
        m_new = tl.maximum(m_i, tl.max(sc, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(sc - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + (page * stride_vb + row * stride_vs + kvh * stride_vh)[:, None] + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, DOT_FP32)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + (q_first + offs_m)[:, None] * stride_on + h * stride_oh + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


def _check(q, k_cache, v_cache, meta):
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"prefill attention: q must be (N, H, D), caches (num_blocks, block_size, Hkv, D); "
                         f"got {tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    (N, H, D), Hkv = q.shape, k_cache.shape[2]
    if k_cache.shape[3] != D or H % Hkv:
        raise ValueError(f"prefill attention: q {tuple(q.shape)} does not fit cache {tuple(k_cache.shape)}")
    if sum(meta.q_len_host) != N:
        raise ValueError(f"prefill attention: q has {N} rows, the sequences {sum(meta.q_len_host)}")
    if q.dtype != k_cache.dtype:
        raise TypeError(f"prefill attention: q {q.dtype} and cache {k_cache.dtype} differ")


def prefill_attention_triton(q, k_cache, v_cache, meta: PrefillMeta, scale, softcap=None, window=None,
                             block_m: int | None = None):
    _check(q, k_cache, v_cache, meta)
    (_, H, D), (_, page, Hkv, _) = q.shape, k_cache.shape
    if D > 256 or page & (page - 1) or q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("prefill attention kernel: head_dim <= 256, power-of-two block_size, contiguous head_dim")
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M = block_m or (64 if BLOCK_D <= 128 else 32)
    BLOCK_N = 64 if BLOCK_D <= 128 else 32
    tile_seq, tile_m0 = [], []
    for s, n in enumerate(meta.q_len_host):  # host metadata only; one launch for every sequence
        for m0 in range(0, n, BLOCK_M):
            tile_seq.append(s)
            tile_m0.append(m0)
    tiles = torch.tensor([tile_seq, tile_m0], dtype=torch.int32, pin_memory=q.is_cuda).to(q.device, non_blocking=True)
    out = torch.empty_like(q)
    if not tile_seq:
        return out
    _prefill_kernel[(len(tile_seq), H)](
        q, k_cache, v_cache, out, meta.tables, meta.q_start, meta.q_len, meta.ctx, tiles[0], tiles[1],
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3], out.stride(0), out.stride(1),
        meta.tables.stride(0), float(scale), float(softcap or 1.0), int(window or 0),
        G=H // Hkv, D=D, PAGE=page, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
        HAS_SOFTCAP=softcap is not None, HAS_WINDOW=window is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1" and q.dtype != torch.float32,
        num_warps=4 if BLOCK_D <= 128 else 8,
    )
    return out


def _packs(q_len: list[int], ctx: list[int], heads: int, max_scores: int) -> list[list[int]]:
    """Sequences sorted by length, cut into packs whose padded scores fit in max_scores."""
    order = sorted(range(len(q_len)), key=lambda i: (q_len[i], ctx[i]))
    packs, cur, tq, tk = [], [], 0, 0
    for i in order:
        ntq, ntk = max(tq, q_len[i]), max(tk, ctx[i])
        if cur and (len(cur) + 1) * ntq * ntk * heads > max_scores:
            packs.append(cur)
            cur, ntq, ntk = [], q_len[i], ctx[i]
        cur.append(i)
        tq, tk = ntq, ntk
    return packs + [cur] if cur else packs


def prefill_attention_ref(q, k_cache, v_cache, meta: PrefillMeta, scale, softcap=None, window=None,
                          max_scores: int = 2**25):
    """The torch twin: a few padded packs of sequences, one masked SDPA (or softcapped
    attention) each."""
    _check(q, k_cache, v_cache, meta)
    (N, H, _), (_, page, Hkv, _) = q.shape, k_cache.shape
    out = torch.empty_like(q)
    for pack in _packs(meta.q_len_host, meta.ctx_host, H, max_scores):
        idx = torch.tensor(pack, device=q.device)
        Tq, L = max(meta.q_len_host[i] for i in pack), max(meta.ctx_host[i] for i in pack)
        blocks = meta.tables[idx, :-(-L // page)].long()  # (P, nb)
        k = k_cache[blocks].flatten(1, 2).transpose(1, 2)  # (P, Hkv, L', D)
        v = v_cache[blocks].flatten(1, 2).transpose(1, 2)
        i = torch.arange(Tq, device=q.device)
        q_len, ctx = meta.q_len[idx].long()[:, None], meta.ctx[idx].long()[:, None]  # (P, 1)
        rows = meta.q_start[idx].long()[:, None] + i  # (P, Tq) packed rows
        real = i < q_len  # (P, Tq)
        qq = q[rows.clamp(max=N - 1)].transpose(1, 2)  # (P, H, Tq, D)
        if softcap is None and window is None and all(meta.q_len_host[s] == meta.ctx_host[s] for s in pack):
            # whole prompts (nothing cached): plain causal attention, even right-padded, since a
            # real query at position i sees keys j <= i < its length. No mask: half the work
            k, v = k[:, :, :Tq], v[:, :, :Tq]
            o = F.scaled_dot_product_attention(qq, k, v, is_causal=True, scale=scale, enable_gqa=H != Hkv)
            out[rows[real]] = o.transpose(1, 2)[real]
            continue
        qpos = ctx - q_len + i  # (P, Tq)
        j = torch.arange(k.shape[2], device=q.device)
        allowed = (j <= qpos[..., None]) & (j < ctx[..., None])  # (P, Tq, L'); padding rows see j < ctx
        if window is not None:
            allowed &= j > qpos[..., None] - window
        mask = allowed[:, None]  # (P, 1, Tq, L')
        if softcap is None:
            o = F.scaled_dot_product_attention(qq, k, v, attn_mask=mask, scale=scale, enable_gqa=H != Hkv)
        else:
            rep = H // Hkv
            s = (qq @ k.repeat_interleave(rep, 1).transpose(-1, -2)) * scale  # (P, H, Tq, L')
            s = torch.tanh(s / softcap) * softcap
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1, dtype=torch.float32).to(q.dtype)
            o = p @ v.repeat_interleave(rep, 1)
        out[rows[real]] = o.transpose(1, 2)[real]  # (rows, H, D)
    return out


def prefill_attention(q, k_cache, v_cache, meta: PrefillMeta, scale, softcap=None, window=None):
    """Packed causal attention of prompt chunks over the paged cache. -> (N, H, D)."""
    fn = prefill_attention_triton if use_triton(q) else prefill_attention_ref
    return fn(q, k_cache, v_cache, meta, scale, softcap, window)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("prefill attention benchmark needs CUDA (kernel tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    page, dt = 16, torch.bfloat16
    for S, n, H, Hkv, D in ((4, 2048, 14, 2, 64), (8, 1024, 12, 2, 128), (2, 4096, 8, 4, 256)):
        nb = n // page
        k_cache = torch.randn(S * nb, page, Hkv, D, device="cuda", dtype=dt)
        v_cache = torch.randn_like(k_cache)
        tables = torch.randperm(S * nb).view(S, nb).tolist()
        meta = PrefillMeta.build([n] * S, [n] * S, tables, "cuda")
        q = torch.randn(S * n, H, D, device="cuda", dtype=dt)
        flops = 4 * S * n * n / 2 * H * D  # causal: half the square
        for name, fn in (("triton", prefill_attention_triton), ("torch", prefill_attention_ref)):
            ms = cuda_ms(lambda: fn(q, k_cache, v_cache, meta, D**-0.5), iters=5, warmup=1)
            print(f"S={S} n={n:5d} H={H:2d} Hkv={Hkv} D={D:3d} {name:6s} {ms:8.2f} ms  {flops / ms / 1e9:7.1f} TFLOP/s")
