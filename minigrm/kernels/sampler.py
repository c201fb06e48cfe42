"""Fused sampler: softcap + temperature + top-k/top-p + Gumbel-max + the chosen token's logprob.

Contract: `sample(logits, temperature, top_k, top_p, seeds, steps, softcap=None)`
  logits (B, V) fp32/bf16/fp16, unit column stride (row stride may exceed V);
  temperature (B,) fp32, 0 = greedy; top_k (B,) int32, 0 or >= V = off;
  top_p (B,) fp32 in (0, 1], 1.0 = off; seeds, steps (B,) int64.
  Returns tokens (B,) int64 and logprobs (B,) fp32.

The math, per row:
  z = softcap * tanh(logits / softcap)                      (Gemma-2; skipped when None), fp32
  greedy (T == 0): token = argmax z, the first index on ties.
  else: kept set K = {v : z_v >= tau}. tau is the k-th largest z (top-k), then top-p on the
        renormalised remainder: tau = the largest z-value t with mass(z >= t) >= top_p * mass(K_k),
        mass measured with p = softmax(z / T). So K is "the fewest highest-probability tokens
        whose probability reaches top_p", top-k first (the HF / vLLM order); every token tied
        with the cut-off is kept, which makes ties deterministic in both implementations.
        token = argmax_{v in K} z_v / T + g_v,  g_v = -log(-log u(seed, step, v))   (Gumbel-max)
  logprob = log_softmax(z)[token] at temperature 1 and without truncation: log pi(token) under
            the model's own distribution, which is what the GRPO ratio needs.

u(seed, step, v) is a counter-based hash (murmur3's fmix32 rounds on uint32), so a sequence's
noise depends only on (seed, step, token id): the same seed samples the same tokens whatever
the batch holds, and the torch twin reproduces the noise bit for bit.
u = (2 * (x >> 9) + 1) / 2**24: 23 random bits, odd numerator, so u lies strictly inside (0, 1)
and is exact in fp32 (the ((x >> 8) + 0.5) / 2**24 form rounds to 1.0 at the top: g = inf).

Why fused: the eager chain (softcap, divide, softmax, sort, cumsum, scatter, log_softmax, noise)
writes several fp32 (B, V) tensors; at B = 256, V = 256k each is 256 MB. The kernel reads the
logits and keeps O(1) state per row: one program per row streams the vocabulary in BLOCK_V
chunks with an online max / log-sum-exp. Temperature-only and greedy rows take that single
pass. A row with top-k/top-p finds tau without sorting by bisection on the order-preserving
int32 key of fp32 values, each step one streaming pass that counts (or weighs) the tokens above
the midpoint and snaps the bracket to the nearest data values on either side; the bracket at
least halves each step, so it ends with the exact tau in <= 32 passes per threshold (15-20 on
random 50k-256k vocabularies). Then one pass draws the token. Rows of all kinds mix in one
launch; a truncated row costs ~20-40 passes where a temperature-only row costs one.

Deviations / caveats: the integers of the hash match exactly, but the kernel's tanh (a series
below 0.25, exp formula above), exp and log are a few ulp from torch's, and sums run in a
different order, so kernel and reference agree on tokens except at score gaps of ~1e-6
(never seen on random logits) and logprobs to ~1e-6. NaN logits are not supported; -inf
logits (banned tokens) are fine. temperature < 0 acts as 0 (greedy); top_p <= 0 keeps only
the maximal z (and its ties). Values are not checked on the device: that would sync the host.
"""
import math

import numpy as np
import torch
import triton
import triton.language as tl

from minigrm.kernels import cuda_ms, use_triton
from minigrm.memory import KEPT_BLOCK_BYTES


@triton.jit
def _fmix32(x):  # murmur3 finaliser on uint32: every input bit flips each output bit w.p. ~1/2
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


@triton.jit
def _tanh(y):  # no tl.tanh that also runs under TRITON_INTERPRET; accurate to ~2 ulp
    a = tl.abs(y)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a2 = a * a  # Taylor series where 1 - e would cancel
    small = a + a * a2 * (-1.0 / 3 + a2 * (2.0 / 15 + a2 * (-17.0 / 315 + a2 * (62.0 / 2835))))
    t = tl.where(a < 0.25, small, big)
    return tl.where(y < 0, -t, t)


