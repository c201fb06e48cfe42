"""GPU-only checks (skipped without CUDA): compiled kernels against their torch twins, the
engine on CUDA against the CPU engine, and CUDA-graph decode against eager decode."""
import pytest
import torch

import minigrm
from factories import hf_model, save_hf
from minigrm.engine import Engine
from minigrm.kernels.paged_attention import paged_decode_attention_ref, paged_decode_attention_triton
from minigrm.kernels.rmsnorm import rms_norm_ref, rms_norm_triton
from minigrm.kernels.sampler import _sample_triton, sample_ref
from minigrm.sampling import SamplingParams

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 17, 33, 8, 61, 7, 9, 11, 3, 4], [5, 17, 33, 8, 61, 7, 9, 11, 80, 81, 82, 83, 84], [40, 41]]


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
