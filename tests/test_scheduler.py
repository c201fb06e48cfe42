"""Block manager and scheduler state machine, without a model."""
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from minigrm.kv_cache import BlockManager
from minigrm.sampling import SamplingParams
from minigrm.scheduler import FINISHED, RUNNING, WAITING, Scheduler, Sequence


def check_invariants(bm: BlockManager, tables: list[list[int]]):
    refs = Counter(b for t in tables for b in t)
    assert all(bm.ref_count[b] == refs.get(b, 0) for b in range(bm.num_blocks))
    assert set(bm.free) == {b for b in range(bm.num_blocks) if bm.ref_count[b] == 0}
    for key, block in bm.block_of.items():
        assert bm.key_of[block] == key


def test_identical_prompts_share_full_blocks():
    bm = BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(10))  # blocks [0-3] [4-7] [8,9]
    t1, cached1, _ = bm.allocate(prompt)
    t2, cached2, _ = bm.allocate(prompt)
    assert cached1 == 0 and cached2 == 8
    assert t1[:2] == t2[:2] and t1[2] != t2[2]  # the partial last block is private
    assert bm.num_free == 10 - 4
    check_invariants(bm, [t1, t2])
    bm.release(t1), bm.release(t2)
    assert bm.num_free == 10 and all(r == 0 for r in bm.ref_count)


def test_block_holding_last_token_is_never_shared():
    bm = BlockManager(num_blocks=10, block_size=4)
    prompt = list(range(8))  # two full blocks; the second holds the last token
    t1, _, _ = bm.allocate(prompt)
    t2, cached, _ = bm.allocate(prompt)
    assert cached == 4 and t1[0] == t2[0] and t1[1] != t2[1]


def test_shared_prefix_diverging_suffix():
    bm = BlockManager(num_blocks=20, block_size=4)
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9]
    b = [1, 2, 3, 4, 5, 6, 7, 8, 7, 7, 7, 7, 7]
    ta, _, _ = bm.allocate(a)
    tb, cached, _ = bm.allocate(b)
    assert cached == 8 and ta[:2] == tb[:2] and ta[2] != tb[2]
    # the same block content after a different prefix is a different key
    c = [0, 0, 0, 0, 5, 6, 7, 8, 1]
    _, cached_c, _ = bm.allocate(c)
    assert cached_c == 0


def test_freed_blocks_are_revived_then_forgotten_when_reused():
    bm = BlockManager(num_blocks=4, block_size=2)
    t, _, _ = bm.allocate([1, 2, 3, 4, 5])
    bm.release(t)
    assert bm.blocks_needed([1, 2, 3, 4, 5]) == 3
    t, cached, _ = bm.allocate([1, 2, 3, 4, 5])  # revived from the free list
    assert cached == 4
    bm.release(t)
    other, _, _ = bm.allocate([9, 9, 8, 8, 7, 7, 6])  # takes every block, evicting old keys
    bm.release(other)
    assert bm.cached_prefix([1, 2, 3, 4, 5]) == []
    check_invariants(bm, [])


def make_seq(i, n_tokens, max_tokens=8, vocab=3, rng=None):
    rng = rng or random.Random(i)
    prompt = [rng.randrange(vocab) for _ in range(n_tokens)]
    return Sequence(i, prompt, SamplingParams(max_tokens=max_tokens), seed=i)


def fake_step(sched: Scheduler, rng: random.Random):
    """What the engine does after the model ran: append a token, maybe finish."""
    prefill, decode = sched.schedule()
    for seq in prefill + decode:
        assert seq.status == RUNNING
        assert len(seq.block_table) * sched.blocks.block_size >= len(seq)
        if not seq.decoding:  # a prompt chunk that is not the last: nothing sampled
            sched.after_step(seq)
            continue
        seq.output_ids.append(rng.randrange(3))
        sched.after_step(seq)
        if len(seq.output_ids) >= seq.params.max_tokens or rng.random() < 0.05:
            sched.finish(seq, "length")
    return prefill, decode