@triton.jit
def _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP: tl.constexpr):
    mask = offs < V
    z = tl.load(row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SOFTCAP:
        z = softcap * _tanh(z / softcap)
    return tl.where(mask, z, float("-inf")), mask


@triton.jit
def _key(z):  # int32 key with key(a) < key(b) <=> a < b for fp32 (-0.0 and +0.0 both map to 0)
    i = z.to(tl.int32, bitcast=True)
    return tl.where(i < 0, -(i & 0x7FFFFFFF), i)


@triton.jit
def _gumbel(row_key, offs):
    x = _fmix32(row_key ^ _fmix32(offs.to(tl.uint32)))
    u = ((x >> 9) * 2 + 1).to(tl.float32) * (1.0 / 16777216)  # in (0, 1), exact
    return -tl.log(-tl.log(u))


@triton.jit
def _running_argmax(best, best_i, best_z, score, z, start, BLOCK_V: tl.constexpr):
    """Fold one chunk's (BLOCK_V,) scores into the running max; keep z at the argmax."""
    cs = tl.max(score)
    ci = tl.argmax(score, 0)  # first index on ties; `>` keeps the earlier chunk on ties
    take = cs > best
    z_ci = tl.max(tl.where(tl.arange(0, BLOCK_V) == ci, z, float("-inf")))
    return tl.maximum(best, cs), tl.where(take, start + ci, best_i), tl.where(take, z_ci, best_z)


@triton.jit
def _bisect(row_ptr, V, softcap, lo, hi, mass_lo, m, T, k, target, with_mass,
            BY_MASS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr):
    """Largest data key t in [lo, hi] with count(key >= t) >= k (or mass >= target); lo holds.
    Also returns the tempered mass above it when with_mass (top-p after top-k needs it)."""
    while lo < hi:
        t = (lo.to(tl.int64) + (hi.to(tl.int64) - lo + 1) // 2).to(tl.int32)  # lo < t <= hi
        count = tl.zeros([], tl.int32)
        mass = tl.zeros([], tl.float32)
        above = tl.full([], 0x7FFFFFFF, tl.int32)  # smallest key >= t
        below = tl.full([], -0x7FFFFFFF, tl.int32)  # largest key < t
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            z, mask = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP)
            key = _key(z)
            up = mask & (key >= t)
            count += tl.sum(up.to(tl.int32))
            if with_mass:
                mass += tl.sum(tl.where(up, tl.exp((z - m) / T), 0.0))
            above = tl.minimum(above, tl.min(tl.where(up, key, 0x7FFFFFFF)))
            below = tl.maximum(below, tl.max(tl.where(mask & ~up, key, -0x7FFFFFFF)))
        if BY_MASS:
            ok = mass >= target
        else:
            ok = count >= k
        if ok:  # the answer is >= t: snap lo up to the first data value at or above t
            lo = above
            mass_lo = mass
        else:  # the answer is < t: snap hi down to the last data value below t
            hi = below
    return lo, mass_lo


@triton.jit
def _sample_kernel(logits_ptr, stride, temp_ptr, topk_ptr, topp_ptr, seed_ptr, step_ptr,
                   tok_ptr, lp_ptr, V, softcap,
                   HAS_SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr):
    pid = tl.program_id(0)
    row_ptr = logits_ptr + pid.to(tl.int64) * stride
    T = tl.load(temp_ptr + pid)
    k = tl.load(topk_ptr + pid)
    p = tl.load(topp_ptr + pid)
    seed = tl.load(seed_ptr + pid)
    step = tl.load(step_ptr + pid)
    greedy = T <= 0.0
    T = tl.where(greedy, 1.0, T)
    use_k = (k > 0) & (k < V)
    use_p = p < 1.0
    trunc = (~greedy) & (use_k | use_p)
    plain = (~greedy) & ~(use_k | use_p)
    row_key = _fmix32(seed.to(tl.uint32) ^ 0x9E3779B9)
    row_key = _fmix32(row_key ^ (seed >> 32).to(tl.uint32))
    row_key = _fmix32(row_key ^ step.to(tl.uint32))
    row_key = _fmix32(row_key ^ (step >> 32).to(tl.uint32))

    # pass 1: online max / sum-exp of z (logprob), argmax z (greedy), and for temperature-only
    # rows the Gumbel-max draw; rows with top-k/top-p also get min key and the tempered mass.
    m = tl.full([], -1.0e30, tl.float32)  # finite, so exp(m - m_new) is never nan
    s = tl.zeros([], tl.float32)
    s_T = tl.zeros([], tl.float32)
    arg_z = tl.zeros([], tl.int32)
    min_key = tl.full([], 0x7FFFFFFF, tl.int32)
    best = tl.full([], float("-inf"), tl.float32)
    best_i = tl.zeros([], tl.int32)
    best_z = tl.zeros([], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        z, mask = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP)  # (BLOCK_V,)
        cm = tl.max(z)
        arg_z = tl.where(cm > m, start + tl.argmax(z, 0), arg_z)  # strict: earlier index wins ties
        m_new = tl.maximum(m, cm)
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new))
        if trunc:
            s_T = s_T * tl.exp((m - m_new) / T) + tl.sum(tl.exp((z - m_new) / T))
            min_key = tl.minimum(min_key, tl.min(tl.where(mask, _key(z), 0x7FFFFFFF)))
        if plain:
            score = tl.where(mask, z / T + _gumbel(row_key, offs), float("-inf"))
            best, best_i, best_z = _running_argmax(best, best_i, best_z, score, z, start, BLOCK_V)
        m = m_new

    if trunc:
        lo = min_key
        hi = _key(m)
        mass_lo = s_T  # tempered mass of {key >= lo}, relative to exp(m / T)
        if use_k:
            lo, mass_lo = _bisect(row_ptr, V, softcap, lo, hi, mass_lo, m, T, k, 0.0, use_p,
                                  False, HAS_SOFTCAP, BLOCK_V)
        if use_p:  # top-p within the top-k set: its mass target is relative to that set's mass
            lo, mass_lo = _bisect(row_ptr, V, softcap, lo, hi, mass_lo, m, T, k, p * mass_lo, True,
                                  True, HAS_SOFTCAP, BLOCK_V)
        for start in range(0, V, BLOCK_V):  # last pass: Gumbel-max over the kept set
            offs = start + tl.arange(0, BLOCK_V)
            z, mask = _load_z(row_ptr, offs, V, softcap, HAS_SOFTCAP)
            kept = mask & (_key(z) >= lo)
            score = tl.where(kept, z / T + _gumbel(row_key, offs), float("-inf"))
            best, best_i, best_z = _running_argmax(best, best_i, best_z, score, z, start, BLOCK_V)

    tok = tl.where(greedy, arg_z, best_i)
    z_tok = tl.where(greedy, m, best_z)
    tl.store(tok_ptr + pid, tok.to(tl.int64))
    tl.store(lp_ptr + pid, z_tok - m - tl.log(s))


