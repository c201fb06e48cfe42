"""The sampling engine against its slow twins: HF generate, full forwards, sharing off, big pools."""
import pytest
import torch
import transformers

import minigrm
from factories import PROMPTS, assert_triton_equals_torch, engine, hf_model, save_hf
from minigrm.engine import Engine, teacher_forced_logprobs
from minigrm.sampling import SamplingParams

FAMILIES = ["llama", "llama3", "qwen2", "qwen3", "gemma2"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    hf = hf_model(request.param)
    path = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, minigrm.load_model(path)


def hf_greedy(hf, prompt, n):
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_equals_transformers_generate(tiny):
    hf, ours = tiny
    outs = engine(ours).generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, outs):
        assert out[0].token_ids == hf_greedy(hf, prompt, 12)
        assert out[0].finish_reason == "length"


def test_sampled_logprobs_equal_teacher_forcing(tiny):
    _, ours = tiny
    params = SamplingParams(n=3, temperature=1.5, top_p=0.9, top_k=20, max_tokens=10, ignore_eos=True, seed=3)
    outs = engine(ours).generate(PROMPTS, params)
    assert any(len({tuple(c.token_ids) for c in group}) > 1 for group in outs)  # samples differ
    for prompt, group in zip(PROMPTS, outs):
        for c in group:
            ref = teacher_forced_logprobs(ours, prompt, c.token_ids)
            assert max(abs(a - b) for a, b in zip(ref, c.logprobs)) < 2e-3


def test_prefix_sharing_changes_nothing_but_work(tiny):
    _, ours = tiny
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, ignore_eos=True, seed=0)
    shared, unshared = engine(ours), engine(ours, prefix_sharing=False)
    a, b = shared.generate(PROMPTS, params), unshared.generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert shared.stats["prefill_tokens"] < unshared.stats["prefill_tokens"]
    assert shared.stats["cached_tokens"] > 0 and unshared.stats["cached_tokens"] == 0


def test_preemption_under_tiny_pool_keeps_outputs(tiny):
    _, ours = tiny
    params = SamplingParams(n=3, temperature=0, max_tokens=14, ignore_eos=True)
    big = engine(ours).generate(PROMPTS, params)
    small_engine = engine(ours, num_blocks=12)
    small = small_engine.generate(PROMPTS, params)
    assert small_engine.scheduler.num_preemptions > 0
    assert [[c.token_ids for c in g] for g in small] == [[c.token_ids for c in g] for g in big]
    assert small_engine.blocks.num_free == 12  # nothing leaked


def test_same_seed_same_outputs_different_seed_different(tiny):
    _, ours = tiny
    p = SamplingParams(n=2, temperature=1.0, max_tokens=8, ignore_eos=True, seed=7)
    e = engine(ours)
    a, b = e.generate(PROMPTS, p), e.generate(PROMPTS, p)
    c = e.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_tokens=8, ignore_eos=True, seed=8))
    ids = lambda outs: [[x.token_ids for x in g] for g in outs]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_bad_prompts_fail_alone(tiny):
    _, ours = tiny
    e = engine(ours, num_blocks=8)  # 32 tokens of cache
    outs = e.generate([[1] * 40, [], PROMPTS[0]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert outs[0][0].finish_reason == "error" and "40 tokens" in outs[0][0].error
    assert outs[1][0].finish_reason == "error" and "empty" in outs[1][0].error
    assert outs[2][0].finish_reason == "length" and len(outs[2][0].token_ids) == 4


@pytest.mark.parametrize("family", ["gemma2", "qwen3"])
def test_engine_on_triton_kernels_equals_torch_path(family, tmp_path):
    """The whole engine with every kernel forced (interpreted on CPU) gives the torch path's
    tokens: RMSNorm (Gemma's 1 + w, Qwen3's q/k norms), KV store, paged attention, sampler."""
    assert_triton_equals_torch(minigrm.load_model(save_hf(hf_model(family), tmp_path)))


# --- the real SmolLM2 --------------------------------------------------------------------

@pytest.fixture(scope="module")
def smol(smollm2_path):
    return (transformers.AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval(),
            minigrm.load_model(smollm2_path), minigrm.load_tokenizer(smollm2_path))


QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Is 17 a prime number? Explain."]


def test_smollm2_greedy_equals_transformers(smol):
    hf, ours, tok = smol
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    outs = Engine(ours, tok, progress=False).generate(prompts, SamplingParams(temperature=0, max_tokens=24))
    for prompt, out in zip(prompts, outs):
        ids = tok.encode(prompt)
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        assert out[0].token_ids == ref
        assert out[0].text == tok.decode([t for t in ref if t not in tok.eos_token_ids])


def test_smollm2_stop_strings_and_eos(smol):
    _, ours, tok = smol
    prompt = tok.apply_chat_template([{"role": "user", "content": "List the numbers from 1 to 10."}])
    e = Engine(ours, tok, progress=False)
    free = e.generate([prompt], SamplingParams(temperature=0, max_tokens=80))[0][0]
    assert free.finish_reason == "stop" and free.token_ids[-1] in tok.eos_token_ids
    assert "<|im_end|>" not in free.text and "5" in free.text
    cut = e.generate([prompt], SamplingParams(temperature=0, max_tokens=80, stop=["5"]))[0][0]
    assert cut.finish_reason == "stop" and "5" not in cut.text and free.text.startswith(cut.text)
    long = e.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))[0][0]
    assert long.finish_reason == "length" and len(long.token_ids) == 40


def test_reset_prefix_cache_after_weight_update(tiny):
    """Freed blocks keep their K/V for reuse; after an in-place weight update they are stale."""
    _, ours = tiny
    e = engine(ours)
    e.generate(PROMPTS, GREEDY)
    assert e.blocks.cached_prefix(PROMPTS[0])  # kept for the next call
    e.reset_prefix_cache()
    assert not e.blocks.cached_prefix(PROMPTS[0]) and e.blocks.num_free == e.blocks.num_blocks


def test_cascade_attention_on_equals_off(tiny):
    _, ours = tiny
    params = SamplingParams(n=4, temperature=1.0, max_tokens=10, ignore_eos=True, seed=1)
    on, off = engine(ours).generate(PROMPTS, params), engine(ours, cascade=False).generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in on] == [[c.token_ids for c in g] for g in off]
    worst = max(abs(a - b) for g, h in zip(on, off) for c, d in zip(g, h) for a, b in zip(c.logprobs, d.logprobs))
    assert worst < 1e-4


# --- the engine's fast paths against their slow twins ---------------------------------------

@pytest.fixture(scope="module", params=["llama", "gemma2"])  # plain, and softcap + sliding window
def tiny2(request, tmp_path_factory):
    return None, minigrm.load_model(save_hf(hf_model(request.param), tmp_path_factory.mktemp(request.param + "2")))


def test_chunked_prefill_changes_nothing_but_steps(tiny2):
    """Prompts cut into chunks of a few tokens (a budget of 8 per step) give the outputs of
    whole-prompt prefill, through prefix sharing and a cached prefix under the chunks."""
    _, ours = tiny2
    params = SamplingParams(n=3, temperature=1.0, max_tokens=6, ignore_eos=True, seed=5)
    whole = engine(ours).generate(PROMPTS, params)
    small = engine(ours, max_num_seqs=8, max_num_batched_tokens=8)
    chunked = small.generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in chunked] == [[c.token_ids for c in g] for g in whole]
    worst = max(abs(a - b) for g, h in zip(chunked, whole) for c, d in zip(g, h) for a, b in zip(c.logprobs, d.logprobs))
    assert worst < 1e-4 and small.stats["cached_tokens"] > 0


def test_decode_state_equals_a_rebuild_from_the_sequences(tiny2):
    """After every step, the persistent per-row tensors (updated incrementally: rows added,
    freed and compacted, blocks appended) equal what the sequences say."""
    _, ours = tiny2
    e = engine(ours, num_blocks=16)  # small: preemptions move rows too
    params = SamplingParams(n=3, temperature=1.0, top_k=5, max_tokens=9, ignore_eos=True, seed=1)
    e.generate(PROMPTS, SamplingParams(max_tokens=1))  # a warm prefix cache
    from minigrm.scheduler import Sequence
    for i, p in enumerate(PROMPTS * 2):
        for j in range(3):
            e.scheduler.add(Sequence(1000 + 3 * i + j, p, SamplingParams(**{**vars(params), "max_tokens": 3 + 2 * j}),
                                     seed=i * 3 + j))
    st, checked = e.runner.state, 0
    while e.scheduler.has_work():
        e.step()
        seqs = [s for s in st.seqs if s is not None]
        for s in seqs:
            r = s.row
            assert st.tables[r, :len(s.block_table)].tolist() == s.block_table
            assert (st.lens[r], st.tokens[r], st.steps[r], st.seeds[r]) == (len(s), s.last_token, len(s.output_ids), s.seed)
            assert (st.top_k[r], st.temperature[r]) == (s.params.top_k, s.params.temperature)
            checked += 1
    assert checked > 50 and e.scheduler.num_preemptions > 0 and st.num_rows == 0


