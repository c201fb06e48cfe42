"""Mixture of experts: DeepSeekMoE as in DeepSeek-V2 (arXiv 2405.04434, section 2.2).

    s = softmax(gate(x))                                   (N, E) router probabilities, fp32
    y = shared_experts(x) + sum_{i in top-k(s)} routed_scaling_factor * s_i * experts[i](x)

Every routed expert is a SwiGLU MLP of moe_intermediate_size I. They are stored stacked, as
transformers 5 holds them: `experts.gate_up_proj` (E, 2I, C) = [gate; up] and
`experts.down_proj` (E, C, I). Checkpoints name each expert's matrices separately
(`experts.7.up_proj.weight`); `checkpoint_names` / `packed_slot` translate both ways, and
checkpoint.py loads and saves through them, so files keep the released names. The
n_shared_experts always-on experts are stored merged, as one MLP n_shared_experts times wider.
Routing is `greedy` (top-k of all E experts) or `group_limited_greedy` (DeepSeek-V2 236B: keep
the topk_group of n_group expert groups with the best single score, then top-k inside them).
The weights s_i are the softmax probabilities, not renormalised over the chosen k
(norm_topk_prob is false in every released V2 and refused by config.py). The router runs in
fp32, as in transformers, even under bf16 autocast.

Dispatch, two forms of the same sum (pinned together, values and gradients, by tests/test_moe.py):
    dispatch_grouped  the N*k (token, expert) assignments sorted by expert on the device,
                      per-expert offsets by searchsorted, two grouped matmuls over the sorted
                      rows (`torch._grouped_mm`: [gate; up] fused, then down), the k weighted
                      results of each token summed in fp32 (gathered back, no atomics). No
                      host sync, a fixed number of launches whatever E: CUDA-graph capturable.
    dispatch_loop     the readable twin: per-expert counts on the host, a Python loop over the
                      experts' slices. Used where the grouped matmul would sync or cannot run:
                      CUDA before Hopper or outside bf16 (torch's fallback reads the offsets on
                      the host), widths not 16-byte aligned, torch without `_grouped_mm`.
The shared experts run beside them as one dense MLP (fusing them into the grouped matmul
would need their weights inside the stacked tensors). A routed expert that no token picks
gets a zero gradient (its rows of the stacked gradient), never none: DDP / FSDP2 ranks always
reduce the same tensors, and one process trains exactly like several.

Not implemented, deliberately: the auxiliary load-balancing losses (expert-, device- and
communication-level balance, section 2.2.3) and token dropping. They keep experts evenly
loaded while a router is learned in pretraining. Here a pretrained, balanced router is
fine-tuned for a few hundred steps; an aux loss would add a term to the RFT/GRPO objective
that the DeepSeek-GRM paper does not mention, and without expert parallelism an imbalance
costs only speed. Gradients reach the router through the weights s_i of the chosen experts.
Routed experts have no bias (as in transformers), whatever mlp_bias says.
"""
import functools
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MLP

_EXPERT_KEY = re.compile(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


class Experts(nn.Module):
    """E SwiGLU experts, stacked: gate_up_proj (E, 2I, C), down_proj (E, C, I)."""

    def __init__(self, num_experts: int, hidden: int, inner: int):
        super().__init__()
        self.num_experts, self.inner = num_experts, inner
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inner))
        self.reset_parameters()

    def reset_parameters(self):  # nn.Linear's default init, expert by expert
        for w in (self.gate_up_proj, self.down_proj):
            bound = w.shape[-1] ** -0.5
            nn.init.uniform_(w, -bound, bound)

    def forward(self, h, e: int):
        """Expert e on rows h (n, C) -> (n, C)."""
        gate, up = F.linear(h, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])