def _sample_triton(logits, temperature, top_k, top_p, seeds, steps, softcap=None, block_v=4096):
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be (B, V) with unit column stride, got {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"logits must be fp32, bf16 or fp16, not {logits.dtype}")
    if block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two, not {block_v}")
    B, V = logits.shape
    for name, t, dtype in (("temperature", temperature, torch.float32), ("top_k", top_k, torch.int32),
                           ("top_p", top_p, torch.float32), ("seeds", seeds, torch.int64),
                           ("steps", steps, torch.int64)):
        if t.shape != (B,) or t.dtype != dtype or t.device != logits.device:
            raise ValueError(f"{name} must be ({B},) {dtype} on {logits.device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
    tokens = torch.empty(B, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=logits.device)
    if B == 0:
        return tokens, logprobs
    block_v = min(block_v, triton.next_power_of_2(V))
    _sample_kernel[(B,)](logits, logits.stride(0), temperature.contiguous(), top_k.contiguous(),
                         top_p.contiguous(), seeds.contiguous(), steps.contiguous(), tokens, logprobs,
                         V, float(softcap or 1.0), HAS_SOFTCAP=softcap is not None, BLOCK_V=block_v,
                         num_warps=8 if block_v >= 2048 else 4)
    return tokens, logprobs


# ----------------------------------------------------------------------------- torch reference

# The hash runs in numpy's uint32 on the host: its wrapping multiplies and logical shifts are the
# kernel's integer ops, exactly, at a quarter of the cost of int64 torch ops holding the same bits
# (masked after every multiply). CUDA tensors (the twin checked against the kernel) go through the host.

def _fmix32_np(x):  # x: np.uint32 array, updated in place and returned
    x ^= x >> 16
    x *= np.uint32(0x7FEB352D)  # uint32 arrays wrap: the low 32 bits of the product
    x ^= x >> 15
    x *= np.uint32(0x846CA68B)
    x ^= x >> 16
    return x


def _words(t):
    """int64 tensor -> (low, high) 32-bit halves of its two's-complement bits, np.uint32 each
    (views of the little-endian int64s: low word first)."""
    a = np.ascontiguousarray(t.cpu().numpy(), dtype=np.int64).view(np.uint32)
    return a[0::2], a[1::2]


_vocab_hash: dict = {}  # V -> fmix32(v) for v < V: the per-token half of the hash


def uniform(seeds, steps, V, rows=None, cols=None):
    """(B, V) fp32 uniforms in (0, 1) on seeds' device: the kernel's noise, bit for bit. With
    `rows`/`cols` (index tensors), only those entries: u[rows[i], cols[i]]."""
    seed_lo, seed_hi = _words(seeds)
    step_lo, step_hi = _words(steps)
    key = _fmix32_np(seed_lo ^ np.uint32(0x9E3779B9))
    for word in (seed_hi, step_lo, step_hi):
        key = _fmix32_np(key ^ word)  # (B,)
    if V not in _vocab_hash:
        _vocab_hash[V] = _fmix32_np(np.arange(V, dtype=np.uint32))
    vh = _vocab_hash[V]
    if rows is None:
        x = _fmix32_np(key[:, None] ^ vh[None, :])
    else:
        x = _fmix32_np(key[rows.cpu().numpy()] ^ vh[cols.cpu().numpy()])
    x >>= 8  # ((x >> 9) * 2 + 1) == (x >> 8) | 1: the kernel's integer, in two in-place ops
    x |= 1
    u = x.astype(np.float32)
    u *= np.float32(2.0**-24)
    return torch.from_numpy(u).to(seeds.device)


# Gumbel noise -log(-log u) for u in [2**-24, 1 - 2**-24] lies in [G_LO, G_HI]: a token whose
# z / T is more than G_HI - G_LO below the row's best can never win the argmax.
G_LO, G_HI = -math.log(-math.log(2.0**-24)), -math.log(-math.log(1 - 2.0**-24))


DENSE_VOCAB = 1024  # up to this vocabulary every token gets noise: finding its contenders costs more (CPU)
SPARSE_FRACTION = 32  # and above it, when more than 1 / 32 of the tokens can win (measured crossover ~2-3%)


def _argmax(x):
    """First index of each row's maximum (argmax's tie rule; max's indices are ~3x faster on CPU)."""
    return x.max(-1).indices


def _sparse_argmax(score, rows, cols, B: int, V: int):
    """argmax of the (B, V) matrix that is -inf but score[i] at (rows[i], cols[i]) (>= 1 per row), not built:
    each row's best score, then the first column holding it (argmax's tie rule), by two scatters."""
    best = score.new_full((B,), -torch.inf).scatter_reduce_(0, rows, score, "amax")  # (B,)
    at_best = score == best[rows]
    return cols.new_full((B,), V).scatter_reduce_(0, rows[at_best], cols[at_best], "amin")


def _gumbel_argmax(z, T, tau, seeds, steps):
    """argmax over {z >= tau} of z / T + g, drawing noise only for tokens that can win (or for
    all, without gathers, when most can: flat distributions and small vocabularies)."""
    B, V = z.shape
    if V > DENSE_VOCAB:
        # z / T + g can reach the row's best only from within G_HI - G_LO of it (+ slack for rounding)
        floor = z.amax(-1, keepdim=True) - (G_HI - G_LO + 1e-3) * T  # (B, 1)
        if tau is not None:
            floor = torch.maximum(floor, tau)
        contenders = z >= floor
        if SPARSE_FRACTION * int(torch.count_nonzero(contenders)) <= B * V:  # peaked rows
            flat = np.flatnonzero(contenders.cpu().numpy())  # row-major
            rows, cols = (torch.from_numpy(i).to(z.device) for i in (flat // V, flat % V))
            g = torch.log(-torch.log(uniform(seeds, steps, V, rows, cols)))  # minus the noise
            return _sparse_argmax(z[rows, cols] / T[rows, 0] - g, rows, cols, B, V)
    score = z / T if tau is None else torch.where(z >= tau, z / T, -torch.inf)  # (B, V)
    return _argmax(score.sub_(uniform(seeds, steps, V).log_().neg_().log_()))  # every token: in place


def sampling_kinds(temperature, top_k, top_p, V: int) -> tuple[bool, bool, bool]:
    """(every row greedy, some row greedy, some row truncates by top-k or top-p): what the torch
    path branches on. Read from the tensors here (three host syncs); the engine knows them from
    the sequences' parameters and passes them as `kinds`."""
    greedy = temperature <= 0
    truncated = ((top_k > 0) & (top_k < V)).any() | (top_p < 1).any()
    return bool(greedy.all()), bool(greedy.any()), bool(truncated)


def sample_ref(logits, temperature, top_k, top_p, seeds, steps, softcap=None, kinds=None):
    """The readable slow twin of the kernel (same contract, sorts the vocabulary)."""
    z = logits.float()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    B, V = z.shape
    all_greedy, any_greedy, truncated = kinds or sampling_kinds(temperature, top_k, top_p, V)
    logp = torch.log_softmax(z, dim=-1)  # (B, V): one fused pass (half the cost of z - logsumexp on CPU)
    if all_greedy:  # nothing to draw
        tokens = _argmax(z)
        return tokens, logp.gather(1, tokens[:, None])[:, 0]
    greedy = temperature <= 0 if any_greedy else None
    T = (torch.where(greedy, 1.0, temperature) if any_greedy else temperature)[:, None]  # (B, 1)
    tau = None  # keep every token ...
    if truncated:  # ... unless truncating
        zs, _ = z.sort(dim=-1, descending=True)  # (B, V)
        k = torch.where((top_k <= 0) | (top_k >= V), V, top_k).long()
        tau = zs.gather(1, k[:, None] - 1)  # (B, 1) k-th largest z
        probs = torch.softmax(zs / T, dim=-1) * (zs >= tau)  # tempered, top-k kept, sorted
        cum = probs.cumsum(-1)
        target = top_p[:, None] * cum[:, -1:]  # top-p of the renormalised top-k set
        first = (cum < target).sum(-1, keepdim=True).clamp(max=V - 1)  # first index with cum >= target
        tau = torch.where(top_p[:, None] < 1, torch.maximum(tau, zs.gather(1, first)), tau)
    drawn = _gumbel_argmax(z, T, tau, seeds, steps)
    tokens = torch.where(greedy, _argmax(z), drawn) if any_greedy else drawn
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


# Row chunks of <= TORCH_CHUNK logits: each 4-byte (rows, V) temporary (16 MB) stays under the size up to
# which the engine keeps freed memory, never page-faulted in again (memory.py; figures: docs/engine.md).
TORCH_CHUNK = KEPT_BLOCK_BYTES // 2 // 4


def sample(logits, temperature, top_k, top_p, seeds, steps, softcap=None, block_v=4096, kinds=None):
    """Draw one token per row; returns (tokens (B,) int64, logprobs (B,) fp32). See the module doc.
    `kinds`: the rows' `sampling_kinds` when the caller knows them (the torch path skips its syncs)."""
    if use_triton(logits):
        return _sample_triton(logits, temperature, top_k, top_p, seeds, steps, softcap, block_v)
    B, V = logits.shape
    rows = max(1, TORCH_CHUNK // V)
    if B <= rows:
        return sample_ref(logits, temperature, top_k, top_p, seeds, steps, softcap, kinds)
    # rows are independent: the same tokens and logprobs as one call (the batch's kinds hold for each chunk:
    # every row greedy -> every chunk's; no row greedy / truncating -> none of a chunk's)
    parts = [sample_ref(*(t[i:i + rows] for t in (logits, temperature, top_k, top_p, seeds, steps)), softcap, kinds)
             for i in range(0, B, rows)]
    return torch.cat([tok for tok, _ in parts]), torch.cat([lp for _, lp in parts])


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print("sampler benchmark needs CUDA (the tests check the kernel on CPU under TRITON_INTERPRET=1)")
        raise SystemExit
    B, V = 256, 151936
    logits = torch.randn(B, V, device="cuda", dtype=torch.bfloat16) * 3
    seeds = torch.arange(B, device="cuda", dtype=torch.int64)
    steps = torch.zeros(B, device="cuda", dtype=torch.int64)
    full = lambda v, dt: torch.full((B,), v, device="cuda", dtype=dt)  # noqa: E731
    for name, (T, k, p) in {"greedy": (0.0, 0, 1.0), "temperature": (0.8, 0, 1.0),
                            "top-k 50": (0.8, 50, 1.0), "top-p 0.95": (0.8, 0, 0.95)}.items():
        args = (logits, full(T, torch.float32), full(k, torch.int32), full(p, torch.float32), seeds, steps)
        for label, fn in (("triton", _sample_triton), ("torch", sample_ref)):
            ms = cuda_ms(lambda: fn(*args, softcap=30.0), iters=10, warmup=1)
            print(f"{name:12s} {label:6s} B={B} V={V} bf16: {ms * 1e3:8.1f} us "
                  f"({logits.numel() * 2 / ms / 1e6:6.1f} GB/s per logits read)")
