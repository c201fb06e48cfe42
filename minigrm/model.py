"""The decoder-only transformer: Llama, Qwen2, Qwen3, Gemma-2 and DeepSeek-V2.

This file assembles `Attention`, the decoder layer and stack, and the LM / reward heads from the
building blocks in layers.py (RMSNorm, RoPE, causal_attention, MLP).

DeepSeek-V2 swaps two blocks of the layer: multi-head latent attention (mla.py) for
`Attention`, and from layer `first_k_dense_replace` on a mixture of experts (moe.py) for `MLP`.

Module and parameter names equal the Hugging Face checkpoint's (`model.layers.3.self_attn.q_proj`),
so loading weights is a dictionary lookup. RoPE uses HF's half-split layout (`rotate_half`, layers.py),
so no Q/K permutation is ever needed.

Contract:
    CausalLM(config)(input_ids)                      (B, T) long -> (B, T, V) logits
    CausalLM(config with num_labels=1)(input_ids)    (B, T) long -> (B, T) rewards (meta RM)

`forward` also takes `positions` (B, T) and an attention backend `attn`. Without `attn` every row
of the batch is one sequence attended causally from position 0 (right padding is harmless:
causal attention never lets a real token see the pads after it). The sampling engine passes its
own backend (paged KV cache) with the same `attend(layer, q, k, v)` signature.
"""
import torch
import torch.nn as nn

from . import packed
from .config import SLIDING, ModelConfig
from .fused import fused_linear
from .layers import MLP, LMHead, RMSNorm, RotaryEmbedding, apply_rope_qk, causal_attention
from .mla import MLAttention
from .moe import MoE


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
        q, k, v = fused_linear(x, self.q_proj, self.k_proj, self.v_proj)  # one matmul when fused (fused.py)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if attn is not None and attn.fused_rope:  # the engine on GPU: one kernel for q and k
            q, k = attn.rope(q, k)
        else:
            q, k = apply_rope_qk(q, k, cos, sin)
        if attn is None:
            y = causal_attention(q, k, v, self.scale, self.softcap, self.window)
        else:
            y = attn.attend(self, q, k, v)  # the engine's paged KV cache
        return packed.project(y.reshape(B, T, self.n_heads * self.head_dim), self.o_proj)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        c = config
        norm = lambda: RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)  # noqa: E731
        self.self_attn = MLAttention(c, layer_idx) if c.kv_lora_rank else Attention(c, layer_idx)
        self.mlp = MoE(c) if c.n_routed_experts and layer_idx >= c.first_k_dense_replace else MLP(c)
        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        if c.sandwich_norms:  # Gemma-2 normalises both the input and the output of each block
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()
        self.sandwich = c.sandwich_norms

    def forward(self, x, cos, sin, attn=None, residual=None):
        """The residual stream is residual + x (x alone when residual is None). -> (delta,
        stream): the layer's output is stream + delta, added by the next norm, so each
        add + RMSNorm pair is one fused kernel on GPU (`RMSNorm.add_forward`)."""
        h, x = self.input_layernorm.add_forward(x, residual)
        if self.sandwich:
            a = self.post_attention_layernorm(self.self_attn(h, cos, sin, attn))
            h, x = self.pre_feedforward_layernorm.add_forward(a, x)
            return self.post_feedforward_layernorm(self.mlp(h)), x
        h, x = self.post_attention_layernorm.add_forward(self.self_attn(h, cos, sin, attn), x)
        return self.mlp(h), x


class Decoder(nn.Module):
    """Embeddings, the layer stack and the final norm: HF's `model.*` submodule."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        # a skeleton on the meta device (load_model) skips the embedding's normal_ init, which on
        # meta tensors imports torch._dynamo: ~2 s of every script's start-up
        skeleton = torch.empty(c.vocab_size, c.hidden_size) if torch.get_default_device().type == "meta" else None
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=skeleton)
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
        residual = None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x, residual = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, attn, residual, use_reentrant=False)
            else:
                x, residual = layer(x, cos, sin, attn, residual)
        return self.norm.add_forward(x, residual)[0]


class CausalLM(nn.Module):
    """`*ForCausalLM` (an `lm_head`) or `*ForSequenceClassification` (a `score` head)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        if config.is_classifier:
            self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        else:
            self.lm_head = LMHead(config.hidden_size, config.vocab_size, bias=False)
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
