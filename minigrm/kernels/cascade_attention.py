"""Shared-prefix (cascade) decode attention on the GPU: the group's queries stacked on its prefix.

Contract: `cascade_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens,
groups, scale, softcap=None, window=None) -> (B, H, D)`, equal to paged decode attention
(`paged_attention.paged_decode_attention_ref`), for `groups` a cascade.CascadeGroups:
  rows (NG, MAXR) int32 the decode rows of each group (-1: none); prefix_blocks (NG, NB) int32
  the physical blocks of its shared prefix; prefix_len (NG,) int32 its tokens (0: an unused
  group, e.g. in the static buffers of a CUDA graph); start (B,) int32 the first private
  position of each row (0 outside groups).

Three launches, no host sync (CUDA-graph capturable):
  1. suffix   the paged split kernel from each row's `start` on: S partials per (row, head)
  2. prefix   grid (group, KV head, P splits of the prefix): one program stacks the group's
              rows x G query heads into one (MAXR * G, D) tile and streams its slice of the
              prefix K/V once for all of them (what plain decode reads MAXR times); online
              softmax in log2 units, per-row window mask; writes P more partials per row
  3. merge    the S + P partials of each (row, head) by log-sum-exp (rows outside groups
              have lse = -inf in their P prefix slots: weight 0)
Why: the k judgments of one query read the prompt's KV once per step instead of k times
(PERF.md: 2.9-3.5x fewer bytes at k = 8). Tested against the torch twin under TRITON_INTERPRET=1.
Limits: as the paged kernel (head_dim <= 256, power-of-two block size); MAXR * G <= 128.
"""
import os

import torch
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms
from minigrm.kernels.paged_attention import _auto_splits, _dot, _kernel_checks, _tiles, launch_splits, merge_splits