def test_sampling_kinds_of_rows_read_as_the_rows_hold_them():
    """DecodeState.sampling_kinds (host, from the parameters) equals the sampler's reading of the
    fp32 / int32 rows, also where fp32 rounds: temperature 1e-50 is 0 there (greedy), top_p
    1 - 1e-12 is 1 (off); a top_k of V or more is off. Cached while rows stand, renewed when they change."""
    from minigrm.decode_state import DecodeState
    from minigrm.kernels.sampler import sampling_kinds
    from minigrm.scheduler import Sequence
    st, V = DecodeState(8, 4, "cpu"), 1000
    rows = [(1e-50, 0, 1.0), (0.7, 0, 1.0 - 1e-12), (0.7, V, 1.0), (0.0, 0, 0.9), (0.5, 3, 1.0)]
    seqs = [Sequence(i, [1, 2], SamplingParams(temperature=T, top_k=k, top_p=p), seed=i, block_table=[i])
            for i, (T, k, p) in enumerate(rows)]
    for n in range(1, len(seqs) + 1):
        st.add([seqs[n - 1]])
        got = st.sampling_kinds(slice(0, n), V)
        assert got == sampling_kinds(st.temperature[:n], st.top_k[:n], st.top_p[:n], V), n
    assert [st.sampling_kinds(slice(0, n), V) for n in (1, 3)] == [(True, True, False), (False, True, False)]
    st.remove(seqs[0])
    assert st.sampling_kinds(slice(0, 2), V) is None and st.sampling_kinds(slice(0, 6), V) is None  # a hole, a pad
    st.flush(seqs[1:])  # row 0 now holds the last sequence (top-k 3)
    assert st.sampling_kinds(slice(0, 1), V) == (False, False, True)


def test_kv_cache_bytes_is_honoured_on_cpu(tiny2):
    _, ours = tiny2
    c = ours.config
    per_block = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * 4  # fp32, block of 4
    e = Engine(ours, None, block_size=4, kv_cache_bytes=10 * per_block, progress=False)
    assert e.blocks.num_blocks == 10 and e.runner.k_cache[0].shape[0] == 10
    big = Engine(ours, None, block_size=4, max_num_seqs=2, kv_cache_bytes=2**40, progress=False)
    assert big.blocks.num_blocks == 2 * c.max_position_embeddings // 4 + 1  # never more than can be used


FAULTS = """
import resource, sys, torch
from minigrm.kernels.sampler import uniform
from minigrm.memory import keep_freed_memory
# both thresholds at glibc's documented default (128 KB), fixed: glibc otherwise adapts them to the
# sizes freed, so "default" would depend on the process's history
keep_freed_memory(mmap_threshold=128 * 1024, trim_threshold=128 * 1024)
if sys.argv[1] == "engine":  # an Engine on CPU sets the allocator up at construction
    from minigrm.bench import OVERHEAD_MODEL
    from minigrm.config import ModelConfig
    from minigrm.engine import Engine
    from minigrm.model import CausalLM
    Engine(CausalLM(ModelConfig.from_dict(OVERHEAD_MODEL)), None, kv_cache_bytes=2**20)
seeds, steps = torch.arange(32), torch.zeros(32, dtype=torch.int64)
for _ in range(3):  # the sampler's hash at batch 32 x SmolLM2's vocabulary, to steady state (the heap's
    uniform(seeds, steps, 49152).log_()  # growth to its peak is not a per-step fault)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    uniform(seeds, steps, 49152).log_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_engine_keeps_freed_memory_instead_of_page_faulting_it_back():
    """The same per-step temporaries, freed and allocated again: with glibc's default thresholds
    (fixed, so the count does not depend on what the process freed before) their pages fault in
    again every step; after keep_freed_memory (Engine on CPU) almost none at steady state."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                                       check=True, env=env).stdout) for mode in ("default", "engine")}
    assert faults["default"] > 10 * 1000  # > 1,000 faults (4 MB) per step
    assert faults["engine"] < faults["default"] / 10
