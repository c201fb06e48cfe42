"""Triton kernels, one op per file, each beside the torch reference it must equal.

Every op's public function dispatches: CUDA tensors run the Triton kernel, CPU tensors the
torch reference. `MINIGRM_KERNELS=torch` forces the reference everywhere, `=triton` forces the
kernel (on CPU that needs `TRITON_INTERPRET=1`: how the tests check the kernels without a GPU).
`set_backend("torch" | "triton" | "auto")` does the same from Python.
"""
import os

_backend = os.environ.get("MINIGRM_KERNELS", "auto")


def set_backend(name: str) -> None:
    global _backend
    if name not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel backend must be auto, torch or triton, not {name!r}")
    _backend = name


def use_triton(t) -> bool:
    """Whether an op on tensor `t` should run its Triton kernel."""
    if _backend == "auto":
        return t.is_cuda
    return _backend == "triton"


def cuda_ms(fn, iters: int = 10, warmup: int = 1) -> float:
    """Milliseconds per call of fn() on the GPU, from CUDA events (the kernels' __main__ benchmarks)."""
    import torch
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters
