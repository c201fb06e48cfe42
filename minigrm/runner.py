"""One engine step on the model: prompt chunks, then one token for every decoding sequence.

A step runs up to two forward passes, each one flat batch (B=1, T=N for the decoder):
  prefill   the new tokens of every scheduled prompt chunk, packed back to back, attended with
            one varlen call over the paged cache (attention.PrefillAttention); logits only at
            the last token of each prompt that is done
  decode    one token per decoding sequence, read from the persistent per-row state
            (decode_state.py): no per-step tensors built from Python lists, nothing
            proportional to sequence length on the host. Cascade (shared-prefix) attention when
            groups of rows share >= cascade_min_tokens of prefix; the groups are rebuilt only
            when rows come or go. On CUDA this pass, with sampling and the state update, is
            replayed from a CUDA graph (cuda_graphs.py), so admitting prompts (an eager prefill
            pass beside it) never knocks decode off the graphs.
Sampled tokens and logprobs come back in one device-to-host copy per step.

Rows: decoding sequences [0, n_dec) in state order, then the prompts finished this step; the
step returns the sequences in that order with their tokens.
"""
import torch

from . import packed
from .attention import DecodeAttention, PrefillAttention, Rope
from .cascade import build_groups, kernel_group_rows
from .decode_state import DecodeState
from .kernels import use_triton
from .kernels.prefill_attention import PrefillMeta
from .kernels.sampler import sample
from .kv_cache import allocate_kv_cache
from .model import CausalLM


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, max_num_seqs: int = 256,
                 max_model_len: int | None = None, kv_dtype=None):
        self.model, self.block_size = model, block_size
        p = next(model.parameters())
        self.device, self.dtype = p.device, kv_dtype or p.dtype
        self.k_cache, self.v_cache = allocate_kv_cache(model.config, num_blocks, block_size, self.dtype, self.device)
        self.softcap = model.config.final_logit_softcapping
        self.mla = bool(model.config.kv_lora_rank)
        max_len = max_model_len or model.config.max_position_embeddings
        self.state = DecodeState(max_num_seqs, -(-max_len // block_size), self.device)
        self.graphs = None  # cuda_graphs.DecodeGraphs, set by the engine
        # Cascade pays off only for long shared prefixes: with ~50-token prompts (the demo) its
        # per-group merges cost more than they save (infer_scale on the demo: 30 s vs 20 s).
        self.cascade_min_tokens = 128
        self.groups = None  # cascade.CascadeGroups of the current rows
        self._groups_key = None

    @property
    def cascade_on(self) -> bool:
        """Whether decode builds shared-prefix groups (MLA too: latent attention with groups)."""
        return self.cascade_min_tokens < 10**9

    def release(self, seq) -> None:
        """A sequence left the running set (finished or preempted): free its state row. Its
        suffix K/V in the groups is never carried over (a preempted sequence comes back
        recomputed and is gathered afresh)."""
        g = self.groups
        if g is not None and g.row_ids is not None and 0 <= seq.row < len(g.row_ids):
            g.row_ids[seq.row] = None
        self.state.remove(seq)

    def _fused_rope(self, positions):
        """RoPE in the kernel (CUDA, not MLA), or None: the decoder's torch RoPE."""
        if self.mla or not use_triton(positions):
            return None
        return Rope(positions, self.model.model.rotary_emb.inv_freq)

    @torch.inference_mode()
    @packed.weights()  # CPU: the large projections through weights packed once (packed.py)
    def step(self, prefill, decode) -> tuple[list, list[int], list[float]]:
        """Run the scheduled prompt chunks and decoding sequences. -> (sequences that sampled,
        in row order, their tokens, their logprobs)."""
        st = self.state
        n_dec = st.flush(decode)
        done = [s for s in prefill if s.decoding]  # prompts whose last chunk runs now: they sample
        if n_dec:
            self._update_groups(n_dec)
        parts = []
        if n_dec:
            if self.graphs is not None and self.graphs.fits(n_dec):
                parts.append(self.graphs.replay(n_dec))
            else:
                parts.append(self.decode(n_dec))
        if prefill:
            st.add(done)
            out = self._prefill(prefill, done, n_dec)
            if out is not None:
                parts.append(out)
        if not parts:  # only prompt chunks that are not the last: nothing sampled
            return [], [], []
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (2, rows) float64
        tokens, logprobs = out.tolist()  # the one device-to-host copy of the step
        return st.seqs[:n_dec + len(done)], list(map(int, tokens)), logprobs

    def _update_groups(self, n: int) -> None:
        """Rebuild the cascade groups when rows changed (not every step)."""
        st = self.state
        key = (self.cascade_min_tokens, n)
        if not st.dirty and key == self._groups_key:
            return
        st.dirty, self._groups_key = False, key
        seqs = st.seqs[:n]
        tables, lens = [s.block_table for s in seqs], [len(s) for s in seqs]
        min_blocks = max(1, -(-self.cascade_min_tokens // self.block_size))
        old, self.groups = self.groups, None
        if not use_triton(st.lens):  # torch path: groups always (dense: none, when no prefix is shared), so
            # each row's K/V is gathered once and grown a token per step (cascade._suffix_kv), carried over
            # from the old groups for the rows that stay; two levels of shared prefixes (nested_groups)
            self.groups = build_groups(tables, lens, self.block_size, min_blocks, self.device, torch_path=True)
            self.groups.row_ids, self.groups.previous = [s.seq_id for s in seqs], old
            if old is not None:
                old.previous = None  # one generation back only
        elif n > 1 and self.cascade_on:  # the Triton kernels, on groups cut to their tile
            self.groups = build_groups(tables, lens, self.block_size, min_blocks, self.device,
                                       kernel_group_rows(self.model.config))
        if self.graphs is not None:
            self.graphs.set_groups(self.groups, n)

    def decode(self, b: int, valid=None, groups=None, capture=False):
        """The decode pass over state rows [0, b): forward, sample, update the state.
        -> (2, b) float64 [tokens; logprobs]. `valid` (b,) bool marks real rows in a CUDA-graph
        bucket (the others write no K/V and attend one position); graphs pass their own groups."""
        st, bs = self.state, self.block_size
        lens = st.lens[:b]
        pos = lens.long() - 1  # (b,) the fed token's position
        # eager: only the used columns (the torch paths read every column they get); a graph
        # bakes in the full width (the kernels read each row only up to its length)
        tables = st.tables[:b] if valid is not None else st.tables[:b, :st.width]
        slots = tables.gather(1, (pos // bs)[:, None])[:, 0].long() * bs + pos % bs
        if valid is not None:
            slots = slots.masked_fill(~valid, -1)
            lens = torch.where(valid, lens, 1)
            pos = pos.masked_fill(~valid, 0)
        if not capture and self.groups is not None and self.groups.start_blocks is not None:
            # the torch suffix's width: each row's blocks past its start, for the rows that got a block
            g = self.groups
            for r in st.grown:
                g.suffix_blocks = max(g.suffix_blocks, len(st.seqs[r].block_table) - g.start_blocks[r])
        groups = groups if capture else self.groups
        attn = DecodeAttention(self.k_cache, self.v_cache, slots, tables, lens, groups, self._fused_rope(pos),
                               all_valid=valid is None)
        h = self.model.model(st.tokens[:b][None], pos[None], attn)[0]  # (b, C)
        logits = self.model.lm_head(h)  # (b, V)
        tok, lp = self._sample(logits, slice(0, b))
        st.commit(slice(0, b), tok, valid)
        return torch.stack([tok.double(), lp.double()])

    def _sample(self, logits, rows: slice):
        st = self.state
        return sample(logits, st.temperature[rows], st.top_k[rows], st.top_p[rows], st.seeds[rows], st.steps[rows],
                      softcap=self.softcap, kinds=st.sampling_kinds(rows, logits.shape[-1]))

    def _prefill(self, prefill, done, first_row: int):
        """The prefill pass: every scheduled chunk packed; samples the prompts in `done`
        (state rows [first_row, first_row + len(done))). -> (2, len(done)) float64 or None."""
        ids, q_len, ctx, tables, starts, last_rows, n = [], [], [], [], [], [], 0
        for seq in prefill:
            a, b = seq.num_computed, seq.chunk_end
            ids += seq.tokens(a, b)
            q_len.append(b - a)
            ctx.append(b)
            starts.append(a)
            tables.append(seq.block_table)
            n += b - a
            if seq.decoding:
                last_rows.append(n - 1)
        dev, bs = self.device, self.block_size
        meta = PrefillMeta.build(q_len, ctx, tables, dev)
        pinned = dev.type == "cuda"
        ids_t = torch.tensor(ids, dtype=torch.int64, pin_memory=pinned).to(dev, non_blocking=True)
        seq_of = torch.repeat_interleave(torch.arange(len(prefill), device=dev), meta.q_len.long(), output_size=n)
        first_pos = meta.ctx.long() - meta.q_len.long()  # (S,) position of each chunk's first token
        positions = torch.arange(n, device=dev) - meta.q_start.long()[seq_of] + first_pos[seq_of]  # (n,)
        slots = meta.tables[seq_of, positions // bs].long() * bs + positions % bs
        attn = PrefillAttention(self.k_cache, self.v_cache, slots, meta, self._fused_rope(positions))
        h = self.model.model(ids_t[None], positions[None], attn)[0]  # (n, C)
        if not done:
            return None
        rows_t = torch.tensor(last_rows, dtype=torch.int64, pin_memory=pinned).to(dev, non_blocking=True)
        logits = self.model.lm_head(h[rows_t])  # (S_done, V): logits only where sampled
        rows = slice(first_row, first_row + len(done))
        tok, lp = self._sample(logits, rows)
        self.state.commit(rows, tok)
        return torch.stack([tok.double(), lp.double()])
