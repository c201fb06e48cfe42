"""Continuous batching: which sequences run in the next forward pass, and how much of each.

State machine of a Sequence:  WAITING --admit--> RUNNING --finish--> FINISHED
                                  ^                  |
                                  +----preempt-------+   (blocks freed; recomputed on re-admission)

Each `schedule()` builds one step: every running sequence whose prompt is fully in the cache
decodes one token (after securing a slot for it), then prompts are prefilled while the token
budget, the sequence budget and the free blocks allow. A prompt longer than what is left of the
budget is *chunked*: it is admitted with its whole block table, but only a chunk of its tokens
(`seq.chunk_end`) is computed this step, the rest in the next steps, first in line (nothing
new is admitted meanwhile, so the prompt's siblings find all its blocks cached). So a long
prompt never stalls the decoding batch for more than one budget's worth of tokens, and the
peak activation memory of a step is bounded by the budget. Only the step that computes a
prompt's last token samples from it.

When a running sequence needs a block and none is free, the youngest running sequence is
preempted: its blocks are released (their content stays revivable through the prefix cache)
and it goes back to the front of the queue.

Per-step host work is O(running sequences) with small constants: `len(seq)` and the last
token are O(1) (the prompt and output lists are never concatenated per step), and full blocks
are registered in the prefix cache once, when they fill up.
"""
from collections import deque
from dataclasses import dataclass, field

from .kv_cache import BlockManager
from .sampling import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    seed: int  # this sample's own random stream
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    status: str = WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V is in the cache
    chunk_end: int = 0  # tokens whose K/V will be in the cache after this step's prefill chunk
    decoding: bool = False  # its prompt is (or, after this step's last chunk, will be) all cached
    prefix_key: tuple | None = None  # key of the last full registered block
    num_registered: int = 0  # leading full blocks whose key is in the prefix cache
    finish_reason: str | None = None
    row: int = -1  # the runner's row of per-sequence decode state (-1: none)

    @property
    def token_ids(self) -> list[int]:
        """Prompt + output as one new list: O(length), for admission only, never per step."""
        return self.prompt_ids + self.output_ids

    def tokens(self, start: int, end: int) -> list[int]:
        """token_ids[start:end] without building token_ids."""
        P = len(self.prompt_ids)
        if end <= P:
            return self.prompt_ids[start:end]
        if start >= P:
            return self.output_ids[start - P:end - P]
        return self.prompt_ids[start:] + self.output_ids[:end - P]

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    def __len__(self):
        return len(self.prompt_ids) + len(self.output_ids)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # in admission order: the last is the youngest
        self.num_preemptions = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at admission
        self.on_release = None  # callback(seq) when a running sequence leaves (the runner frees its row)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        """-> (sequences with a prompt chunk to compute, sequences to decode) for the next step.
        Each prefill sequence computes tokens [num_computed, chunk_end) of token_ids."""
        decode, partial = self._reserve_decode_slots()
        budget = self.max_num_batched_tokens - len(decode)
        prefill = []
        for seq in partial:  # prompts already admitted in chunks come first
            if budget <= 0:
                break
            budget -= self._chunk(seq, budget)
            prefill.append(seq)
        # no admissions while a prompt is mid-chunk: its later blocks are not in the prefix cache
        # yet, so its k siblings would recompute them instead of sharing them
        while not partial and self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            tokens = seq.token_ids
            cached = len(self.blocks.cached_prefix(tokens)) * self.blocks.block_size
            if self.blocks.blocks_needed(tokens) > self.blocks.num_free:
                break
            if len(tokens) - cached > budget and budget < self.blocks.block_size and (prefill or decode):
                break  # not even one block's worth of room left: next step
            self.waiting.popleft()
            seq.num_computed = cached
            self.num_cached_tokens += cached
            chunk = self._chunk(seq, budget)
            seq.block_table, num_cached, seq.prefix_key = self.blocks.allocate(tokens, seq.chunk_end)
            assert num_cached == cached
            seq.num_registered = seq.chunk_end // self.blocks.block_size
            seq.status = RUNNING
            self.running[seq] = None
            prefill.append(seq)
            budget -= chunk
        return prefill, decode

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """Set seq.chunk_end for a chunk of at most `budget` tokens; -> its size. Chunks that do
        not finish the prompt end on a block boundary when they can."""
        n = len(seq) - seq.num_computed
        if n > budget:
            bs = self.blocks.block_size
            end = (seq.num_computed + budget) // bs * bs
            n = end - seq.num_computed if end > seq.num_computed else budget
        seq.chunk_end = seq.num_computed + n
        seq.decoding = seq.chunk_end == len(seq)  # the last chunk: this step samples its next token
        return n

    def _reserve_decode_slots(self) -> tuple[list[Sequence], list[Sequence]]:
        """Make sure each decoding sequence has a slot for its next token, preempting the
        youngest sequences while blocks are short. -> (decode, partially prefilled)."""
        decode, partial = [], []
        bs = self.blocks.block_size
        # each decoding sequence needs at most one new block: with that many free, none is preempted
        for seq in list(self.running) if self.blocks.num_free < len(self.running) else self.running:
            if seq.status != RUNNING:  # preempted while serving an older sequence
                continue
            if not seq.decoding:  # mid-prompt (chunked): its blocks are all allocated
                partial.append(seq)
                continue
            while len(seq.block_table) * bs < len(seq):
                if self.blocks.num_free == 0:
                    victim = next(reversed(self.running))
                    self.preempt(victim)
                    if victim is seq:
                        break
                    continue
                self.blocks.append_block(seq.block_table)
            if seq.status == RUNNING:
                decode.append(seq)
        partial = [s for s in partial if s.status == RUNNING]
        return decode, partial

    def preempt(self, seq: Sequence) -> None:
        del self.running[seq]
        self.blocks.release(seq.block_table)
        if self.on_release:
            self.on_release(seq)
        seq.status, seq.num_computed, seq.prefix_key, seq.num_registered = WAITING, 0, None, 0
        seq.chunk_end, seq.decoding = 0, False
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def after_step(self, seq: Sequence) -> None:
        """A step stored the K/V of every token of `seq` but the one it just sampled (or, for
        a prompt chunk, of the chunk): register the blocks that became full, so a
        recomputation or another sequence can share them. (The engine's per-token loop inlines
        the first two lines for sampled sequences: a call per sequence per step is host time.)"""
        seq.num_computed = n = len(seq) - 1 if seq.decoding else seq.chunk_end
        if n // self.blocks.block_size > seq.num_registered:  # a block filled up (once per block_size tokens)
            self.register_full_blocks(seq)

    def register_full_blocks(self, seq: Sequence) -> None:
        """Put seq's blocks that filled up since the last call (all num_computed tokens) in the prefix cache."""
        bs = self.blocks.block_size
        for i in range(seq.num_registered, seq.num_computed // bs):
            seq.prefix_key = self.blocks.register(seq.block_table[i], seq.prefix_key, seq.tokens(i * bs, (i + 1) * bs))
        seq.num_registered = max(seq.num_registered, seq.num_computed // bs)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = FINISHED, reason
        del self.running[seq]
        self.blocks.release(seq.block_table)
        if self.on_release:
            self.on_release(seq)

    def abort_all(self) -> None:
        """Finish every running and waiting sequence with reason "error" (after a failed step)."""
        for seq in list(self.running):
            self.finish(seq, "error")
        for seq in self.waiting:  # waiting sequences hold no blocks (preemption released them)
            seq.status, seq.finish_reason = FINISHED, "error"
        self.waiting.clear()
