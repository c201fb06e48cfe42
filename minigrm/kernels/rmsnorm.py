"""Fused residual-add + RMSNorm.

Contract: `rms_norm(x, weight, eps, offset=0.0, residual=None) -> (y, h)`, x (N, C) any float
dtype, weight (C,). h = x + residual in x's dtype (or h = x), y = RMSNorm(h) in x's dtype,
bit-for-bit the recipe of `minigrm.layers.RMSNorm.forward`:
  - variance in fp32: r = rsqrt(mean(h_fp32^2) + eps)
  - offset == 0 (Llama, Qwen): y = weight * (h_fp32 * r).to(dtype)   (cast, then scale)
  - offset != 0 (Gemma, x * (1 + w)): y = (h_fp32 * r * (offset + weight.float())).to(dtype)
h is returned because it is the new residual stream of the decoder.

Why fuse: in decode every layer does `h = x + attn_out; y = norm(h)` twice. Unfused that is
five passes over (N, C) (read x, read r, write h, read h, write y) plus the fp32 temporaries
of the reference; fused it is one read of x and r and one write of h and y, from one program
per row that keeps the row in registers.
"""
import torch
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton


@triton.jit
def _rms_norm_kernel(
    x_ptr, r_ptr, w_ptr, y_ptr, h_ptr,
    stride_x, stride_r, stride_y, stride_h,
    C, eps, offset,
    HAS_RESIDUAL: tl.constexpr, HAS_OFFSET: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: N * stride can pass 2**31
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)  # (BLOCK_C,) x's dtype
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded like torch's add
        tl.store(h_ptr + row * stride_h + cols, x, mask=mask)
    h = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / C + eps)  # masked lanes are 0: no effect
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    if HAS_OFFSET:  # Gemma: scale in fp32, then cast
        y = h * rstd * (offset + w.to(tl.float32))
    else:  # Llama: cast to x's dtype, then scale in the weight's dtype
        n = (h * rstd).to(x.dtype).to(tl.float32)
        y = (n * w.to(tl.float32)).to(w.dtype)
    tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check(x, weight, residual):
    if x.dim() != 2:
        raise ValueError(f"rms_norm: x must be (N, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"rms_norm: x must be a float tensor, got {x.dtype}")
    if weight.shape != (x.shape[1],):
        raise ValueError(f"rms_norm: weight must be ({x.shape[1]},), got {tuple(weight.shape)}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"rms_norm: residual must match x {tuple(x.shape)} {x.dtype}, "
                         f"got {tuple(residual.shape)} {residual.dtype}")


def rms_norm_triton(x, weight, eps: float, offset: float = 0.0, residual=None):
    _check(x, weight, residual)
    for name, t in (("x", x), ("residual", residual)):
        if t is not None and t.stride(1) != 1:
            raise ValueError(f"rms_norm: {name} rows must be contiguous (stride(1) == 1)")
    weight = weight.contiguous()
    N, C = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)  # (N, C)
    h = torch.empty_like(y) if residual is not None else x
    r = residual if residual is not None else x  # dummy pointer, never read
    BLOCK_C = triton.next_power_of_2(C)
    num_warps = 4 if BLOCK_C < 2048 else 8 if BLOCK_C < 8192 else 16
    if N > 0:
        _rms_norm_kernel[(N,)](
            x, r, weight, y, h,
            x.stride(0), r.stride(0), y.stride(0), h.stride(0),
            C, float(eps), float(offset),
            HAS_RESIDUAL=residual is not None, HAS_OFFSET=offset != 0.0, BLOCK_C=BLOCK_C,
            num_warps=num_warps,
        )
    return y, h


def rms_norm_ref(x, weight, eps: float, offset: float = 0.0, residual=None):
    """The readable twin: exactly minigrm.layers.RMSNorm.forward after an optional add."""
    _check(x, weight, residual)
    h = x + residual if residual is not None else x  # (N, C) in x's dtype
    n = h.float()
    n = n * torch.rsqrt(n.pow(2).mean(-1, keepdim=True) + eps)
    if offset:
        y = (n * (offset + weight.float())).type_as(x)
    else:
        y = (weight * n.type_as(x)).type_as(x)
    return y, h


def rms_norm(x, weight, eps: float, offset: float = 0.0, residual=None):
    """y = RMSNorm(x + residual), h = x + residual. Triton on CUDA, torch reference otherwise."""
    if use_triton(x):
        return rms_norm_triton(x, weight, eps, offset, residual)
    return rms_norm_ref(x, weight, eps, offset, residual)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("rmsnorm benchmark needs CUDA (the kernel is tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    for N, C in ((1, 2048), (256, 2304), (4096, 4096)):
        x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16)
        res, w = torch.randn_like(x), torch.randn(C, device="cuda", dtype=torch.bfloat16)
        nbytes = 4 * x.numel() * x.element_size()  # read x, residual; write y, h
        for name, fn in (("triton", rms_norm_triton), ("torch", rms_norm_ref)):
            ms = cuda_ms(lambda: fn(x, w, 1e-6, 0.0, res), iters=100, warmup=3)
            print(f"N={N:5d} C={C:5d} {name:6s} {ms * 1e3:8.1f} us  {nbytes / ms / 1e6:7.1f} GB/s")
