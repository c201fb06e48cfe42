"""Fused projections: q/k/v (and gate/up) as one matmul, with the checkpoint's names kept.

`fuse_projections(model)` (called by `load_model`) moves the weights of `q_proj`, `k_proj`,
`v_proj` of every attention layer into one contiguous (q + k + v, C) storage, and those of
`gate_proj`, `up_proj` of every dense MLP into one (2 * I, C) storage, biases alike. Each
nn.Linear keeps its own parameter, now a view of its rows: the state_dict, the checkpoint
files, optimizers and gradients see exactly the modules and names of the Hugging Face
checkpoint (loading is a lookup, saving writes the HF keys; save_model copies views out).
Only the parameters' `.data` changes, so parameter objects (held by an optimizer or DDP)
stay valid.

`fused_linear(x, *linears)` then computes all projections with one matmul over that storage
when (a) no gradient is needed, (b) the layers are plain nn.Linear (a LoRA layer adds
its update in its own forward) and (c) the weights still are consecutive rows of one storage
(checked by pointer arithmetic: after `.to()`, FSDP sharding or any re-assignment the check
fails and it falls back to one matmul per projection, the slow twin, equal up to float
rounding; tests/test_fused.py pins them).

Why: a decode step at small batch is bound by reading the weights and by kernel launches;
one (q + k + v) GEMM reads the same bytes in one launch instead of three.
In the engine's steps on CPU that one matmul goes through a weight packed once for oneDNN
(packed.py; o_proj and down_proj through packed.project).
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import packed


def _consecutive(ts) -> bool:
    """The tensors are back-to-back row blocks of one contiguous storage."""
    first = ts[0]
    if not all(t is not None and t.is_contiguous() and t.dtype == first.dtype and t.device == first.device
               for t in ts):
        return False
    ptr, storage = first.data_ptr(), first.untyped_storage().data_ptr()
    for t in ts:  # same storage, not just adjacent addresses (two allocations can touch)
        if t.data_ptr() != ptr or t.untyped_storage().data_ptr() != storage:
            return False
        ptr += t.numel() * t.element_size()
    return True


def _whole(ts, rows: int):
    """The storage spanned by consecutive tensors ts, as one tensor of `rows` leading rows."""
    first = ts[0]
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def fused_linear(x, *linears):
    """[l(x) for l in linears], in one matmul when the weights are fused and no grad is needed."""
    ws = [lin.weight for lin in linears]
    if torch.is_grad_enabled() or any(type(lin) is not nn.Linear for lin in linears) or not _consecutive(ws):
        return [lin(x) for lin in linears]
    sizes = [w.shape[0] for w in ws]
    w = _whole(ws, sum(sizes))  # (sum out, in)
    bs = [lin.bias for lin in linears]
    b = None
    if bs[0] is not None:
        if not _consecutive(bs):
            return [lin(x) for lin in linears]
        b = _whole(bs, sum(sizes))
    out = packed.linear(x, linears[0], w, b, ws)  # CPU: through a weight packed once (packed.py), or None
    return (F.linear(x, w, b) if out is None else out).split(sizes, dim=-1)


def _fuse(linears) -> bool:
    for name in ("weight", "bias"):
        ps = [getattr(lin, name) for lin in linears]
        if ps[0] is None or _consecutive([p.data for p in ps]):
            continue
        if any(type(p) is not torch.nn.Parameter or p.is_meta for p in ps):
            return False  # sharded (DTensor) or not yet loaded: leave alone
        whole = torch.cat([p.data for p in ps])  # (sum out, ...)
        off = 0
        for p in ps:
            p.data = whole[off:off + p.shape[0]]
            off += p.shape[0]
    return True


def fuse_projections(model):
    """Make q/k/v and gate/up weights views of one storage each (idempotent). -> model."""
    from .layers import MLP
    from .model import Attention
    for layer in model.model.layers:
        if isinstance(layer.self_attn, Attention):
            a = layer.self_attn
            _fuse([a.q_proj, a.k_proj, a.v_proj])
        if type(layer.mlp) is MLP:
            _fuse([layer.mlp.gate_proj, layer.mlp.up_proj])
    return model
