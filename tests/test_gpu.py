"""GPU-only checks (skipped without CUDA): compiled kernels against their torch twins, the
engine on CUDA against the CPU engine, CUDA-graph decode against eager decode (with prompts
admitted mid-run, chunked prefill, cascade on and off, recapture when weights move), and the
memory knob. `python -m minigrm.gpu_check` runs them first."""
import pytest
import torch

import minigrm
from factories import PROMPTS, hf_model, save_hf
from minigrm.engine import Engine
from minigrm.fused import fuse_projections
from minigrm.kernels.paged_attention import paged_decode_attention_ref, paged_decode_attention_triton
from minigrm.kernels.rmsnorm import rms_norm_ref, rms_norm_triton
from minigrm.kernels.sampler import _sample_triton, sample_ref
from minigrm.sampling import SamplingParams

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("G,D,dtype", [(1, 64, torch.float32), (8, 128, torch.bfloat16), (2, 256, torch.bfloat16)])
@pytest.mark.parametrize("softcap,window", [(None, None), (50.0, 100)])
def test_compiled_paged_attention(G, D, dtype, softcap, window):
    torch.manual_seed(0)
    B, Hkv, page, n_blocks = 5, 2, 16, 200
    lens = torch.tensor([1, 17, 300, 999, 2048], dtype=torch.int32, device="cuda")
    k_cache = torch.randn(n_blocks * 5, page, Hkv, D, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(n_blocks * 5, device="cuda", dtype=torch.int32)[:B * 128].view(B, 128)
    q = torch.randn(B, Hkv * G, D, device="cuda", dtype=dtype)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, tables, lens, D**-0.5, softcap, window)
    out = paged_decode_attention_triton(q, k_cache, v_cache, tables, lens, D**-0.5, softcap, window, None)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert (out.float() - ref.float()).abs().max() < tol


def test_compiled_rmsnorm_and_sampler():
    torch.manual_seed(0)
    x = torch.randn(33, 1000, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(1000, device="cuda", dtype=torch.bfloat16)
    for offset in (0.0, 1.0):
        y, h = rms_norm_triton(x, w, 1e-6, offset, r)
        y_ref, h_ref = rms_norm_ref(x, w, 1e-6, offset, r)
        assert torch.equal(h, h_ref) and (y.float() - y_ref.float()).abs().max() < 2e-2
    B, V = 6, 151936
    logits = torch.randn(B, V, device="cuda") * 4
    args = (logits, torch.tensor([0, 0.5, 1, 1, 0.7, 1.3], device="cuda"),
            torch.tensor([0, 0, 50, 0, 20, 0], device="cuda", dtype=torch.int32),
            torch.tensor([1, 1, 1, 0.9, 0.8, 1], device="cuda"),
            torch.arange(B, device="cuda", dtype=torch.int64), torch.full((B,), 3, device="cuda", dtype=torch.int64))
    tokens, logprobs = _sample_triton(*args, 30.0, 4096)
    ref_tokens, ref_logprobs = sample_ref(*args, softcap=30.0)
    assert torch.equal(tokens, ref_tokens) and (logprobs - ref_logprobs).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_cuda_engine_and_graphs_equal_cpu_engine(family, tmp_path):
    path = save_hf(hf_model(family), tmp_path)
    params = SamplingParams(n=3, temperature=0, max_tokens=16, ignore_eos=True)
    cpu = Engine(minigrm.load_model(path), None, block_size=16, num_blocks=64, progress=False).generate(PROMPTS, params)
    model = minigrm.load_model(path, device="cuda")
    for graphs in (False, True):
        e = Engine(model, None, block_size=16, num_blocks=64, max_num_seqs=16, cuda_graphs=graphs, progress=False)
        out = e.generate(PROMPTS, params)
        assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in cpu]
    sampled = SamplingParams(n=4, temperature=1.0, max_tokens=16, ignore_eos=True, seed=0)
    eager = Engine(model, None, num_blocks=64, progress=False).generate(PROMPTS, sampled)
    graph = Engine(model, None, num_blocks=64, max_num_seqs=16, cuda_graphs=True, progress=False).generate(PROMPTS, sampled)
    assert [[c.token_ids for c in g] for g in graph] == [[c.token_ids for c in g] for g in eager]


@pytest.mark.parametrize("G,D,dtype,softcap,window", [(1, 64, torch.float32, None, None), (7, 64, torch.bfloat16, None, None),
                                                      (2, 256, torch.bfloat16, 50.0, 100)])
