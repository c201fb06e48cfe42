"""Paged KV cache: fixed-size blocks, block tables, and automatic prefix sharing.

Every layer's cache is one tensor (num_blocks, block_size, Hkv, D) for K and one for V; with
DeepSeek-V2's multi-head latent attention (mla.py) it is a single latent tensor (num_blocks,
block_size, 1, kv_lora_rank + qk_rope_head_dim) holding [c_kv, k_pe] per token, shared by all
heads (576 numbers per token and layer in V2-Lite instead of 2 * 16 * 128). A sequence owns
a *block table*: logical block i of the sequence lives in physical block table[i]. Token t is stored at slot table[t // block_size] * block_size + t % block_size.

Prefix sharing: a *full* block is identified by its tokens and by the identity of everything
before it (the key of the previous block), so the same prefix always maps to the same key.
When a new sequence's full prompt blocks match keys already in the cache, it references those
blocks (ref count + 1) instead of allocating and recomputing them. The k samples of one prompt
and the differently shuffled GRM prompts of one query (same template, same conversation) thus
store and prefill their common prefix once.

Freed blocks (ref count 0) keep their content and key in an LRU free list: a later request with
the same prefix revives them for free, and they are only forgotten when reallocated.
"""
from collections import OrderedDict

import torch


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_sharing: bool = True):
        self.num_blocks, self.block_size, self.prefix_sharing = num_blocks, block_size, prefix_sharing
        self.ref_count = [0] * num_blocks
        self.key_of: list[tuple | None] = [None] * num_blocks  # key of a full, registered block
        self.block_of: dict[tuple, int] = {}  # key -> physical block
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # LRU order

    @property
    def num_free(self) -> int:
        return len(self.free)

    def block_key(self, parent_key, tokens) -> tuple:
        # hash(parent_key) chains the whole prefix into one int; the tokens are compared exactly.
        return (hash(parent_key), tuple(tokens))

    def _take(self, block: int) -> int:
        if self.ref_count[block] == 0:
            del self.free[block]
        self.ref_count[block] += 1
        return block

    def _allocate_fresh(self) -> int:
        block, _ = self.free.popitem(last=False)  # least recently freed
        if self.key_of[block] is not None:  # its old content is about to be overwritten
            del self.block_of[self.key_of[block]]
            self.key_of[block] = None
        self.ref_count[block] = 1
        return block

    def cached_prefix(self, tokens: list[int]) -> list[int]:
        """Physical blocks already holding a prefix of `tokens` (full blocks only, never the
        block holding the last token, whose logits the step must compute)."""
        blocks, key = [], None
        if not self.prefix_sharing:
            return blocks
        for i in range((len(tokens) - 1) // self.block_size):
            key = self.block_key(key, tokens[i * self.block_size:(i + 1) * self.block_size])
            if key not in self.block_of:
                break
            blocks.append(self.block_of[key])
        return blocks

    def blocks_needed(self, tokens: list[int]) -> int:
        """Fresh blocks an `allocate(tokens)` would take from the free list."""
        cached = self.cached_prefix(tokens)
        revived = sum(1 for b in cached if self.ref_count[b] == 0)
        return -(-len(tokens) // self.block_size) - len(cached) + revived

    def allocate(self, tokens: list[int], computed_end: int | None = None) -> tuple[list[int], int, tuple | None]:
        """Block table for a new sequence, how many of its tokens are already cached, and the
        key of its last registered block. Full blocks it computes in this step (tokens before
        `computed_end`, default all) are registered now: sequences admitted in the same step
        share them, since each layer stores every token's K/V before any attention reads the
        cache. Blocks of later prompt chunks are registered when computed (Scheduler.after_step)."""
        end = len(tokens) if computed_end is None else computed_end
        table, key = [], None
        for block in self.cached_prefix(tokens):
            table.append(self._take(block))
            key = self.key_of[block]
        num_cached = len(table) * self.block_size
        while len(table) * self.block_size < len(tokens):
            i = len(table)
            table.append(self._allocate_fresh())
            if (i + 1) * self.block_size <= end:
                key = self.register(table[i], key, tokens[i * self.block_size:(i + 1) * self.block_size])
        return table, num_cached, key

    def register(self, block: int, parent_key, tokens) -> tuple:
        """Record a full block's content so later sequences can share it; returns its key."""
        key = self.block_key(parent_key, tokens)
        if key in self.block_of or not self.prefix_sharing:  # the same content already lives elsewhere: keep that one
            return key
        self.block_of[key] = block
        self.key_of[block] = key
        return key

    def forget(self) -> None:
        """Drop every prefix key (after a weight update the cached K/V are stale). Only
        between generate() calls: no sequence may hold a block."""
        if any(self.ref_count):
            raise RuntimeError("cannot forget the prefix cache while sequences hold blocks")
        self.block_of.clear()
        self.key_of = [None] * self.num_blocks

    def append_block(self, table: list[int]) -> None:
        table.append(self._allocate_fresh())

    def release(self, table: list[int]) -> None:
        for block in reversed(table):  # tail blocks first: they are the least likely to be shared
            self.ref_count[block] -= 1
            if self.ref_count[block] == 0:
                self.free[block] = None
        table.clear()


def allocate_kv_cache(config, num_blocks: int, block_size: int, dtype, device):
    """Per-layer K and V caches: lists of (num_blocks, block_size, Hkv, D) tensors. MLA: the
    first list holds the latent caches (num_blocks, block_size, 1, R + Dr), the second is None."""
    if config.kv_lora_rank:
        shape = (num_blocks, block_size, 1, config.kv_lora_rank + config.qk_rope_head_dim)
        return [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)], None
    shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
    k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
    v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
    return k, v


def kv_bytes_per_token(config, dtype) -> int:
    """Cache bytes of one token over all layers: K and V of every KV head, or MLA's latent row."""
    if config.kv_lora_rank:
        return config.num_hidden_layers * (config.kv_lora_rank + config.qk_rope_head_dim) * dtype.itemsize
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize

