"""Multi-head latent attention (MLA), DeepSeek-V2 (arXiv 2405.04434, section 2.1).

Keys and values are not projected per head from the hidden state. Each token gets one
low-rank latent c_kv = RMSNorm(W_DKV x) (kv_lora_rank wide: 512 in V2-Lite), which `kv_b_proj`
up-projects into every head's unrotated key k_nope and value v. RoPE cannot pass through that
up-projection, so a small rotary key k_pe (qk_rope_head_dim: 64), shared by all heads, comes
straight from the hidden state (decoupled RoPE). Each head's query is [q_nope, q_pe] and

    score_h(t, j) = (q_nope_h(t) . k_nope_h(j) + q_pe_h(t) . k_pe(j)) * scale        (eq. 17)

so a KV cache needs only [c_kv, k_pe] per token and layer (576 numbers, not 2 * H * 128).
Because k_nope_h = W_UK_h c_kv, the key projection can be absorbed into the query:
q_nope_h . (W_UK_h c) = (W_UK_h^T q_nope_h) . c. Decode then attends in latent space, like MQA
with one 576-wide KV head whose values are the first kv_lora_rank columns of the keys, and
W_UV (the value half of kv_b_proj) maps the attended latent to each head's output.

Two forms of the same attention, pinned together by tests/test_deepseek_v2.py:
    attend_expanded   up-project the latent to per-head K/V, ordinary causal attention
                      (full forward, training, engine prefill over the gathered latent).
                      Without gradients it runs a few sequences and queries at a time, so
                      no more than EXPANDED_CHUNK_BYTES of per-head K/V or scores exist at once
    latent_decode     the absorbed form over the paged latent cache (engine decode): the
                      Triton kernel kernels/mla_decode.py on CUDA, its torch twin on CPU

RoPE layout: DeepSeek rotates *interleaved* pairs (x[2i], x[2i+1]) of the rope part (HF's
`apply_rotary_emb` multiplies them as complex numbers); we do the same in real fp32 arithmetic
with the RotaryEmbedding tables (whose first half holds each angle once), so the checkpoint's
weights load unpermuted. Softmax scale: (qk_nope + qk_rope)**-0.5 times YaRN's mscale**2
(config.py). Quirk kept from the released code and HF: q_a_layernorm and kv_a_layernorm use
eps 1e-6 whatever rms_norm_eps says.
"""
import torch
import torch.nn as nn

from .kernels.mla_decode import mla_cascade_decode_attention, mla_decode_attention
from .layers import RMSNorm, causal_attention

EXPANDED_CHUNK_BYTES = 2**28  # inference: per-head K/V (or fp32 scores) materialised at once, at most


def apply_rope_interleaved(x, cos, sin):
    """x (B, T, H, D): rotate pairs (x[2i], x[2i+1]) by angle i, in fp32. cos/sin (B, T, D) or
    (T, D) in RotaryEmbedding's half-split layout: angle i sits at columns i and i + D/2."""
    half = x.shape[-1] // 2
    c, s = cos[..., :half].unsqueeze(-2), sin[..., :half].unsqueeze(-2)  # (..., T, 1, D/2)
    x1, x2 = x.float().unflatten(-1, (half, 2)).unbind(-1)  # (B, T, H, D/2) each
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


class MLAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.n_heads, self.rank = c.num_attention_heads, c.kv_lora_rank
        self.nope, self.rope, self.v_dim = c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
        self.scale = c.attn_scale
        qk = self.nope + self.rope
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, self.n_heads * qk, bias=False)
        else:  # low-rank query (DeepSeek-V2 236B): down-project, normalise, up-project
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=c.qkv_bias)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(c.q_lora_rank, self.n_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, self.rank + self.rope, bias=c.qkv_bias)
        self.kv_a_layernorm = RMSNorm(self.rank, 1e-6)
        self.kv_b_proj = nn.Linear(self.rank, self.n_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.v_dim, c.hidden_size, bias=c.o_bias)

    def forward(self, x, cos, sin, attn=None):
        B, T, _ = x.shape
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(B, T, self.n_heads, -1).split([self.nope, self.rope], dim=-1)  # (B, T, H, Dn|Dr)
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.rope], dim=-1)  # (B, T, R), (B, T, Dr)
        c_kv = self.kv_a_layernorm(c_kv)
        q_pe = apply_rope_interleaved(q_pe, cos, sin)
        k_pe = apply_rope_interleaved(k_pe[:, :, None], cos, sin)  # (B, T, 1, Dr): one key for all heads
        if attn is None:
            y = self.attend_expanded(q_nope, q_pe, c_kv, k_pe)
        else:
            y = attn.attend_latent(self, q_nope, q_pe, c_kv, k_pe)  # the engine's paged latent cache
        return self.o_proj(y.reshape(B, T, self.n_heads * self.v_dim))

    def attend_expanded(self, q_nope, q_pe, c_kv, k_pe):
        """q_nope (B, Tq, H, Dn), q_pe (B, Tq, H, Dr); c_kv (B, Tk, R), k_pe (B, Tk, 1, Dr), the
        queries being the last Tq of the Tk positions -> (B, Tq, H, Dv)."""
        B, Tq, H, _ = q_nope.shape
        Tk = c_kv.shape[1]
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, Tq, H, Dn + Dr)
        if torch.is_grad_enabled():  # training keeps every chunk's K/V for backward anyway: one go
            return self._attend_expanded(q, c_kv, k_pe, Tk)
        per_seq = Tk * H * (self.nope + self.rope + self.v_dim) * q.element_size()  # one sequence's K/V
        seqs = max(1, EXPANDED_CHUNK_BYTES // per_seq)
        queries = max(1, EXPANDED_CHUNK_BYTES // (min(seqs, B) * H * Tk * 4))  # their fp32 scores
        if seqs >= B and queries >= Tq:
            return self._attend_expanded(q, c_kv, k_pe, Tk)
        out = q.new_empty(B, Tq, H, self.v_dim)
        for b in range(0, B, seqs):
            for i in range(0, Tq, queries):
                j = min(i + queries, Tq)  # queries i .. j-1 see the first Tk - Tq + j keys
                out[b:b + seqs, i:j] = self._attend_expanded(q[b:b + seqs, i:j], c_kv[b:b + seqs],
                                                             k_pe[b:b + seqs], Tk - Tq + j)
        return out

    def _attend_expanded(self, q, c_kv, k_pe, Tk: int):
        """q (b, tq, H, Dn + Dr) against the first Tk positions of c_kv (b, >=Tk, R), k_pe."""
        b = q.shape[0]
        k_nope, v = self.kv_b_proj(c_kv[:, :Tk]).view(b, Tk, self.n_heads, -1).split([self.nope, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_pe[:, :Tk].expand(-1, -1, self.n_heads, -1)], dim=-1)  # (b, Tk, H, Dn + Dr)
        return causal_attention(q, k, v, self.scale)

    def latent_decode(self, q_nope, q_pe, cache, block_tables, context_lens, groups=None):
        """The absorbed form, one query per sequence. q_nope (B, H, Dn), q_pe (B, H, Dr); cache
        (num_blocks, block_size, 1, R + Dr) rows [c_kv, k_pe]; block_tables (B, max_blocks);
        context_lens (B,); groups: cascade.CascadeGroups (shared prefixes) or None -> (B, H, Dv)."""
        kv_b = self.kv_b_proj  # with a LoRA adapter (lora.py) the weight it applies is W + s B A
        w = (kv_b.effective_weight() if hasattr(kv_b, "effective_weight") else kv_b.weight)
        w = w.view(self.n_heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w[:, :self.nope], w[:, self.nope:]  # (H, Dn, R), (H, Dv, R)
        q_lat = torch.einsum("bhd,hdr->bhr", q_nope, w_uk)  # the nope query in latent space
        q = torch.cat([q_lat, q_pe.to(q_lat.dtype)], dim=-1).to(cache.dtype)  # (B, H, R + Dr) against the rows
        if groups is None:
            o_lat = mla_decode_attention(q, cache, block_tables, context_lens, self.scale, self.rank)  # (B, H, R)
        else:
            o_lat = mla_cascade_decode_attention(q, cache, block_tables, context_lens, groups, self.scale, self.rank)
        return torch.einsum("bhr,hvr->bhv", o_lat.to(w_uv.dtype), w_uv)  # value up-projection after attention
