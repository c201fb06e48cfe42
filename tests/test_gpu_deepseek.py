"""GPU-only checks of DeepSeek-V2's fast paths (skipped without CUDA): the compiled MLA decode
kernel against its twin, eagerly and replayed from a CUDA graph; the grouped-matmul MoE against
the per-expert loop (values, gradients, no host sync, graph capture); the engine on CUDA
against the CPU engine, and with graphs against without; the V2-Lite decode benchmark."""
import pytest
import torch

import minigrm
from factories import PROMPTS, hf_model, moe_layer, save_hf, tokens
from minigrm.bench_deepseek import V2_LITE, decode_roofline
from minigrm.config import ModelConfig
from minigrm.engine import Engine
from minigrm.kernels.mla_decode import mla_decode_attention_ref, mla_decode_attention_triton
from minigrm.sampling import SamplingParams

pytestmark = pytest.mark.gpu
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] in (9, 10)


def latent_case(lens, H=16, R=512, Dr=64, page=16, dtype=torch.bfloat16, width=160):
    B = len(lens)
    cache = torch.randn(B * width, page, 1, R + Dr, device="cuda", dtype=dtype)
    tables = torch.randperm(B * width, device="cuda", dtype=torch.int32).view(B, width)
    q = torch.randn(B, H, R + Dr, device="cuda", dtype=dtype)
    return q, cache, tables, torch.tensor(lens, dtype=torch.int32, device="cuda")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("splits", [None, 1, 7])
def test_compiled_mla_decode(dtype, tol, splits):
    torch.manual_seed(0)
    q, cache, tables, lens = latent_case([1, 17, 300, 999, 2048], dtype=dtype)
    args = (q, cache, tables, lens, 0.11, 512)
    out = mla_decode_attention_triton(*args, num_splits=splits)
    assert (out.float() - mla_decode_attention_ref(*args).float()).abs().max() < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_compiled_mla_cascade_equals_plain_decode(dtype, tol):
    """V2-Lite shapes: 4 prompts x 8 samples sharing 1,500-token prefixes (tiles of 2 rows x 16
    heads), compiled, against the plain latent kernel."""
    from minigrm.cascade import MLA_GROUP_ROWS, build_groups
    from minigrm.kernels.mla_decode import mla_cascade_decode_attention_triton
    torch.manual_seed(2)
    page, R, Dr, H, pre, nb = 16, 512, 64, 16, 94, 6
    tables = [[g * pre + j for j in range(pre)] + [4 * pre + 8 * nb * g + nb * r + j for j in range(nb)]
              for g in range(4) for r in range(8)]
    lens = [(pre + nb - 1) * page + 1 + (3 * i) % page for i in range(32)]
    groups = build_groups(tables, lens, page, 8, "cuda", MLA_GROUP_ROWS)
    cache = torch.randn(4 * pre + 32 * nb, page, 1, R + Dr, device="cuda", dtype=dtype)
    q = torch.randn(32, H, R + Dr, device="cuda", dtype=dtype)
    t = torch.tensor(tables, dtype=torch.int32, device="cuda")
    ln = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out = mla_cascade_decode_attention_triton(q, cache, t, ln, groups, 0.11, R)
    assert (out.float() - mla_decode_attention_triton(q, cache, t, ln, 0.11, R).float()).abs().max() < tol


def test_mla_decode_replays_from_a_cuda_graph():
    """Captured once, replayed after the lengths, tables, queries and rows changed in place."""
    torch.manual_seed(1)
    q, cache, tables, lens = latent_case([5, 700, 64, 1500])
    args = (q, cache, tables, lens, 0.11, 512)
    mla_decode_attention_triton(*args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mla_decode_attention_triton(*args)
    lens.copy_(torch.tensor([2000, 3, 1024, 77], device="cuda"))
    tables.copy_(tables.flip(0))
    q.normal_()
    cache.normal_()
    graph.replay()
    assert (out.float() - mla_decode_attention_ref(*args).float()).abs().max() < 2e-2


@pytest.mark.skipif(not HOPPER, reason="torch._grouped_mm runs natively on sm90/sm100 only")
def test_grouped_moe_on_cuda_equals_loop_without_syncs():
    moe = moe_layer(E=16, k=6, C=64, I=32).cuda().to(torch.bfloat16)
    x = tokens(40, 64, seed=1).cuda().to(torch.bfloat16)
    outs, grads = [], []
    for grouped in (True, False):
        moe.grouped = grouped
        moe.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        out = moe(xx)
        out.float().square().sum().backward()
        outs.append(out.detach().float())
        grads.append([xx.grad.float(), moe.experts.gate_up_proj.grad.float(), moe.experts.down_proj.grad.float()])
    assert (outs[0] - outs[1]).abs().max() < 2e-2 * outs[1].abs().max()
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 2e-2 * b.abs().max()
    moe.grouped = True
    with torch.no_grad():
        moe(x)
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
        try:
            moe(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = moe(x)
        x.copy_(tokens(40, 64, seed=2).cuda().to(torch.bfloat16))
        graph.replay()
        assert torch.equal(y, moe(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_engine_equals_cpu_engine_for_deepseek_v2(dtype, tmp_path):
    """The latent kernel (and on Hopper in bf16 the grouped MoE) in the engine: the CPU engine's
    greedy tokens in fp32; in bf16, tokens that the bf16 CPU engine also produces for most steps."""
    path = save_hf(hf_model("deepseek_v2"), tmp_path)
    params = SamplingParams(n=2, temperature=0, max_tokens=12, ignore_eos=True)
    cpu = Engine(minigrm.load_model(path, dtype=dtype), None, block_size=16, num_blocks=64,
                 progress=False).generate(PROMPTS, params)
    gpu = Engine(minigrm.load_model(path, dtype=dtype, device="cuda"), None, block_size=16, num_blocks=64,
                 progress=False).generate(PROMPTS, params)
    cpu_ids = [c.token_ids for g in cpu for c in g]
    gpu_ids = [c.token_ids for g in gpu for c in g]
    if dtype == torch.float32:
        assert gpu_ids == cpu_ids
    else:  # bf16 rounding differs by device; greedy paths may part late, never at the first token
        assert all(a[0] == b[0] for a, b in zip(gpu_ids, cpu_ids))


def test_mla_engine_graphs_equal_eager(tmp_path):
    """MLA decode replayed from the engine's CUDA graphs (padding rows masked, latent rows through
    the masked store) = the eager engine, token for token, with admissions beside the replays."""
    path = save_hf(hf_model("deepseek_v2"), tmp_path)
    model = minigrm.load_model(path, device="cuda")
    params = SamplingParams(n=3, temperature=1.0, max_tokens=16, ignore_eos=True, seed=0)
    outs = []
    for graphs in (False, True):
        e = Engine(model, None, block_size=16, num_blocks=64, max_num_seqs=8, cuda_graphs=graphs, progress=False)
        outs.append([[c.token_ids for c in g] for g in e.generate(PROMPTS, params)])
        assert (e.runner.graphs is not None) == graphs
    assert outs[0] == outs[1]


def test_deepseek_bench_runs_graphed_without_syncs():
    c = ModelConfig.from_dict(dict(V2_LITE, num_hidden_layers=3))
    rows = decode_roofline(c, batches=(1, 8), context=256, steps=3)
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["bytes_per_step"] > 0
        if HOPPER:
            assert r["mode"] == "graph" and r["host_syncs"] == 0, r
