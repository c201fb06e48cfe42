"""The building blocks every family shares: RMSNorm, RoPE (RotaryEmbedding, with Llama-3 or YaRN
frequency scaling, and `apply_rope` in HF's half-split `rotate_half` layout), the reference
`causal_attention`, the gated MLP and the vocabulary projection (LMHead).

model.py assembles them into the decoder; mla.py (multi-head latent attention) and moe.py
(mixture of experts, whose experts are `MLP`s) build DeepSeek-V2's blocks from them.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import packed
from .config import ModelConfig
from .fused import fused_linear
from .kernels import use_triton
from .kernels.rmsnorm import rms_norm, rms_norm_triton


class RMSNorm(nn.Module):
    """y = x / rms(x) * (offset + weight), computed in fp32. offset = 1 for Gemma, 0 otherwise."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0.0 else torch.zeros(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x):
        if use_triton(x) and not torch.is_grad_enabled():  # inference on GPU: one fused kernel
            return rms_norm_triton(x.reshape(-1, x.shape[-1]), self.weight, self.eps, self.offset)[0].view_as(x)
        if x.dtype == self.weight.dtype == torch.float32 and not self.offset:  # the lines below, bit for bit, one op
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        h = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x * rsqrt(mean(x^2) + eps), bit for bit, one call
        if self.offset:  # Gemma scales in fp32, then casts
            return (h * (self.offset + self.weight.float())).type_as(x)
        return self.weight * h.type_as(x)  # Llama casts, then scales in the weight's dtype

    def add_forward(self, x, residual=None):
        """(RMSNorm(residual + x), residual + x): the decoder's add + norm, one kernel on GPU."""
        if residual is None:
            return self(x), x
        if use_triton(x) and not torch.is_grad_enabled():
            y, h = rms_norm(x.reshape(-1, x.shape[-1]), self.weight, self.eps, self.offset,
                            residual.reshape(-1, x.shape[-1]))
            return y.view_as(x), h.view_as(x)
        h = residual + x
        return self(h), h


class LMHead(nn.Linear):
    """The vocabulary projection `lm_head`: an nn.Linear (same parameter, same state dict) whose
    inference on CPU, for 2 or more rows (a decode step's logits, a prefill's sampled rows),
    multiplies by VOCAB_SLICE rows of the weight at a time into one output. Each logit is the same
    dot product over the hidden size either way: bit for bit the single call (pinned in
    tests/test_model.py). MKL's one call streams a large vocabulary slowly for a few rows: in the
    GRM workload's decode steps (SmolLM2, 32 rows, 49k x 576) 34 -> 23 ms per step in place, on a
    2-core AMD EPYC (Zen 3); one row (a matrix-vector product) is not faster, so it keeps the call.
    In the engine's steps the weight packed for oneDNN (packed.py) serves instead: faster again
    (32 rows 37 -> 23 ms, 4 rows 34 -> 13 on that machine), equal up to rounding."""

    VOCAB_SLICE = 1024

    def forward(self, x):
        out = packed.linear(x, self, self.weight, self.bias)  # the engine's CPU steps (packed.py), or None
        if out is not None:
            return out
        C, V = x.shape[-1], self.out_features
        rows = x.numel() // C
        if (x.device.type != "cpu" or self.bias is not None or rows < 2 or V <= self.VOCAB_SLICE
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        out = x.new_empty(*x.shape[:-1], V)
        x2, out2 = x.reshape(rows, C), out.view(rows, V)
        for a in range(0, V, self.VOCAB_SLICE):
            w = self.weight[a:a + self.VOCAB_SLICE]  # (slice, C)
            torch.mm(x2, w.t(), out=out2[:, a:a + w.shape[0]])
        return out


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, with optional Llama-3 or YaRN frequency scaling. With MLA the
    tables span only the rope part of each head (qk_rope_head_dim)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        # computed on the CPU, then moved: arange on the meta device (load_model's skeleton)
        # imports torch._dynamo, ~2 s of every script's start-up
        self.register_buffer("inv_freq", self._inv_freq().to(torch.get_default_device()), persistent=False)
        self.attention_factor = (config.rope_scaling or {}).get("attention_factor", 1.0)  # YaRN

    def init_buffers(self, device):  # after building on the meta device
        self.inv_freq = self._inv_freq().to(device)

    def _inv_freq(self) -> torch.Tensor:
        c = self.config
        d = c.qk_rope_head_dim or c.head_dim
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float, device="cpu") / d))  # (D/2,)
        s = c.rope_scaling
        if s is None:
            return inv_freq
        if s["rope_type"] == "yarn":
            return _yarn_inv_freq(inv_freq, d, c.rope_theta, s)
        # Llama-3: keep high frequencies, divide low ones by `factor`, interpolate in between.
        old_ctx = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        low_wavelen, high_wavelen = old_ctx / s["low_freq_factor"], old_ctx / s["high_freq_factor"]
        scaled = torch.where(wavelen > low_wavelen, inv_freq / s["factor"], inv_freq)
        smooth = (old_ctx / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / s["factor"] + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions[..., None].float() * self.inv_freq  # (..., T, D/2), fp32 like HF
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., T, D)
        if self.attention_factor == 1.0:  # x * 1.0 == x: two ops less per forward
            return emb.cos().to(dtype), emb.sin().to(dtype)
        return (emb.cos() * self.attention_factor).to(dtype), (emb.sin() * self.attention_factor).to(dtype)


