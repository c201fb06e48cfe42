"""Packed weights for the engine on CPU: its large projections multiply through oneDNN with the
weight laid out once in oneDNN's blocked format, instead of through MKL on the row-major matrix.

At decode batch sizes (a few to a few hundred rows) MKL's sgemm runs well below the machine's
peak; oneDNN with a weight packed ahead of time does not repack it per call. Measured on 2 AMD
EPYC vCPUs (Zen 3), SmolLM2-135M at 32 rows: the layers' projections in the GRM workload's decode
step 311 -> 275 ms and 388 -> 323 ms (medians of ~64 steps, the two paths alternating step by step
in one run); with the LM head (layers.LMHead) too, `bench --grm --no-hf` 57.4 -> 43.9 s (means of
two alternating runs; docs/engine.md).

Only inside `weights()`, the context the engine's runner steps in (runner.ModelRunner.step): the
model's own forward keeps the row-major product, bit for bit transformers' (tests/test_smollm2.py),
and training never packs. There `linear(x, owner, w, b)`, which `fused.fused_linear` calls on its
no-grad fast path, returns x @ w^T + b through the packed copy when x and w are fp32 on an x86 CPU
with oneDNN and w has at least PACK_MIN_NUMEL entries (below that oneDNN's ~25 us per call loses to
MKL: the demo's and the tests' tiny models never pack), else None and the caller multiplies as
before (LMHead calls it too; `project(x, lin)` wraps it for one projection). The packed copy is
kept for `owner` (the first nn.Linear of the projection) with a key of every source weight's
address and version counter: an optimizer step, `copy_`, `load_state_dict` or a `.data`
re-assignment changes the key and the next call packs again (GRPO's rollouts pack once per
update; ~0.5 s for SmolLM2).

Cost: a second copy of those weights in memory (SmolLM2: +538 MB, the head's 113 included) while
the model lives. Results equal the row-major product up to float rounding (the libraries sum in
another order; SmolLM2's logits move by ~1e-4 of ~40), pinned by tests/test_packed.py. An
in-place write to the storage the weights are views of, other than through the parameters, is
not seen: nothing in minigrm writes so. MINIGRM_PACKED=0 turns the path off.
"""
import contextlib
import os
import platform
import threading
import weakref

import torch

PACK_MIN_NUMEL = 2**18  # entries of a weight worth packing (SmolLM2's smallest projection: 576 x 576 = 331,776)
ENABLED = (os.environ.get("MINIGRM_PACKED", "1") != "0" and torch.backends.mkldnn.is_available()
           and platform.machine().lower() in ("x86_64", "amd64"))
_scope = threading.local()  # .on: inside weights() in this thread
_kept = weakref.WeakKeyDictionary()  # owner module -> (key, packed weight); not an attribute of the
# module, so deepcopy and torch.save (which cannot copy oneDNN's opaque tensors) never see it


@contextlib.contextmanager
def weights():
    """Within: this thread's fp32 CPU projections go through packed weights (the engine's steps)."""
    before = getattr(_scope, "on", False)
    _scope.on = True
    try:
        yield
    finally:
        _scope.on = before


def applies(x, w) -> bool:
    """The packed path serves this product: inside weights(), fp32 on an x86 CPU, a weight large
    enough, no grad (and not an inference tensor: those keep no version counter)."""
    return (ENABLED and getattr(_scope, "on", False) and w.numel() >= PACK_MIN_NUMEL and x.device.type == "cpu"
            and x.dtype == w.dtype == torch.float32 and not torch.is_grad_enabled() and not w.is_inference())


def is_packed(owner) -> bool:
    """A packed copy is kept for this module."""
    return owner in _kept


def _key(sources) -> tuple:
    return tuple((s.data_ptr(), tuple(s.shape), s._version) for s in sources)


def packed_weight(owner, w, sources):
    """w in oneDNN's packed layout, made once per version of the source weights, kept for `owner`."""
    key = _key(sources)
    kept = _kept.get(owner)
    if kept is None or kept[0] != key:
        kept = _kept[owner] = (key, torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None))
    return kept[1]


def project(x, lin):
    """lin(x) for one nn.Linear (o_proj, down_proj), through its packed weight where that applies."""
    out = linear(x, lin, lin.weight, lin.bias) if type(lin) is torch.nn.Linear else None  # (LoRA: its own forward)
    return lin(x) if out is None else out


def linear(x, owner, w, b=None, sources=None):
    """x @ w^T + b through the packed weight, or None when the packed path does not apply
    (the caller then multiplies as usual). `sources`: the parameters w is made of (default: w)."""
    if not applies(x, w):
        return None
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight(owner, w, sources or (w,)), b, "none", [], "")
