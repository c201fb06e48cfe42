"""Mixture of experts: DeepSeekMoE as in DeepSeek-V2 (arXiv 2405.04434, section 2.2).

    s = softmax(gate(x))                                   (N, E) router probabilities, fp32
    y = shared_experts(x) + sum_{i in top-k(s)} routed_scaling_factor * s_i * experts[i](x)

Every expert is a SwiGLU `MLP` of moe_intermediate_size; the n_shared_experts always-on
experts are stored merged, as one MLP n_shared_experts times wider (`shared_experts`).
Routing is `greedy` (top-k of all E experts) or `group_limited_greedy` (DeepSeek-V2 236B: keep
the topk_group of n_group expert groups with the best single score, then top-k inside them).
The weights s_i are the softmax probabilities, not renormalised over the chosen k
(norm_topk_prob is false in every released V2 and refused by config.py). The router runs in
fp32, as in transformers, even under bf16 autocast.

Dispatch (readable, not fused): the N*k (token, expert) assignments are sorted by expert, each
expert runs one matmul over its contiguous slice of gathered tokens, and the weighted results
are added back per token (index_add). A fused grouped-GEMM kernel (MegaBlocks, vLLM's fused_moe,
DeepGEMM) runs all experts of the layer in one launch over the same sorted layout: no host sync
for the per-expert counts, no Python loop over 64 experts, no gathered copy of the tokens,
and gate/up/activation fused. With gradients on, an expert no token picked still runs (on zero
rows), so it gets a zero gradient, not none: DDP / FSDP2 ranks then always reduce the same
tensors, and one process trains exactly like several (AdamW's momentum still moves an idle
expert, as it would any parameter whose gradient is zero this step).

Not implemented, deliberately: the auxiliary load-balancing losses (expert-, device- and
communication-level balance, section 2.2.3) and token dropping. They keep experts evenly
loaded while a router is learned in pretraining. Here a pretrained, balanced router is
fine-tuned for a few hundred steps; an aux loss would add a term to the RFT/GRPO objective
that the DeepSeek-GRM paper does not mention, and without expert parallelism an imbalance
costs only speed. Gradients reach the router through the weights s_i of the chosen experts.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import MLP


class MoE(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.top_k, self.scaling = c.num_experts_per_tok, c.routed_scaling_factor
        self.topk_method, self.n_group, self.topk_group = c.topk_method, c.n_group, c.topk_group
        self.gate = nn.Linear(c.hidden_size, c.n_routed_experts, bias=False)  # the router: gate.weight (E, C)
        self.experts = nn.ModuleList(MLP(c, c.moe_intermediate_size) for _ in range(c.n_routed_experts))
        if c.n_shared_experts:
            self.shared_experts = MLP(c, c.moe_intermediate_size * c.n_shared_experts)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        weights, experts = self.route(x)  # (N, k) fp32, (N, k) expert ids
        y = self.dispatch(x, weights, experts)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(x)
        return y.view(shape)

    def route(self, x):
        """x (N, C) -> routing weights (N, k) fp32 and expert ids (N, k)."""
        with torch.autocast(x.device.type, enabled=False):
            scores = F.linear(x.float(), self.gate.weight.float()).softmax(dim=-1)  # (N, E)
        if self.topk_method == "group_limited_greedy":
            N, E = scores.shape
            best = scores.view(N, self.n_group, E // self.n_group).amax(dim=-1)  # (N, G): each group's best
            chosen = best.topk(self.topk_group, dim=-1).indices  # (N, topk_group)
            keep = torch.zeros_like(best, dtype=torch.bool).scatter_(1, chosen, True)
            scores = scores.masked_fill(~keep.repeat_interleave(E // self.n_group, dim=1), 0.0)
        weights, experts = scores.topk(self.top_k, dim=-1)
        return weights * self.scaling, experts

    def dispatch(self, x, weights, experts):
        """sum_j weights[n, j] * experts[experts[n, j]](x[n]) for every token n. -> (N, C)."""
        flat = experts.flatten()  # (N*k,) the expert of each assignment
        order = flat.argsort(stable=True)  # assignments grouped by expert
        token = order // self.top_k  # (N*k,) the token of each sorted assignment
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()  # host sync: chunk sizes
        chunks = x[token].split(counts)  # expert e's tokens, contiguous
        grad = torch.is_grad_enabled()  # training: idle experts run on 0 rows (zero gradient, see above)
        out = torch.cat([self.experts[e](h) if len(h) or grad else h for e, h in enumerate(chunks)])  # (N*k, C)
        out = (out * weights.flatten()[order, None]).to(x.dtype)  # weighted in fp32, as HF
        return torch.zeros_like(x).index_add_(0, token, out)