def test_compiled_prefill_attention(G, D, dtype, softcap, window):
    from minigrm.kernels.prefill_attention import PrefillMeta, prefill_attention_ref, prefill_attention_triton
    torch.manual_seed(0)
    Hkv, page = 2, 16
    q_len, ctx = [300, 1, 17, 64], [300, 700, 33, 1000]
    nb = sum(-(-c // page) for c in ctx)
    perm = torch.randperm(nb).tolist()
    tables, used = [], 0
    for c in ctx:
        tables.append(perm[used:used + -(-c // page)])
        used += -(-c // page)
    k_cache = torch.randn(nb, page, Hkv, D, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    meta = PrefillMeta.build(q_len, ctx, tables, "cuda")
    q = torch.randn(sum(q_len), Hkv * G, D, device="cuda", dtype=dtype)
    ref = prefill_attention_ref(q, k_cache, v_cache, meta, D**-0.5, softcap, window)
    out = prefill_attention_triton(q, k_cache, v_cache, meta, D**-0.5, softcap, window)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert (out.float() - ref.float()).abs().max() < tol


@pytest.mark.parametrize("G,D,dtype", [(1, 64, torch.float32), (7, 64, torch.bfloat16), (6, 128, torch.bfloat16)])
def test_compiled_cascade_attention(G, D, dtype):
    from minigrm.cascade import build_groups
    from minigrm.kernels.cascade_attention import cascade_decode_attention_triton
    torch.manual_seed(0)
    Hkv, page, prefix, k = 2, 16, 1536, 8
    tables, lens, nxt = [], [], 4 * prefix // page
    for g in range(4):
        for j in range(k + g):  # groups of 8..11 rows: split into tiles of 64 // G rows
            own = 1 + (7 * j + g) % 20
            tables.append(list(range(g * prefix // page, (g + 1) * prefix // page)) + list(range(nxt, nxt + own)))
            nxt += own
            lens.append(prefix + (own - 1) * page + 1 + j)
    tables.append(list(range(nxt, nxt + 5)))  # a row outside every group
    lens.append(70)
    nxt += 5
    W = max(len(t) for t in tables)
    t = torch.tensor([x + [0] * (W - len(x)) for x in tables], dtype=torch.int32, device="cuda")
    ln = torch.tensor(lens, dtype=torch.int32, device="cuda")
    k_cache = torch.randn(nxt, page, Hkv, D, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(len(lens), Hkv * G, D, device="cuda", dtype=dtype)
    groups = build_groups(tables, lens, page, 8, "cuda", max_rows=64 // G)
    for softcap, window in ((None, None), (50.0, 1000)):
        ref = paged_decode_attention_ref(q, k_cache, v_cache, t, ln, D**-0.5, softcap, window)
        out = cascade_decode_attention_triton(q, k_cache, v_cache, t, ln, groups, D**-0.5, softcap, window)
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        assert (out.float() - ref.float()).abs().max() < tol


def test_graphs_with_admissions_chunks_and_cascade_equal_eager(tmp_path):
    """More prompts than rows (admissions while others decode: the prefill pass runs beside
    the graph replay), a prefill budget that chunks prompts, long shared prefixes (cascade in
    the graph), variable lengths: graphs on = graphs off, cascade on = off, token for token."""
    path = save_hf(hf_model("qwen2", max_position_embeddings=2048), tmp_path)
    model = minigrm.load_model(path, device="cuda")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (300, 150, 420, 40, 260, 300)]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=40, seed=0)
    outs = {}
    for graphs in (False, True):
        for cascade in (False, True):
            e = Engine(model, None, num_blocks=512, max_num_seqs=12, max_num_batched_tokens=256,
                       cuda_graphs=graphs, cascade=cascade, progress=False)
            e.runner.cascade_min_tokens = 64
            outs[graphs, cascade] = [[c.token_ids for c in grp] for grp in e.generate(prompts, params)]
            assert (e.runner.graphs is not None) == graphs
    first = outs[False, False]
    assert all(o == first for o in outs.values())
    assert len({tuple(t) for grp in first for t in grp}) > len(prompts)  # samples differ


def test_graphs_recapture_when_weights_move(tmp_path):
    path = save_hf(hf_model("llama"), tmp_path)
    model = minigrm.load_model(path, device="cuda")
    e = Engine(model, None, num_blocks=64, max_num_seqs=8, progress=False)
    params = SamplingParams(n=2, temperature=0, max_tokens=8, ignore_eos=True)
    a = e.generate(PROMPTS, params)
    assert e.runner.graphs.num_captures == 1
    e.generate(PROMPTS, params)
    assert e.runner.graphs.num_captures == 1  # same weights: no recapture
    with torch.no_grad():
        for p in model.parameters():  # new storage, as FSDP gathering weights anew would give
            p.data = p.data.clone()
    fuse_projections(model)  # fused again, so both runs do the same matmuls
    b = e.generate(PROMPTS, params)
    assert e.runner.graphs.num_captures == 2
    assert [[c.token_ids for c in grp] for grp in a] == [[c.token_ids for c in grp] for grp in b]


def test_kv_cache_bytes_and_profiled_sizing_on_cuda(tmp_path):
    path = save_hf(hf_model("llama"), tmp_path)
    model = minigrm.load_model(path, device="cuda", dtype=torch.bfloat16)
    c = model.config
    per_block = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * 16
    e = Engine(model, None, kv_cache_bytes=100 * per_block, progress=False)
    assert e.blocks.num_blocks == 100  # honoured on CUDA, not 90% of free memory
    free_before, total = torch.cuda.mem_get_info()
    e2 = Engine(model, None, max_num_seqs=64, max_model_len=512, gpu_memory_utilization=0.5, progress=False)
    assert e2.memory["prefill"] > 0 and e2.memory["decode"] > 0  # profiled warm-up, graphs counted
    assert e2.blocks.num_blocks == 64 * 512 // 16 + 1  # capped: every sequence at full length fits
    out = e2.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert all(len(grp[0].token_ids) == 4 for grp in out)
