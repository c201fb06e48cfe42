"""One engine step on the model: pack the scheduled tokens, run the decoder over the paged
KV cache, sample the next token of every sequence.

A step is one flat batch of N tokens (B=1, T=N for the decoder): first the new tokens of each
prefilling sequence, then one token per decoding sequence. Each attention layer first stores
the K/V of all N tokens in the cache, then attends through the block tables: prefill queries
with the torch reference (gather the sequence's K/V, causal attention with an offset), decode
queries with the paged decode-attention kernel. MLA layers (DeepSeek-V2) store one latent row
[c_kv, k_pe] per token instead and call `attend_latent`: prefill up-projects the gathered
latent into per-head K/V, decode attends in latent space (mla.py). Storing first is what lets
two sequences admitted in the same step share a prefix block that only one of them computes.

Decode-only steps can be replayed from CUDA graphs (captured per batch-size bucket), which
removes the per-kernel launch overhead that dominates small models.
"""
import torch

from .cascade import cascade_decode_attention, decode_groups
from .kernels import use_triton
from .kernels.kv_store import store_kv
from .kernels.paged_attention import gather_kv, paged_decode_attention
from .kernels.sampler import sample
from .kv_cache import allocate_kv_cache
from .model import CausalLM, causal_attention


class PagedAttention:
    """The decoder's attention backend for one step (see `model.Attention.forward`)."""

    def __init__(self, k_cache, v_cache, slot_mapping, prefill_spans, decode_tables, decode_lens, cascade=None):
        self.k_cache, self.v_cache = k_cache, v_cache  # per layer (num_blocks, block_size, Hkv, D); MLA: latent, None
        self.slot_mapping = slot_mapping  # (N,) where each token's K/V goes
        self.prefill_spans = prefill_spans  # [(first query row, rows, context length, block table)]
        self.num_prefill_rows = sum(n for _, n, _, _ in prefill_spans)
        self.decode_tables, self.decode_lens = decode_tables, decode_lens  # (Bd, max_blocks), (Bd,)
        self.cascade = cascade  # (groups, first private position per row): torch path only

    def decode(self, module, q, kc, vc):
        if self.cascade is not None:
            return cascade_decode_attention(q, kc, vc, self.decode_tables, self.decode_lens, *self.cascade,
                                            module.scale, module.softcap, module.window)
        return paged_decode_attention(q, kc, vc, self.decode_tables, self.decode_lens,
                                      module.scale, module.softcap, module.window)

    def attend(self, module, q, k, v):
        layer = module.layer_idx
        q, k, v = q[0], k[0], v[0]  # (N, H, D), (N, Hkv, D), (N, Hkv, D)
        kc, vc = self.k_cache[layer], self.v_cache[layer]
        store_kv(k, v, kc, vc, self.slot_mapping)
        if not self.prefill_spans:  # decode-only step (the CUDA-graph path): no copies
            return self.decode(module, q, kc, vc)[None]
        out = torch.empty_like(q)
        for start, n, ctx, table in self.prefill_spans:
            kk, vv = gather_kv(kc, vc, table, ctx)  # (ctx, Hkv, D)
            out[start:start + n] = causal_attention(q[None, start:start + n], kk[None], vv[None],
                                                    module.scale, module.softcap, module.window)[0]
        p = self.num_prefill_rows
        if p < q.shape[0]:
            out[p:] = self.decode(module, q[p:], kc, vc)
        return out[None]

    def attend_latent(self, module, q_nope, q_pe, c_kv, k_pe):
        """`mla.MLAttention.forward`'s backend. q_nope (1, N, H, Dn), q_pe (1, N, H, Dr), c_kv
        (1, N, R), k_pe (1, N, 1, Dr) -> (1, N, H, Dv). No cascade: each row is read once per
        sequence, but it is 576 numbers for all heads."""
        cache, R = self.k_cache[module.layer_idx], module.rank  # (num_blocks, block_size, 1, R + Dr)
        rows = torch.cat([c_kv[0], k_pe[0, :, 0]], dim=-1)  # (N, R + Dr)
        cache.view(-1, cache.shape[-1])[self.slot_mapping] = rows.to(cache.dtype)  # eager steps: no slot < 0
        q_nope, q_pe = q_nope[0], q_pe[0]  # (N, H, Dn), (N, H, Dr)
        out = q_nope.new_empty(*q_nope.shape[:2], module.v_dim)  # (N, H, Dv)
        for start, n, ctx, table in self.prefill_spans:
            lat = gather_kv(cache, cache, table, ctx)[0][None, :, 0]  # (1, ctx, R + Dr)
            out[start:start + n] = module.attend_expanded(q_nope[None, start:start + n], q_pe[None, start:start + n],
                                                          lat[..., :R], lat[..., None, R:])[0]
        p = self.num_prefill_rows
        if p < out.shape[0]:
            out[p:] = module.latent_decode(q_nope[p:], q_pe[p:], cache, self.decode_tables, self.decode_lens)
        return out[None]


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, kv_dtype=None):
        self.model, self.block_size = model, block_size
        p = next(model.parameters())
        self.device, self.dtype = p.device, kv_dtype or p.dtype
        self.k_cache, self.v_cache = allocate_kv_cache(model.config, num_blocks, block_size, self.dtype, self.device)
        self.softcap = model.config.final_logit_softcapping
        self.graphs = None  # set by capture_cuda_graphs()
        # Cascade pays off only for long shared prefixes: with ~50-token prompts (the demo) its
        # per-group merges cost more than they save (infer_scale on the demo: 30 s vs 20 s).
        self.cascade_min_tokens = 128

    def _slots(self, table: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [table[t // bs] * bs + t % bs for t in range(start, end)]

    def _tensor(self, data, dtype=torch.int64):
        return torch.tensor(data, dtype=dtype, device=self.device)

    @torch.inference_mode()
    def step(self, prefill, decode) -> tuple[list[int], list[float]]:
        """Run the scheduled sequences; -> the next token and its logprob for each
        (prefill sequences first, then decode sequences, in the given order)."""
        ids, positions, slots, spans, last_rows = [], [], [], [], []
        for seq in prefill:
            tokens = seq.token_ids
            start, end = seq.num_computed, len(tokens)
            spans.append((len(ids), end - start, end, self._tensor(seq.block_table, torch.int32)))
            ids += tokens[start:end]
            positions += range(start, end)
            slots += self._slots(seq.block_table, start, end)
            last_rows.append(len(ids) - 1)
        tables = lens = cascade = None
        if decode:
            width = max(len(s.block_table) for s in decode)
            tables = self._tensor([s.block_table + [0] * (width - len(s.block_table)) for s in decode], torch.int32)
            lens = self._tensor([len(s) for s in decode], torch.int32)
            for seq in decode:
                last_rows.append(len(ids))
                ids.append(seq.token_ids[-1])
                positions.append(len(seq) - 1)
                slots += self._slots(seq.block_table, len(seq) - 1, len(seq))
            if not use_triton(tables):  # CPU: read each shared prompt prefix once per group
                groups, start = decode_groups([s.block_table for s in decode], [len(s) for s in decode],
                                              self.block_size, self.cascade_min_tokens // self.block_size)
                cascade = (groups, start) if groups else None
        seqs = prefill + decode
        if not prefill and self.graphs is not None and self.graphs.fits(len(decode), tables.shape[1]):
            logits = self.graphs.replay(ids, positions, slots, tables, lens)
        else:
            attn = PagedAttention(self.k_cache, self.v_cache, self._tensor(slots), spans, tables, lens, cascade)
            h = self.model.model(self._tensor(ids)[None], self._tensor(positions)[None], attn)[0]  # (N, C)
            logits = self.model.lm_head(h[self._tensor(last_rows)])  # (S, V): logits only where sampled
        return self.sample(logits, seqs)

    def sample(self, logits, seqs) -> tuple[list[int], list[float]]:
        ps = [s.params for s in seqs]
        tokens, logprobs = sample(
            logits,
            temperature=self._tensor([p.temperature for p in ps], torch.float32),
            top_k=self._tensor([p.top_k for p in ps], torch.int32),
            top_p=self._tensor([p.top_p for p in ps], torch.float32),
            seeds=self._tensor([s.seed for s in seqs]),
            steps=self._tensor([len(s.output_ids) for s in seqs]),
            softcap=self.softcap,
        )
        return tokens.tolist(), logprobs.tolist()  # one host sync per step
