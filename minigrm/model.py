"""The decoder-only transformer: Llama, Qwen2, Qwen3, Gemma-2 and DeepSeek-V2.

DeepSeek-V2 swaps two blocks of the layer: multi-head latent attention (mla.py) for
`Attention`, and from layer `first_k_dense_replace` on a mixture of experts (moe.py) for `MLP`.

Module and parameter names equal the Hugging Face checkpoint's (`model.layers.3.self_attn.q_proj`),
so loading weights is a dictionary lookup. RoPE uses HF's half-split layout (`rotate_half`),
so no Q/K permutation is ever needed.

Contract:
    CausalLM(config)(input_ids)                      (B, T) long -> (B, T, V) logits
    CausalLM(config with num_labels=1)(input_ids)    (B, T) long -> (B, T) rewards (meta RM)

`forward` also takes `positions` (B, T) and an attention backend `attn`. Without `attn` every row
of the batch is one sequence attended causally from position 0 (right padding is harmless:
causal attention never lets a real token see the pads after it). The sampling engine passes its
own backend (paged KV cache) with the same `attend(layer, q, k, v)` signature.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SLIDING, ModelConfig
from .kernels import use_triton
from .kernels.rmsnorm import rms_norm_triton


class RMSNorm(nn.Module):
    """y = x / rms(x) * (offset + weight), computed in fp32. offset = 1 for Gemma, 0 otherwise."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0.0 else torch.zeros(dim))
        self.eps, self.offset = eps, offset

    def forward(self, x):
        if use_triton(x) and not torch.is_grad_enabled():  # inference on GPU: one fused kernel
            return rms_norm_triton(x.reshape(-1, x.shape[-1]), self.weight, self.eps, self.offset)[0].view_as(x)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:  # Gemma scales in fp32, then casts
            return (h * (self.offset + self.weight.float())).type_as(x)
        return self.weight * h.type_as(x)  # Llama casts, then scales in the weight's dtype


class RotaryEmbedding(nn.Module):
    """cos/sin tables for RoPE, with optional Llama-3 or YaRN frequency scaling. With MLA the
    tables span only the rope part of each head (qk_rope_head_dim)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self.attention_factor = (config.rope_scaling or {}).get("attention_factor", 1.0)  # YaRN

    def init_buffers(self, device):  # after building on the meta device
        self.inv_freq = self._inv_freq().to(device)

    def _inv_freq(self) -> torch.Tensor:
        c = self.config
        d = c.qk_rope_head_dim or c.head_dim
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float) / d))  # (D/2,)
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
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 1: interpolate
    interpolated = 1.0 / (s["factor"] * (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)))
    return interpolated * ramp + inv_freq * (1 - ramp)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x (B, T, H, D); cos/sin (B, T, D) or (T, D)."""
    return x * cos.unsqueeze(-2) + rotate_half(x) * sin.unsqueeze(-2)


def causal_attention(q, k, v, scale: float, softcap: float | None = None, window: int | None = None):
    """Reference attention. q (B, Tq, H, D); k, v (B, Tk, Hkv, D) -> (B, Tq, H, D), Tq <= Tk.

    The queries are the last Tq of the Tk positions (Tq < Tk: a prefill on top of a cached
    prefix). Query at position i sees keys j with i - window < j <= i (window=None: all j <= i).
    The softcap (Gemma-2) is tanh(s / cap) * cap applied to the scaled scores before masking.
    """
    Tq, Tk = q.shape[1], k.shape[1]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
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


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale, self.softcap = c.attn_scale, c.attn_logit_softcapping
        self.window = c.sliding_window if c.layer_types[layer_idx] == SLIDING else None
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv_heads * self.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv_heads * self.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin, attn=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if attn is None:
            y = causal_attention(q, k, v, self.scale, self.softcap, self.window)
        else:
            y = attn.attend(self, q, k, v)  # the engine's paged KV cache
        return self.o_proj(y.reshape(B, T, self.n_heads * self.head_dim))


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
        g = self.gate_proj(x)
        g = F.gelu(g, approximate="tanh") if self.gelu else F.silu(g)
        return self.down_proj(g * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        c = config
        norm = lambda: RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)  # noqa: E731
        from .mla import MLAttention  # imported late: mla.py and moe.py build on this file's modules
        from .moe import MoE
        self.self_attn = MLAttention(c, layer_idx) if c.kv_lora_rank else Attention(c, layer_idx)
        self.mlp = MoE(c) if c.n_routed_experts and layer_idx >= c.first_k_dense_replace else MLP(c)
        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        if c.sandwich_norms:  # Gemma-2 normalises both the input and the output of each block
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.sandwich = c.sandwich_norms

    def forward(self, x, cos, sin, attn=None):
        if self.sandwich:
            x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, attn))
            return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embeddings, the layer stack and the final norm: HF's `model.*` submodule."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        self.rotary_emb = RotaryEmbedding(c)
        self.gradient_checkpointing = False

    def forward(self, input_ids, positions=None, attn=None):
        x = self.embed_tokens(input_ids)  # (B, T, C)
        if self.config.scale_embeddings:  # Gemma: the scale is rounded to the activation dtype
            x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        rope_dtype = torch.float32 if self.config.kv_lora_rank else x.dtype  # MLA rotates in fp32, like HF
        cos, sin = self.rotary_emb(positions, rope_dtype)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, attn, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn)
        return self.norm(x)


class CausalLM(nn.Module):
    """`*ForCausalLM` (an `lm_head`) or `*ForSequenceClassification` (a `score` head)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        if config.is_classifier:
            self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.tie_weights()

    def tie_weights(self):
        if self.config.tie_word_embeddings and not self.config.is_classifier:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, positions=None, attn=None):
        h = self.model(input_ids, positions, attn)  # (B, T, C)
        return self.head(h)

    def head(self, h):
        """Hidden states -> logits (with Gemma-2's final softcap) or rewards."""
        if self.config.is_classifier:
            r = self.score(h)  # (B, T, num_labels); no softcap, as in transformers
            return r.squeeze(-1) if self.config.num_labels == 1 else r
        logits = self.lm_head(h)
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


def sequence_rewards(rewards: torch.Tensor, input_ids: torch.Tensor, pad_token_id: int | None):
    """Per-position rewards (B, T) -> one reward per sequence (B,), read at the rightmost
    non-pad token, exactly as transformers' *ForSequenceClassification pools."""
    if pad_token_id is None:
        return rewards[:, -1]
    idx = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (idx * (input_ids != pad_token_id)).argmax(-1)  # (B,)
    return rewards[torch.arange(rewards.shape[0], device=rewards.device), last]


@torch.no_grad()
def greedy_generate(model: CausalLM, input_ids: list[int], max_new_tokens: int, eos_ids=()):
    """The slow twin of the engine: no cache, one full forward per new token."""
    ids = list(input_ids)
    device = next(model.parameters()).device
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids], device=device))[0, -1]
        ids.append(int(logits.argmax()))
        if ids[-1] in eos_ids:
            break
    return ids[len(input_ids):]
