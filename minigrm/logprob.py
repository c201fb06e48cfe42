"""Token log-probabilities over a large vocabulary without materialising the (N, V) logits.

Contract:
    token_logprobs(hidden (N, C), lm_head_weight (V, C), targets (N,) long,
                   softcap=None, temperature=1.0, chunk_size=1024)  -> (N,) fp32
        (fp64 for fp64 inputs)
        log softmax(cap * tanh(hidden @ W.T / cap) / temperature)[targets], differentiable
        w.r.t. hidden and W. At most a few (chunk_size, V) fp32 tensors exist at once, in the
        forward and in the backward; the full (N, V) logits never do.
    token_logprobs_reference(...)                                 the slow twin (full logits)
    sequence_logprobs(model, input_ids (B, T), loss_mask (B, T), prompt_len=None)  -> (B, T - 1) fp32
        (prompt_len: the rows share that many prompt tokens, computed once: shared_prefix.py)

Why: RFT (GRM_SPEC §4) needs the next-token NLL of the GRM output and GRPO (§5) needs
log π_θ(o_t | q, o_<t) for the ratio and the KL. With Gemma-2's 256k vocabulary, 8k tokens
of fp32 logits are 8 GB, and autograd would keep them (plus the softmax) for the backward.
Here each chunk's logits are computed, reduced to one number per row and dropped; the backward
recomputes them (the same trade as Liger-Kernel's fused linear cross-entropy), using

    d log p_y / d z = onehot(y) - softmax(z),   z = cap * tanh(a / cap) / T,   a = h @ W.T
    d z / d a       = (1 - tanh²(a / cap)) / T

Precision: the matmul runs in the inputs' dtype, everything after it in fp32. The weight
gradient is accumulated over chunks in fp32 (V × C × 4 bytes) and cast back at the end.
Deviation: `CausalLM.head` applies the softcap in the activation dtype, this file in fp32, so
in bf16 the two differ by rounding. For GRPO, compute old/ref log-probs with this same function
(not the sampler's) so that ρ = 1 exactly on the first on-policy step.

Mask semantics (shared with rft.sft_example): loss_mask[b, t] = 1 means token t is a *target*,
predicted from position t - 1, so loss_mask[:, 0] is never used. sequence_logprobs returns
out[b, t - 1] = log p(input_ids[b, t] | input_ids[b, :t]) where loss_mask[b, t], else 0.
"""
from contextlib import nullcontext

import torch
from torch.autograd.function import once_differentiable

from .shared_prefix import shared_prefix_hidden


def _acc_dtype(x):  # fp32, or fp64 for fp64 inputs (so gradcheck can run)
    return torch.promote_types(x.dtype, torch.float32)