def test_admission_respects_sequence_and_token_budgets():
    sched = Scheduler(BlockManager(100, 4), max_num_seqs=3, max_num_batched_tokens=25)
    seqs = [make_seq(i, 10, vocab=1000) for i in range(6)]
    for seq in seqs:
        sched.add(seq)
    prefill, decode = sched.schedule()
    # 3 * 10 tokens > 25: two whole prompts, the third chunked to the block boundary in the budget
    assert prefill == seqs[:3] and not decode
    assert [s.chunk_end for s in prefill] == [10, 10, 4] and [s.decoding for s in prefill] == [True, True, False]
    for seq in prefill[:2]:
        seq.output_ids.append(7)
    for seq in prefill:
        sched.after_step(seq)
    assert seqs[2].num_computed == 4 and seqs[2].num_registered == 1
    prefill, decode = sched.schedule()
    assert prefill == [seqs[2]] and decode == seqs[:2]  # its last chunk; the sequence budget is full
    assert seqs[2].chunk_end == 10 and seqs[2].decoding
    assert len(sched.running) == 3 and len(sched.waiting) == 3


def test_chunked_prompt_holds_admissions_so_siblings_share_it():
    """While a prompt is mid-chunk nothing new is admitted: its k siblings come after its last
    chunk and find every full block in the prefix cache."""
    bm = BlockManager(100, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=16)
    prompt = list(range(100, 130))  # 30 tokens: 7 full blocks + 2
    seqs = [Sequence(i, prompt, SamplingParams(max_tokens=4), seed=i) for i in range(3)]
    for seq in seqs:
        sched.add(seq)
    rng, chunks = random.Random(0), []
    while seqs[0].num_computed < 30:
        prefill, _ = fake_step(sched, rng)
        chunks.append([s.seq_id for s in prefill])
    assert chunks == [[0], [0]]  # 16 + 14 tokens; the siblings wait
    assert sched.num_cached_tokens == 0
    prefill, _ = fake_step(sched, rng)
    assert prefill == seqs[1:]
    assert sched.num_cached_tokens == 2 * 28  # each sibling recomputes only the last, partial block


def test_preemption_under_tiny_pool_and_no_leaks():
    bm = BlockManager(num_blocks=6, block_size=2)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    seqs = [make_seq(i, 3, max_tokens=6, vocab=1000) for i in range(4)]
    for s in seqs:
        sched.add(s)
    rng = random.Random(0)
    steps = 0
    while sched.has_work():
        fake_step(sched, rng)
        check_invariants(bm, [s.block_table for s in sched.running])
        steps += 1
        assert steps < 200
    assert sched.num_preemptions > 0
    assert all(s.status == FINISHED for s in seqs)
    assert bm.num_free == bm.num_blocks


def test_preempted_sequence_goes_to_front_and_keeps_its_tokens():
    bm = BlockManager(num_blocks=4, block_size=2)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    old, young = make_seq(0, 4, vocab=1000), make_seq(1, 4, vocab=1000)
    sched.add(old), sched.add(young)
    sched.schedule()  # both admitted: 2 blocks each, pool full
    for s in (old, young):
        s.output_ids.append(7)
        sched.after_step(s)
    prefill, decode = sched.schedule()  # old needs a 3rd block: the youngest is preempted
    assert decode == [old] and young.status == WAITING and sched.waiting[0] is young
    assert young.output_ids == [7] and young.block_table == []


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 12), st.integers(1, 4))
def test_random_workloads_never_leak_blocks(seed, num_blocks, block_size):
    rng = random.Random(seed)
    bm = BlockManager(num_blocks, block_size)
    sched = Scheduler(bm, max_num_seqs=rng.randint(1, 6), max_num_batched_tokens=rng.randint(8, 40))
    capacity = num_blocks * block_size
    seqs = []
    for i in range(rng.randint(1, 10)):
        n = rng.randint(1, max(1, capacity // 2))
        seqs.append(make_seq(i, n, max_tokens=rng.randint(1, max(1, capacity - n)), vocab=2, rng=rng))
        sched.add(seqs[-1])
    for _ in range(2000):
        if not sched.has_work():
            break
        fake_step(sched, rng)
        check_invariants(bm, [s.block_table for s in sched.running])
    assert not sched.has_work()
    assert bm.num_free == num_blocks and all(r == 0 for r in bm.ref_count)
