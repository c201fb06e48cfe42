"""KV pool sizing: one memory knob, honoured on every device, from a profiled warm-up on CUDA.

    kv_cache_bytes=N          the pool gets N bytes, on CPU and on CUDA alike
    kv_cache_bytes=None       CPU: 2 GiB. CUDA: gpu_memory_utilization x the GPU's memory, minus
                              what the process holds (weights), minus the profiled peak of a
                              warm-up (the largest prefill chunk, the sampler at full batch) and
                              the memory CUDA graphs keep (a decode pass at full batch); never
                              more than is free.

Either way the pool never exceeds what max_num_seqs sequences of max_model_len tokens can use.
The warm-up runs the real prefill / decode code on a throw-away pool of a few blocks
(`profile_activation_bytes`), so whatever the decoder allocates is counted, not estimated.

On CPU the engine also asks the C allocator to keep freed memory (`keep_freed_memory`).
"""
import ctypes
import ctypes.util

import torch

from .kv_cache import kv_bytes_per_token

CPU_DEFAULT_BYTES = 2 * 2**30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEPT_BLOCK_BYTES = 32 * 2**20  # freed blocks up to this size stay in the process (keep_freed_memory)


def keep_freed_memory(mmap_threshold: int = KEPT_BLOCK_BYTES, trim_threshold: int = 2**30) -> bool:
    """CPU decode steps allocate and free the same temporaries every step, many of them 128 KB
    to tens of MB (batch x vocabulary logits and the sampler's noise, suffix K/V). glibc hands
    blocks that large back to the kernel on free (mmap, heap trim), so each step page-faults
    them in again: 1.6x on the sampler's (then int64) hash chain over (32, 49152) on the 2-core
    CPU, ~7% of a decode step of bench --overhead. Raising both thresholds (process-wide, as tcmalloc or
    jemalloc would) keeps them for reuse. -> whether the C library took the settings."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        return bool(mmap_ok and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): keep the allocator as it is
        return False


def num_blocks_for(config, block_size: int, dtype, device, max_num_seqs: int, max_model_len: int,
                   kv_cache_bytes: int | None = None, gpu_memory_utilization: float = 0.9,
                   reserved_bytes: int = 0) -> int:
    """Blocks of the KV pool. `reserved_bytes`: profiled activation + graph memory (CUDA)."""
    per_block = kv_bytes_per_token(config, dtype) * block_size
    useful = max_num_seqs * -(-max_model_len // block_size) + 1  # every sequence at full length
    if kv_cache_bytes is not None:
        budget = kv_cache_bytes
    elif torch.device(device).type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = min(gpu_memory_utilization * total - torch.cuda.memory_reserved(device), free) - reserved_bytes
        if budget < 2 * per_block:
            raise RuntimeError(f"no GPU memory left for the KV cache: {free / 2**30:.1f} GiB free, "
                               f"{reserved_bytes / 2**30:.1f} GiB needed for activations and graphs "
                               f"(gpu_memory_utilization={gpu_memory_utilization})")
    else:
        budget = CPU_DEFAULT_BYTES
    return max(2, min(int(budget // per_block), useful))


@torch.inference_mode()
def profile_activation_bytes(model, block_size: int, max_num_seqs: int, max_num_batched_tokens: int,
                             max_model_len: int, graphs: bool) -> dict:
    """Peak CUDA memory above the weights of the largest prefill chunk (with its sampling) and
    of a decode pass at max_num_seqs rows with the sampler (what a CUDA graph's pool keeps).
    -> {"prefill": bytes, "decode": bytes, "reserved": bytes to keep free beside the pool}."""
    from .runner import ModelRunner
    from .sampling import SamplingParams
    from .scheduler import Sequence
    dev = next(model.parameters()).device
    T = max(1, min(max_num_batched_tokens, max_model_len - 1))
    nb = -(-T // block_size) + 1
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    runner = ModelRunner(model, nb, block_size, max_num_seqs, max_model_len)
    seq = Sequence(0, [1] * T, SamplingParams(temperature=1.0, top_p=0.9, top_k=50), seed=0)
    seq.block_table, seq.chunk_end, seq.decoding = list(range(-(-T // block_size))), T, True
    runner.step([seq], [])  # the largest prefill chunk, and sampling its row
    V = model.config.vocab_size
    logits = torch.randn(max_num_seqs, V, device=dev, dtype=runner.dtype)
    runner._sample(logits, slice(0, max_num_seqs))  # the sampler at full batch
    del logits
    torch.cuda.synchronize(dev)
    prefill = torch.cuda.max_memory_allocated(dev) - base
    runner.state.remove(seq)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    invalid = torch.zeros(max_num_seqs, dtype=torch.bool, device=dev)  # no row writes K/V
    runner.decode(max_num_seqs, invalid)
    torch.cuda.synchronize(dev)
    decode = torch.cuda.max_memory_allocated(dev) - before
    del runner
    torch.cuda.empty_cache()
    margin = 256 * 2**20  # allocator fragmentation, cuBLAS workspaces
    return {"prefill": prefill, "decode": decode, "reserved": prefill + (decode if graphs else 0) + margin}
