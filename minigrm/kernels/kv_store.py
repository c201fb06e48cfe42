"""Scatter the new tokens' K and V into one layer's paged KV cache, in place.

Contract: `store_kv(k, v, k_cache, v_cache, slot_mapping)`; k, v (N, Hkv, D) (rows of a
token may be a strided view, e.g. a slice of a fused QKV output, but each token's Hkv * D
values must be contiguous); k_cache, v_cache (num_blocks, block_size, Hkv, D) contiguous;
slot_mapping (N,) int64, slot = physical_block * block_size + offset_in_block. A negative
slot means "skip this token" (padding rows of a CUDA-graph batch, or tokens whose KV a
shared prefix block already holds): its cache rows are left untouched. Values are cast to
the cache's dtype. `store_latent(rows, cache, slot_mapping)` is the same store for MLA's one
latent cache (num_blocks, block_size, 1, R + Dr): rows (N, R + Dr), no V.

Why a kernel: the reference is an index_put per tensor after a boolean mask (the mask makes
a data-dependent shape: a host sync, and no CUDA graph). The kernel is one launch that
writes both K and V with the skip test done per program, no sync, graph-capturable.
"""
import torch
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    stride_kn, stride_vn, ROW,  # ROW = Hkv * D, the contiguous length of one token's K (or V)
    BLOCK: tl.constexpr, HAS_V: tl.constexpr,  # HAS_V False: one tensor (MLA's latent rows)
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)  # cache row = slot * ROW in the flat cache
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < tl.where(slot >= 0, ROW, 0)  # a negative slot masks every lane: no write
    k = tl.load(k_ptr + tok * stride_kn + offs, mask=mask)
    tl.store(kc_ptr + slot * ROW + offs, k.to(kc_ptr.dtype.element_ty), mask=mask)
    if HAS_V:
        v = tl.load(v_ptr + tok * stride_vn + offs, mask=mask)
        tl.store(vc_ptr + slot * ROW + offs, v.to(vc_ptr.dtype.element_ty), mask=mask)


def _check(k, v, k_cache, v_cache, slot_mapping):
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"store_kv: k, v must both be (N, Hkv, D), got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(f"store_kv: caches must be (num_blocks, block_size, {k.shape[1]}, "
                         f"{k.shape[2]}), got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    if k_cache.dtype != v_cache.dtype:
        raise TypeError(f"store_kv: cache dtypes differ ({k_cache.dtype}, {v_cache.dtype})")
    if slot_mapping.shape != (k.shape[0],) or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"store_kv: slot_mapping must be ({k.shape[0]},) int64, got "
                         f"{tuple(slot_mapping.shape)} {slot_mapping.dtype}")


def store_kv_triton(k, v, k_cache, v_cache, slot_mapping, has_v: bool = True):
    _check(k, v, k_cache, v_cache, slot_mapping)
    N, Hkv, D = k.shape
    for name, t in (("k", k), ("v", v)):
        if t.stride(2) != 1 or t.stride(1) != D:
            raise ValueError(f"store_kv: each token's {name} must be contiguous "
                             f"(strides (*, {D}, 1)), got {t.stride()}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("store_kv: k_cache and v_cache must be contiguous")
    ROW = Hkv * D
    BLOCK = min(triton.next_power_of_2(ROW), 2048)
    if N > 0:
        grid = (N, triton.cdiv(ROW, BLOCK))
        _store_kv_kernel[grid](k, v, k_cache, v_cache, slot_mapping.contiguous(),
                               k.stride(0), v.stride(0), ROW, BLOCK=BLOCK, HAS_V=has_v, num_warps=4)


def store_kv_ref(k, v, k_cache, v_cache, slot_mapping, all_valid: bool = False, has_v: bool = True):
    """The readable twin: flatten (block, offset) into one slot axis and index_put.
    `all_valid`: the caller knows no slot is negative (eager engine steps): no masking."""
    _check(k, v, k_cache, v_cache, slot_mapping)
    if not all_valid:
        keep = slot_mapping >= 0  # (N,)
        slot_mapping, k, v = slot_mapping[keep], k[keep], v[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping.long(), k.to(k_cache.dtype))  # (slots, Hkv, D)
    if has_v:
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping.long(), v.to(v_cache.dtype))


def store_kv(k, v, k_cache, v_cache, slot_mapping, all_valid: bool = False):
    """Write k, v (N, Hkv, D) into the paged caches at slot_mapping (negative: skip). In place."""
    if use_triton(k):
        store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    else:
        store_kv_ref(k, v, k_cache, v_cache, slot_mapping, all_valid)


def store_latent(rows, cache, slot_mapping, all_valid: bool = False):
    """MLA: write latent rows (N, R + Dr) into cache (num_blocks, block_size, 1, R + Dr) at
    slot_mapping (negative: skip, as store_kv: CUDA-graph padding rows write nothing). In place."""
    rows = rows[:, None]  # (N, 1, R + Dr): one "head", no V (the kernel's HAS_V=False)
    if use_triton(rows):
        store_kv_triton(rows, rows, cache, cache, slot_mapping, has_v=False)
    else:
        store_kv_ref(rows, rows, cache, cache, slot_mapping, all_valid, has_v=False)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("kv_store benchmark needs CUDA (the kernel is tested on CPU with TRITON_INTERPRET=1)")
        raise SystemExit
    torch.manual_seed(0)
    num_blocks, block_size = 4096, 16
    for N, Hkv, D in ((32, 8, 128), (256, 4, 256), (4096, 2, 64)):
        k = torch.randn(N, Hkv, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        kc = torch.zeros(num_blocks, block_size, Hkv, D, device="cuda", dtype=torch.bfloat16)
        vc = torch.zeros_like(kc)
        slots = torch.randperm(num_blocks * block_size, device="cuda")[:N]
        nbytes = 4 * k.numel() * k.element_size()  # read k, v; write them into the caches
        for name, fn in (("triton", store_kv_triton), ("torch", store_kv_ref)):
            ms = cuda_ms(lambda: fn(k, v, kc, vc, slots), iters=100, warmup=3)
            print(f"N={N:5d} Hkv={Hkv} D={D:3d} {name:6s} {ms * 1e3:8.1f} us  "
                  f"{nbytes / ms / 1e6:7.1f} GB/s")
