"""Continuous batching: which sequences run in the next forward pass.

State machine of a Sequence:  WAITING --admit--> RUNNING --finish--> FINISHED
                                  ^                  |
                                  +----preempt-------+   (blocks freed; recomputed on re-admission)

Each `schedule()` builds one mixed step: every running sequence decodes one token (after
securing a slot for it), then waiting sequences are admitted for prefill while the token
budget, the sequence budget and the free blocks allow. When a running sequence needs a block
and none is free, the youngest running sequence is preempted: its blocks are released (their
content stays revivable through the prefix cache) and it goes back to the front of the queue.
"""
from collections import deque
from dataclasses import dataclass, field

from .kv_cache import BlockManager
from .sampling import SamplingParams

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"


@dataclass(eq=False)
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
    prefix_key: tuple | None = None  # key of the last full registered block
    num_registered: int = 0  # leading full blocks whose key is in the prefix cache
    finish_reason: str | None = None
    stop_text_end: int | None = None  # where a stop string begins in the decoded text

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def __len__(self):
        return len(self.prompt_ids) + len(self.output_ids)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the youngest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], list[Sequence]]:
        """-> (sequences to prefill, sequences to decode) for the next step."""
        decode = self._reserve_decode_slots()
        prefill, budget = [], self.max_num_batched_tokens - len(decode)
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            tokens = seq.token_ids
            cached = len(self.blocks.cached_prefix(tokens)) * self.blocks.block_size
            if len(tokens) - cached > budget and (prefill or decode):
                break  # too big for what is left of this step: wait for the next one
            if self.blocks.blocks_needed(tokens) > self.blocks.num_free:
                break
            self.waiting.popleft()
            seq.block_table, seq.num_computed, seq.prefix_key = self.blocks.allocate(tokens)
            seq.num_registered = len(tokens) // self.blocks.block_size
            seq.status = RUNNING
            self.running.append(seq)
            prefill.append(seq)
            budget -= len(tokens) - seq.num_computed
        return prefill, decode

    def _reserve_decode_slots(self) -> list[Sequence]:
        """Make sure each running sequence has a slot for its next token, preempting the
        youngest sequences while blocks are short."""
        decode = []
        for seq in list(self.running):
            if seq.status != RUNNING:  # preempted while serving an older sequence
                continue
            while len(seq.block_table) * self.blocks.block_size < len(seq):
                if self.blocks.num_free == 0:
                    victim = self.running[-1]
                    self.preempt(victim)
                    if victim is seq:
                        break
                    continue
                self.blocks.append_block(seq.block_table)
            if seq.status == RUNNING:
                decode.append(seq)
        return decode

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
        seq.status, seq.num_computed, seq.prefix_key, seq.num_registered = WAITING, 0, None, 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def after_step(self, seq: Sequence) -> None:
        """A step stored the K/V of every token of `seq` but the one it just sampled: register
        the blocks that became full, so a recomputation or another sequence can share them."""
        bs = self.blocks.block_size
        seq.num_computed = len(seq) - 1
        tokens = seq.token_ids
        for i in range(seq.num_registered, seq.num_computed // bs):
            seq.prefix_key = self.blocks.register(seq.block_table[i], seq.prefix_key, tokens[i * bs:(i + 1) * bs])
        seq.num_registered = max(seq.num_registered, seq.num_computed // bs)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status, seq.finish_reason = FINISHED, reason
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