def _yarn_inv_freq(inv_freq, dim: int, base: float, s: dict):
    """YaRN (arXiv 2309.00071), as DeepSeek-V2 and transformers compute it: frequencies that turn
    more than beta_fast times over the original context are kept, those turning fewer than
    beta_slow times are divided by `factor`, with a linear ramp between (range floored/ceiled)."""
    def dim_of(turns):  # the (fractional) dimension whose wavelength fits `turns` times in the context
        return dim * math.log(s["original_max_position_embeddings"] / (turns * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(dim_of(s["beta_fast"])), 0), min(math.ceil(dim_of(s["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001  # as HF: no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)  # 1: interp.
    interpolated = 1.0 / (s["factor"] * (base ** (torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim)))
    return interpolated * ramp + inv_freq * (1 - ramp)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x (B, T, H, D); cos/sin (B, T, D) or (T, D)."""
    return x * cos.unsqueeze(-2) + rotate_half(x) * sin.unsqueeze(-2)


def apply_rope_qk(q, k, cos, sin):
    """apply_rope to q (B, T, H, D) and k (B, T, Hkv, D) as one tensor: one op chain for both
    (the torch decode step is bound by op count), the same values."""
    qk = apply_rope(torch.cat((q, k), dim=2), cos, sin)
    return qk.split((q.shape[2], k.shape[2]), dim=2)


def causal_attention(q, k, v, scale: float, softcap: float | None = None, window: int | None = None):
    """Reference attention. q (B, Tq, H, D); k, v (B, Tk, Hkv, D) -> (B, Tq, H, D), Tq <= Tk.

    The queries are the last Tq of the Tk positions (Tq < Tk: a prefill on top of a cached
    prefix). Query at position i sees keys j with i - window < j <= i (window=None: all j <= i).
    The softcap (Gemma-2) is tanh(s / cap) * cap applied to the scaled scores before masking.
    """
    Tq, Tk = q.shape[1], k.shape[1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if softcap is None and window is None and Tq == Tk:  # the plain causal mask: SDPA's own, no mask tensor
        # (the flash kernels skip the blocks above the diagonal: on CPU bit for bit the masked call, 1.1-1.5x
        # faster forward and backward; on CUDA it admits the flash backend, which an explicit mask rules out)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
        return out.transpose(1, 2)
    i = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]  # query positions
    j = torch.arange(Tk, device=q.device)[None, :]  # key positions
    allowed = j <= i  # (Tq, Tk)
    if window is not None:
        allowed &= j > i - window
    if softcap is None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return out.transpose(1, 2)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, Tq, Tk)
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return (probs @ v).transpose(1, 2)


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); act = SiLU (SwiGLU) or tanh-GELU (GeGLU)."""

    def __init__(self, config: ModelConfig, intermediate_size: int | None = None):  # MoE experts: their own width
        super().__init__()
        c, inner = config, intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(c.hidden_size, inner, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, inner, bias=c.mlp_bias)
        self.down_proj = nn.Linear(inner, c.hidden_size, bias=c.mlp_bias)
        self.gelu = c.hidden_act == "gelu_pytorch_tanh"

    def forward(self, x):
        g, u = fused_linear(x, self.gate_proj, self.up_proj)  # one matmul when fused (fused.py)
        g = F.gelu(g, approximate="tanh") if self.gelu else F.silu(g)
        return packed.project(g * u, self.down_proj)