def checkpoint_names(state: dict) -> dict:
    """A state dict with stacked experts -> the checkpoint's per-expert names (views, no copy)."""
    out = {}
    for key, t in state.items():
        prefix, _, name = key.rpartition(".")
        if not prefix.endswith(".experts") or name not in ("gate_up_proj", "down_proj"):
            out[key] = t
            continue
        for e in range(t.shape[0]):
            if name == "down_proj":
                out[f"{prefix}.{e}.down_proj.weight"] = t[e]
            else:
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate, up
    return out


def packed_slot(key: str):
    """A checkpoint key of one expert's matrix -> (stacked parameter name, expert, half): e.g.
    "m.experts.7.up_proj.weight" -> ("m.experts.gate_up_proj", 7, 1), the second half of rows
    of gate_up_proj[7]; half None: the whole down_proj[e]. None for any other key."""
    m = _EXPERT_KEY.match(key)
    if m is None:
        return None
    prefix, e, name = m.group(1), int(m.group(2)), m.group(3)
    if name == "down_proj":
        return f"{prefix}.down_proj", e, None
    return f"{prefix}.gate_up_proj", e, 0 if name == "gate_proj" else 1


def _grouped_mm_native(x, *ws) -> bool:
    """Whether torch._grouped_mm runs natively here, i.e. without reading the offsets on the
    host: CUDA bf16 on Hopper/Blackwell (CUTLASS), or the CPU implementation; 16-byte strides."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if any(w.shape[-1] * w.element_size() % 16 or w.shape[-2] * w.element_size() % 16 for w in ws):
        return False
    if x.is_cuda:
        return (all(t.dtype == torch.bfloat16 for t in (x, *ws))
                and torch.cuda.get_device_capability(x.device)[0] in (9, 10))
    return x.device.type == "cpu" and all(t.dtype == x.dtype for t in ws) and _cpu_grouped_mm(x.dtype)


@functools.cache
def _cpu_grouped_mm(dtype) -> bool:
    """Whether this torch build has a CPU _grouped_mm for `dtype` (torch 2.13 has)."""
    try:
        torch._grouped_mm(torch.ones(2, 8, dtype=dtype), torch.ones(2, 8, 8, dtype=dtype),
                          offs=torch.tensor([1, 2], dtype=torch.int32))
        return True
    except (RuntimeError, NotImplementedError):
        return False


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.top_k, self.scaling = c.num_experts_per_tok, c.routed_scaling_factor
        self.topk_method, self.n_group, self.topk_group = c.topk_method, c.n_group, c.topk_group
        self.gate = nn.Linear(c.hidden_size, c.n_routed_experts, bias=False)  # the router: gate.weight (E, C)
        self.experts = Experts(c.n_routed_experts, c.hidden_size, c.moe_intermediate_size)
        if c.n_shared_experts:
            self.shared_experts = MLP(c, c.moe_intermediate_size * c.n_shared_experts)
        self.grouped = True  # False: always the readable loop (the twin the tests pin it to)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        weights, experts = self.route(x)  # (N, k) fp32, (N, k) expert ids
        y = self.shared_experts(x) if hasattr(self, "shared_experts") else None
        gu, down = self.experts.gate_up_proj, self.experts.down_proj
        if torch.is_autocast_enabled(x.device.type):  # grouped_mm is not on autocast's list
            dt = torch.get_autocast_dtype(x.device.type)
            h, gu, down = x.to(dt), gu.to(dt), down.to(dt)
        else:
            h = x
        if self.grouped and _grouped_mm_native(h, gu, down):
            routed = self.dispatch_grouped(h, weights, experts, gu, down)
        else:
            routed = self.dispatch_loop(x, weights, experts)
        routed = routed.to(x.dtype)
        return (routed if y is None else routed + y).view(shape)

    def route(self, x):
        """x (N, C) -> routing weights (N, k) fp32 and expert ids (N, k)."""
        with torch.autocast(x.device.type, enabled=False):
            scores = F.linear(x.float(), self.gate.weight.float()).softmax(dim=-1)  # (N, E)
        if self.topk_method == "group_limited_greedy":
            N, E = scores.shape
            best = scores.view(N, self.n_group, E // self.n_group).amax(dim=-1)  # (N, G): each group's best
            chosen = best.topk(self.topk_group, dim=-1).indices  # (N, topk_group)
            keep = torch.zeros_like(best, dtype=torch.bool).scatter_(1, chosen, True)  # (N, G)
            scores = scores.masked_fill(~keep[:, :, None].expand(-1, -1, E // self.n_group).reshape(N, E), 0.0)
        weights, experts = scores.topk(self.top_k, dim=-1)
        return weights * self.scaling, experts

    def dispatch_grouped(self, x, weights, experts, gate_up, down):
        """sum_j weights[n, j] * expert_{experts[n, j]}(x[n]) for every token n, with no host
        sync. x (N, C); gate_up (E, 2I, C), down (E, C, I) in x's dtype -> (N, C) fp32."""
        N, k = experts.shape
        flat = experts.flatten()  # (A,) A = N*k assignments, the expert of each
        order = flat.argsort(stable=True)  # assignments grouped by expert
        ends = torch.searchsorted(flat[order], torch.arange(gate_up.shape[0], device=x.device),
                                  right=True).to(torch.int32)  # (E,) end of each expert's rows
        h = x[order // k]  # (A, C) each sorted assignment's token
        gate, up = torch._grouped_mm(h, gate_up.transpose(1, 2), offs=ends).chunk(2, dim=-1)  # (A, I) each
        out = torch._grouped_mm(F.silu(gate) * up, down.transpose(1, 2), offs=ends)  # (A, C)
        back = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=x.device))  # (A,)
        # back[a]: the sorted row of assignment a = n * k + j; the k rows of a token are summed
        # in a fixed order (no atomics: deterministic), weighted in fp32 as HF
        return (out[back].view(N, k, -1).float() * weights[..., None]).sum(dim=1)

    def dispatch_loop(self, x, weights, experts):
        """The readable twin of `dispatch_grouped` (host sync for the chunk sizes). -> (N, C)."""
        flat = experts.flatten()
        order = flat.argsort(stable=True)
        token = order // self.top_k  # (N*k,) the token of each sorted assignment
        counts = torch.bincount(flat, minlength=self.experts.num_experts).tolist()  # host sync: chunk sizes
        chunks = x[token].split(counts)  # expert e's tokens, contiguous
        out = torch.cat([self.experts(h, e) if len(h) else h for e, h in enumerate(chunks)])  # (N*k, C)
        out = (out * weights.flatten()[order, None]).to(x.dtype)  # weighted in fp32, as HF
        return torch.zeros_like(x).index_add_(0, token, out)


if __name__ == "__main__":  # python -m minigrm.moe: one V2-Lite MoE layer, grouped vs loop
    import time
    from types import SimpleNamespace

    from torch.utils._python_dispatch import TorchDispatchMode

    class _Ops(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    c = SimpleNamespace(num_experts_per_tok=6, routed_scaling_factor=1.0, topk_method="greedy", n_group=1,
                        topk_group=1, hidden_size=2048, n_routed_experts=64, moe_intermediate_size=1408,
                        n_shared_experts=2, hidden_act="silu", mlp_bias=False, intermediate_size=0)
    with torch.device(dev):
        moe = MoE(c).to(dt).requires_grad_(False)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for n in (1, 64, 256):
        x = torch.randn(n, 2048, device=dev, dtype=dt)
        for grouped in (True, False):
            moe.grouped = grouped
            moe(x)
            with _Ops() as ops:
                moe(x)
            sync()
            t = time.perf_counter()
            for _ in range(5):
                moe(x)
            sync()
            ms = (time.perf_counter() - t) / 5 * 1e3
            print(f"{dev} {dt} tokens={n:3d} {'grouped' if grouped else 'loop':7s} {ms:8.2f} ms  {ops.n:4d} aten ops")
