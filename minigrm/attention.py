"""The decoder's attention backends for one engine step over the paged KV cache.

`model.Attention.forward` calls `attn.attend(module, q, k, v)` (and MLA layers
`attn.attend_latent(...)`) with the step's packed tokens as a batch of one: (1, N, H, D).
Each backend first stores the K/V of its N tokens in the layer's cache, then attends through
block tables. Storing first is what lets two sequences admitted in the same step share a
prefix block that only one of them computes.

    PrefillAttention   the new tokens of prompt chunks, packed back to back: one varlen
                       attention call over the paged cache for all sequences
                       (kernels/prefill_attention.py; causal with the cached prefix before them)
    DecodeAttention    one token per decoding sequence: paged decode attention, or cascade
                       attention (cascade.py) when groups of rows share a long prefix

On CUDA the backends also apply RoPE with the fused kernel (cos/sin computed in the kernel
from the positions, kernels/rope.py): `fused_rope` tells model.Attention to call `rope`.
MLA layers (DeepSeek-V2) keep their torch path: prefill up-projects each sequence's gathered
latent (a loop over sequences), decode attends in latent space (mla.py).
"""
from dataclasses import dataclass

import torch

from .cascade import CascadeGroups, cascade_decode_attention
from .kernels.kv_store import store_kv, store_latent
from .kernels.paged_attention import gather_kv, paged_decode_attention
from .kernels.prefill_attention import PrefillMeta, prefill_attention
from .kernels.rope import apply_rope


@dataclass
class Rope:
    """RoPE done by the kernel: each token's position and the model's inverse frequencies."""
    positions: torch.Tensor  # (N,) int64
    inv_freq: torch.Tensor  # (D/2,) fp32

    def __call__(self, q, k):  # (1, N, H, D), (1, N, Hkv, D) -> rotated, same shapes
        q, k = apply_rope(q[0], k[0], self.positions, self.inv_freq.float())
        return q[None], k[None]


class PrefillAttention:
    def __init__(self, k_cache, v_cache, slot_mapping, meta: PrefillMeta, rope: Rope | None = None):
        self.k_cache, self.v_cache = k_cache, v_cache  # per layer (num_blocks, block_size, Hkv, D); MLA: latent, None
        self.slot_mapping = slot_mapping  # (N,) where each token's K/V goes
        self.meta = meta
        self.rope = rope
        self.fused_rope = rope is not None

    def attend(self, module, q, k, v):
        kc, vc = self.k_cache[module.layer_idx], self.v_cache[module.layer_idx]
        store_kv(k[0], v[0], kc, vc, self.slot_mapping, all_valid=True)
        return prefill_attention(q[0], kc, vc, self.meta, module.scale, module.softcap, module.window)[None]

    def attend_latent(self, module, q_nope, q_pe, c_kv, k_pe):
        """`mla.MLAttention.forward`'s backend. q_nope (1, N, H, Dn), q_pe (1, N, H, Dr), c_kv
        (1, N, R), k_pe (1, N, 1, Dr) -> (1, N, H, Dv)."""
        cache, R = self.k_cache[module.layer_idx], module.rank  # (num_blocks, block_size, 1, R + Dr)
        store_latent(torch.cat([c_kv[0], k_pe[0, :, 0]], dim=-1), cache, self.slot_mapping, all_valid=True)
        q_nope, q_pe = q_nope[0], q_pe[0]  # (N, H, Dn), (N, H, Dr)
        out = q_nope.new_empty(*q_nope.shape[:2], module.v_dim)  # (N, H, Dv)
        m = self.meta
        for i, (start, n, ctx) in enumerate(zip(m.q_start_host, m.q_len_host, m.ctx_host)):
            lat = gather_kv(cache, cache, m.tables[i], ctx)[0][None, :, 0]  # (1, ctx, R + Dr)
            out[start:start + n] = module.attend_expanded(q_nope[None, start:start + n], q_pe[None, start:start + n],
                                                          lat[..., :R], lat[..., None, R:])[0]
        return out[None]


class DecodeAttention:
    def __init__(self, k_cache, v_cache, slot_mapping, tables, lens, groups: CascadeGroups | None = None,
                 rope: Rope | None = None, all_valid: bool = False):
        self.k_cache, self.v_cache = k_cache, v_cache
        self.slot_mapping = slot_mapping  # (B,) -1: a padding row of a CUDA-graph bucket (no write)
        self.tables, self.lens = tables, lens  # (B, max_blocks) int32, (B,) int32
        self.groups = groups  # shared prefixes, or None: plain paged attention
        self.rope = rope
        self.fused_rope = rope is not None
        self.all_valid = all_valid  # no padding rows (eager steps): the torch store skips masking
        self.memo = {}  # what every layer's CPU cascade computes alike this step (cascade._shared)

    def attend(self, module, q, k, v):
        kc, vc = self.k_cache[module.layer_idx], self.v_cache[module.layer_idx]
        q = q[0]  # (B, H, D)
        store_kv(k[0], v[0], kc, vc, self.slot_mapping, self.all_valid)
        if self.groups is not None:
            out = cascade_decode_attention(q, kc, vc, self.tables, self.lens, self.groups,
                                           module.scale, module.softcap, module.window, fresh=(k[0], v[0]),
                                           memo=self.memo)
        else:
            out = paged_decode_attention(q, kc, vc, self.tables, self.lens, module.scale, module.softcap, module.window)
        return out[None]

    def attend_latent(self, module, q_nope, q_pe, c_kv, k_pe):
        cache = self.k_cache[module.layer_idx]  # (num_blocks, block_size, 1, R + Dr)
        store_latent(torch.cat([c_kv[0], k_pe[0, :, 0]], dim=-1), cache, self.slot_mapping,  # (B, R + Dr)
                     self.all_valid)  # graph padding rows (slot -1) write nothing
        return module.latent_decode(q_nope[0], q_pe[0], cache, self.tables, self.lens, self.groups)[None]