def _chunk_logits(h, weight, softcap, temperature):
    """(n, C) hidden -> (n, V) fp32 logits as sampled from, and tanh(a / cap) (or None)."""
    a = (h @ weight.T).to(_acc_dtype(h))  # (n, V)
    t = None
    if softcap is not None:
        t = torch.tanh(a / softcap)  # kept: the backward needs 1 - t²
        a = t * softcap
    return (a / temperature if temperature != 1.0 else a), t


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, temperature, chunk_size):
        N = hidden.shape[0]
        out = hidden.new_empty(N, dtype=_acc_dtype(hidden))  # (N,)
        lse = torch.empty_like(out)  # (N,)
        for s in range(0, N, chunk_size):
            z, _ = _chunk_logits(hidden[s:s + chunk_size], weight, softcap, temperature)  # (n, V)
            lse[s:s + chunk_size] = z.logsumexp(-1)
            out[s:s + chunk_size] = z.gather(1, targets[s:s + chunk_size, None]).squeeze(1)
        out -= lse
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.softcap, ctx.temperature, ctx.chunk_size = softcap, temperature, chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # grad_out (N,)
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = weight.new_zeros(weight.shape, dtype=_acc_dtype(weight)) if need_w else None
        grad_out = grad_out.to(lse.dtype)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            h, g = hidden[s:s + ctx.chunk_size], grad_out[s:s + ctx.chunk_size]  # (n, C), (n,)
            z, t = _chunk_logits(h, weight, ctx.softcap, ctx.temperature)  # (n, V)
            # grad wrt z: g * (onehot - softmax), built in place in z's memory
            dz = z.sub_(lse[s:s + ctx.chunk_size, None]).exp_().mul_(-g[:, None])
            dz.scatter_add_(1, targets[s:s + ctx.chunk_size, None], g[:, None])
            da = dz.div_(ctx.temperature)  # chain rule through z = cap * tanh(a / cap) / T
            if t is not None:
                da.mul_(1 - t * t)
            da = da.to(weight.dtype)  # the two matmuls run in the inputs' dtype
            if need_h:
                grad_h[s:s + ctx.chunk_size] = da @ weight  # (n, C)
            if need_w:
                grad_w += da.T @ h  # (V, C), accumulated in fp32
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor,
                   softcap: float | None = None, temperature: float = 1.0,
                   chunk_size: int = 1024) -> torch.Tensor:
    """(N, C) hidden, (V, C) weight, (N,) long targets -> (N,) fp32 log-probs; see module doc."""
    assert hidden.ndim == 2 and targets.shape == hidden.shape[:1], (hidden.shape, targets.shape)
    assert lm_head_weight.ndim == 2 and lm_head_weight.shape[1] == hidden.shape[1]
    assert chunk_size >= 1 and temperature > 0
    return _TokenLogprobs.apply(hidden, lm_head_weight, targets.long(), softcap, temperature, chunk_size)


def token_logprobs_reference(hidden, lm_head_weight, targets, softcap=None, temperature=1.0):
    """The slow twin: full (N, V) logits as `CausalLM.head` computes them, then log_softmax."""
    logits = (hidden @ lm_head_weight.T).to(_acc_dtype(hidden))  # (N, V)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(1, targets.long()[:, None]).squeeze(1)


def sequence_logprobs(model, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk_size: int = 1024,
                      temperature: float = 1.0, prompt_len: int | None = None, mixed_precision: bool = False) -> torch.Tensor:
    """(B, T) ids and target mask -> (B, T - 1) fp32 log p(ids[:, t] | ids[:, :t]) at column
    t - 1 for every target t (loss_mask[:, t] true); 0 elsewhere. Only target rows reach the
    vocabulary projection, so prompt and padding tokens cost nothing there. `prompt_len`: the
    rows are one prompt's completions, sharing their first prompt_len tokens, which are then
    computed once (shared_prefix.py); the same numbers. `mixed_precision`: the decoder runs
    under bf16 autocast on CUDA (fp32 master weights; training.LogprobForward), and the
    vocabulary projection then uses a bf16 copy of the lm_head weight (its gradient flows back)."""
    with autocast(input_ids.device) if mixed_precision else nullcontext():
        hidden = decoder_hidden(model.model, input_ids, prompt_len)  # (B, T, C)
    mask = loss_mask[:, 1:].bool()  # (B, T-1): position t-1 predicts token t
    h = hidden[:, :-1][mask]  # (N, C)
    targets = input_ids[:, 1:][mask]  # (N,)
    lp = token_logprobs(h, model.lm_head.weight.to(h.dtype), targets, model.config.final_logit_softcapping,
                        temperature, chunk_size)  # (N,) fp32
    out = torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device)  # (B, T-1)
    return out.masked_scatter(mask, lp)


def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs and tests stay in fp32)."""
    device = torch.device(device)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def decoder_hidden(decoder, input_ids: torch.Tensor, prompt_len: int | None = None) -> torch.Tensor:
    """decoder(input_ids), or its prefix-shared twin when the rows share `prompt_len` tokens."""
    if prompt_len is None:
        return decoder(input_ids)
    return shared_prefix_hidden(decoder, input_ids, prompt_len)
