"""Rotary position embedding applied to q and k in one launch, cos/sin computed on the fly.

Contract: `apply_rope(q, k, positions, inv_freq) -> (q_out, k_out)`; q (N, H, D), k (N, Hkv, D)
(token-major, as the flattened decode/prefill batch holds them), positions (N,) int,
inv_freq (D/2,) fp32. Out-of-place; outputs are contiguous and in q's / k's dtype.
Semantics = `RotaryEmbedding.forward` + `apply_rope` of minigrm.layers, HF's half-split
("rotate_half") convention, so checkpoints need no Q/K permutation:
    freqs = positions.float() * inv_freq            fp32, (N, D/2)
    cos, sin = cos(freqs).to(dtype), sin(freqs).to(dtype)
    out[:D/2] = x1 * cos - x2 * sin;  out[D/2:] = x2 * cos + x1 * sin
The kernel rounds cos/sin to the activation dtype like the reference, then does the
products and the sum in fp32 and rounds once (the reference rounds after each product in
bf16, so bf16 results may differ by an ulp; fp32 results agree to float noise).

Why fuse: the reference materialises fp32 freqs, the (N, D) cos and sin tables, rotate_half's
concatenated copy and two products, for q and k separately. The kernel reads q and k once,
writes them once, and computes cos/sin of the token's D/2 frequencies once for all its heads.
"""
import torch
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton


@triton.jit
def _rotate_tile(x_ptr, o_ptr, stride_xn, stride_xh, stride_on, stride_oh, tok, n_heads,
                 cos, sin, HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    cols = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF)
    mask = (heads < n_heads) & (cols < HALF)
    x_row = x_ptr + tok * stride_xn + heads * stride_xh + cols
    x1 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_HALF)
    x2 = tl.load(x_row + HALF, mask=mask, other=0.0).to(tl.float32)
    o_row = o_ptr + tok * stride_on + heads * stride_oh + cols
    ty = o_ptr.dtype.element_ty
    tl.store(o_row, (x1 * cos - x2 * sin).to(ty), mask=mask)
    tl.store(o_row + HALF, (x2 * cos + x1 * sin).to(ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, inv_freq_ptr,
    stride_qn, stride_qh, stride_kn, stride_kh, stride_qon, stride_qoh, stride_kon, stride_koh,
    H, HKV,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HKV: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)  # one program per token: all its q and k heads
    cols = tl.arange(0, BLOCK_HALF)
    inv_freq = tl.load(inv_freq_ptr + cols, mask=cols < HALF, other=0.0)  # (BLOCK_HALF,) fp32
    freqs = tl.load(pos_ptr + tok).to(tl.float32) * inv_freq
    # Round cos/sin to the activation dtype first, as the reference tables are.
    cos = tl.cos(freqs).to(qo_ptr.dtype.element_ty).to(tl.float32)[None, :]  # (1, BLOCK_HALF)
    sin = tl.sin(freqs).to(qo_ptr.dtype.element_ty).to(tl.float32)[None, :]
    _rotate_tile(q_ptr, qo_ptr, stride_qn, stride_qh, stride_qon, stride_qoh, tok, H,
                 cos, sin, HALF, BLOCK_H, BLOCK_HALF)
    _rotate_tile(k_ptr, ko_ptr, stride_kn, stride_kh, stride_kon, stride_koh, tok, HKV,
                 cos, sin, HALF, BLOCK_HKV, BLOCK_HALF)


def _check(q, k, positions, inv_freq):
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError(f"apply_rope: q, k must be (N, H, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}")
    N, _, D = q.shape
    if k.shape[0] != N or k.shape[2] != D or D % 2:
        raise ValueError(f"apply_rope: q {tuple(q.shape)} and k {tuple(k.shape)} need the same N "
                         "and the same even D")
    if q.dtype != k.dtype:
        raise TypeError(f"apply_rope: q and k dtypes differ ({q.dtype}, {k.dtype})")
    if positions.shape != (N,) or positions.is_floating_point():
        raise ValueError(f"apply_rope: positions must be ({N},) int, got {tuple(positions.shape)} "
                         f"{positions.dtype}")
    if inv_freq.shape != (D // 2,) or inv_freq.dtype != torch.float32:
        raise ValueError(f"apply_rope: inv_freq must be ({D // 2},) float32, got "
                         f"{tuple(inv_freq.shape)} {inv_freq.dtype}")


def apply_rope_triton(q, k, positions, inv_freq):
    _check(q, k, positions, inv_freq)
    if q.stride(2) != 1 or k.stride(2) != 1:
        raise ValueError("apply_rope: q and k need contiguous head_dim (stride(2) == 1)")
    (N, H, D), Hkv = q.shape, k.shape[1]
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (N, H, D)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)  # (N, Hkv, D)
    BLOCK_H, BLOCK_HKV = triton.next_power_of_2(H), triton.next_power_of_2(Hkv)
    BLOCK_HALF = triton.next_power_of_2(D // 2)
    num_warps = 4 if BLOCK_H * BLOCK_HALF <= 4096 else 8
    if N > 0:
        _rope_kernel[(N,)](
            q, k, q_out, k_out, positions.contiguous(), inv_freq.contiguous(),
            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
            H, Hkv,
            HALF=D // 2, BLOCK_HALF=BLOCK_HALF, BLOCK_H=BLOCK_H, BLOCK_HKV=BLOCK_HKV,
            num_warps=num_warps,
        )
    return q_out, k_out


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope_ref(q, k, positions, inv_freq):
    """The readable twin: layers.RotaryEmbedding.forward + layers.apply_rope on (N, H, D)."""
    _check(q, k, positions, inv_freq)
    freqs = positions[:, None].float() * inv_freq  # (N, D/2) fp32
    emb = torch.cat((freqs, freqs), dim=-1)  # (N, D)
    cos, sin = emb.cos().to(q.dtype)[:, None], emb.sin().to(q.dtype)[:, None]  # (N, 1, D)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def apply_rope(q, k, positions, inv_freq):
    """Rotate q (N, H, D) and k (N, Hkv, D) by their tokens' positions. Out-of-place."""
    if use_triton(q):
        return apply_rope_triton(q, k, positions, inv_freq)
    return apply_rope_ref(q, k, positions, inv_freq)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("rope benchmark needs CUDA (the kernel is tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    for N, H, Hkv, D in ((1, 32, 8, 128), (256, 8, 4, 256), (4096, 14, 2, 64)):
        q = torch.randn(N, H, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(N, Hkv, D, device="cuda", dtype=torch.bfloat16)
        pos = torch.randint(0, 4096, (N,), device="cuda")
        inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, device="cuda").float() / D))
        nbytes = 2 * (q.numel() + k.numel()) * q.element_size()  # read and write q and k
        for name, fn in (("triton", apply_rope_triton), ("torch", apply_rope_ref)):
            ms = cuda_ms(lambda: fn(q, k, pos, inv_freq), iters=100, warmup=3)
            print(f"N={N:5d} H={H:3d} Hkv={Hkv} D={D:3d} {name:6s} {ms * 1e3:8.1f} us  "
                  f"{nbytes / ms / 1e6:7.1f} GB/s")