@triton.jit
def _prefix_kernel(
    q_ptr, k_ptr, v_ptr, rows_ptr, pb_ptr, plen_ptr, lens_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_rows, stride_pb, stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    scale, softcap, window, num_splits, first_slot,
    G: tl.constexpr, MAXR: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
):
    grp, kvh, split = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    plen = tl.load(plen_ptr + grp)
    if plen > 0:  # an unused group of the static (CUDA-graph) buffers does nothing
        offs_m, offs_d, offs_n = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_N)
        r = offs_m // G  # (BLOCK_M,) stacked query m = row r of the group, head kvh * G + m % G
        head = kvh * G + offs_m % G
        row = tl.load(rows_ptr + grp * stride_rows + r, mask=r < MAXR, other=-1).to(tl.int64)
        m_mask, d_mask = row >= 0, offs_d < D
        row = tl.where(m_mask, row, 0)
        q = tl.load(q_ptr + row[:, None] * stride_qb + head[:, None] * stride_qh + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_D)
        qpos = tl.load(lens_ptr + row, mask=m_mask, other=1) - 1  # (BLOCK_M,) each query's position
        chunk = tl.cdiv(tl.cdiv(plen, num_splits), BLOCK_N) * BLOCK_N
        start = split * chunk
        end = tl.minimum(start + chunk, plen)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: window-masked tiles give p = 0
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        pb_row = pb_ptr + grp * stride_pb
        for t in range(start, end, BLOCK_N):
            tok = t + offs_n  # (BLOCK_N,) prefix positions
            valid = tok < end
            page = tl.load(pb_row + tok // PAGE, mask=valid, other=0).to(tl.int64)
            prow = tok % PAGE
            kv_mask = valid[:, None] & d_mask[None, :]
            k = tl.load(k_ptr + (page * stride_kb + prow * stride_ks + kvh * stride_kh)[:, None] + offs_d[None, :],
                        mask=kv_mask, other=0.0)  # (BLOCK_N, BLOCK_D)
            s = _dot(q, tl.trans(k), PRECISION, DOT_FP32) * scale  # (BLOCK_M, BLOCK_N)
            if HAS_SOFTCAP:
                s = softcap * (2.0 * tl.sigmoid(2.0 * s / softcap) - 1.0)
            seen = valid[None, :] & m_mask[:, None]  # the prefix precedes every query of the group
            if HAS_WINDOW:
                seen = seen & (tok[None, :] > qpos[:, None] - window)
            s = tl.where(seen, s * 1.4426950408889634, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (page * stride_vb + prow * stride_vs + kvh * stride_vh)[:, None] + offs_d[None, :],
                        mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, DOT_FP32)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        slot = first_slot + split
        tl.store(o_ptr + row[:, None] * stride_ob + head[:, None] * stride_oh + slot * stride_os + offs_d[None, :],
                 out, mask=m_mask[:, None] & d_mask[None, :])
        tl.store(lse_ptr + row * stride_lb + head * stride_lh + slot, lse, mask=m_mask)


def prefix_splits(groups, page: int) -> int:
    """Splits of each group's prefix, from shapes only (graph-safe): ~512 keys per program."""
    return max(1, min(16, groups.prefix_blocks.shape[1] * page // 512))


def cascade_partials(B: int, H: int, S: int, P: int, D: int, device):
    """fp32 buffers for S suffix + P prefix partials per (row, head): outputs (B, H, S + P, D) and
    their log2-sum-exp2 (B, H, S + P), the prefix slots -inf (rows outside every group have none)."""
    o = torch.empty(B, H, S + P, D, dtype=torch.float32, device=device)
    lse = torch.empty(B, H, S + P, dtype=torch.float32, device=device)
    lse[:, :, S:].fill_(float("-inf"))
    return o, lse


def cascade_decode_attention_triton(q, k_cache, v_cache, block_tables, context_lens, groups, scale,
                                    softcap=None, window=None, num_splits=None, num_prefix_splits=None):
    B, H, D, page, Hkv = _kernel_checks(q, k_cache, v_cache, block_tables, context_lens)
    G = H // Hkv
    NG, MAXR = groups.rows.shape
    if MAXR * G > 128:
        raise ValueError(f"cascade kernel: a group tile of {MAXR} rows x {G} heads exceeds 128 stacked queries")
    BLOCK_D, BLOCK_N = _tiles(D)
    S = num_splits or _auto_splits(q, B, Hkv, block_tables.shape[1] * page, BLOCK_N)
    P = num_prefix_splits or prefix_splits(groups, page)
    o, lse = cascade_partials(B, H, S, P, D, q.device)
    lens = context_lens.contiguous()
    launch_splits(q, k_cache, v_cache, block_tables, lens, scale, softcap, window, S, o, lse, groups.start)
    _prefix_kernel[(NG, Hkv, P)](
        q, k_cache, v_cache, groups.rows, groups.prefix_blocks, groups.prefix_len, lens, o, lse,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        groups.rows.stride(0), groups.prefix_blocks.stride(0), o.stride(0), o.stride(1), o.stride(2),
        lse.stride(0), lse.stride(1), float(scale), float(softcap or 1.0), int(window or 0), P, S,
        G=G, MAXR=MAXR, D=D, PAGE=page, BLOCK_M=max(16, triton.next_power_of_2(MAXR * G)), BLOCK_D=BLOCK_D,
        BLOCK_N=BLOCK_N, HAS_SOFTCAP=softcap is not None, HAS_WINDOW=window is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_FP32=os.environ.get("TRITON_INTERPRET") == "1" and q.dtype != torch.float32,
        num_warps=4 if BLOCK_D <= 128 else 8,
    )
    out = torch.empty(B, H, D, dtype=q.dtype, device=q.device)
    merge_splits(o, lse, out, S + P)
    return out


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("cascade attention benchmark needs CUDA (kernel tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    from minigrm.cascade import build_groups
    from minigrm.kernels.paged_attention import paged_decode_attention_triton
    torch.manual_seed(0)
    page, dt = 16, torch.bfloat16
    for P_, k, H, Hkv, D, prefix, own in ((32, 8, 14, 2, 64, 1536, 256), (32, 8, 12, 2, 128, 1536, 256)):
        n_pre, n_own = prefix // page, own // page
        nb = P_ * n_pre + P_ * k * n_own
        k_cache = torch.randn(nb, page, Hkv, D, device="cuda", dtype=dt)
        v_cache = torch.randn_like(k_cache)
        tables, lens, nxt = [], [], P_ * n_pre
        for g in range(P_):
            for _ in range(k):
                tables.append(list(range(g * n_pre, (g + 1) * n_pre)) + list(range(nxt, nxt + n_own)))
                nxt += n_own
                lens.append(prefix + own)
        groups = build_groups(tables, lens, page, 8, "cuda", max_rows=64 // (H // Hkv))
        t = torch.tensor(tables, dtype=torch.int32, device="cuda")
        ln = torch.tensor(lens, dtype=torch.int32, device="cuda")
        q = torch.randn(P_ * k, H, D, device="cuda", dtype=dt)
        plain = 2 * P_ * k * (prefix + own) * Hkv * D * 2  # bytes: every row reads all its K and V
        shared = 2 * (P_ * prefix + P_ * k * own) * Hkv * D * 2
        for name, fn, nbytes in (("paged", lambda: paged_decode_attention_triton(q, k_cache, v_cache, t, ln, D**-0.5), plain),
                                 ("cascade", lambda: cascade_decode_attention_triton(q, k_cache, v_cache, t, ln, groups,
                                                                                     D**-0.5), shared)):
            ms = cuda_ms(fn, iters=20, warmup=1)
            print(f"{P_}x{k} rows H={H} Hkv={Hkv} D={D} prefix {prefix} + {own}: {name:8s} {ms * 1e3:8.1f} us "
                  f"({nbytes / ms / 1e6:7.1f} GB/s of the bytes it must read)")
