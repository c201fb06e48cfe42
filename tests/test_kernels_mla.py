"""The MLA latent decode kernel (run by the Triton interpreter on CPU) against its torch twin, on
awkward shapes; the twin against per-sequence latent attention; the twin's memory bound; and
the chunked expanded (prefill) attention against the one-shot form."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import minigrm.kernels as kernels  # noqa: E402
from minigrm import mla  # noqa: E402
from minigrm.kernels import mla_decode  # noqa: E402
from minigrm.cascade import MLA_GROUP_ROWS, build_groups  # noqa: E402
from minigrm.kernels.mla_decode import (mla_cascade_decode_attention, mla_cascade_decode_attention_ref,  # noqa: E402
                                        mla_decode_attention, mla_decode_attention_ref)

ATTN32 = dict(atol=2e-5, rtol=2e-5)
BF16 = dict(atol=2e-2, rtol=1.6e-2)  # ~2 bf16 ulp (the interpreter truncates fp32 -> bf16)


@pytest.fixture
def triton_backend():
    kernels.set_backend("triton")
    yield
    kernels.set_backend("auto")


def latent_case(lens, H, R, Dr, page, dtype=torch.float32, seed=0):
    """Random rows [c_kv, k_pe] of each sequence scattered into shuffled physical blocks, with
    garbage (-1, huge) in unused table entries; q (B, H, R + Dr); rows[b] (len_b, R + Dr)."""
    g = torch.Generator().manual_seed(seed)
    n_used = [-(-n // page) for n in lens]
    num_blocks = sum(n_used) + 2
    perm = torch.randperm(num_blocks, generator=g)
    cache = torch.randn(num_blocks, page, 1, R + Dr, generator=g).to(dtype)
    tables = torch.randint(-1, 2, (len(lens), max(n_used) + 2), generator=g, dtype=torch.int32)
    tables[tables == 1] = 10**6
    rows, used = [], 0
    for b, (n, nb) in enumerate(zip(lens, n_used)):
        tables[b, :nb] = perm[used:used + nb].to(torch.int32)
        used += nb
        rows.append(cache[tables[b, :nb].long()].flatten(0, 1)[:n, 0])
    q = (torch.randn(len(lens), H, R + Dr, generator=g) * 2).to(dtype)
    return q, cache, tables, torch.tensor(lens, dtype=torch.int32), rows


@pytest.mark.parametrize("H,R,Dr,page", [
    (16, 512, 64, 16),  # DeepSeek-V2-Lite: one program per sequence reads each row for all heads
    (4, 16, 8, 4),  # the tests' tiny model: padded heads, rank and rope
    (20, 48, 16, 8),  # two head blocks (the second partial), rank not a power of two
])
def test_mla_kernel_matches_twin(triton_backend, H, R, Dr, page):
    q, cache, tables, lens, _ = latent_case([1, 17, 33, 70], H, R, Dr, page)
    args = (q, cache, tables, lens, 0.3, R)
    ref = mla_decode_attention_ref(*args)
    for splits in (None, 1, 2, 5):  # 5 splits: the short sequences get empty ones
        out = mla_decode_attention(*args, num_splits=splits)
        assert out.shape == (4, H, R) and out.dtype == q.dtype
        torch.testing.assert_close(out, ref, **ATTN32)


def shared_latent_case(groups, prefix_blocks, H, R, Dr, page, seed=0):
    """Rows in groups that share `prefix_blocks[g]` leading blocks of latent rows, then 1-3 own
    blocks each; physical blocks shuffled. -> q, cache, tables, lens as tensors and lists."""
    g = torch.Generator().manual_seed(seed)
    tables, lens, nxt = [], [], 0
    for size, n_pre in zip(groups, prefix_blocks):
        prefix = list(range(nxt, nxt + n_pre))
        nxt += n_pre
        for _ in range(size):
            extra = int(torch.randint(1, 4, (1,), generator=g))
            tables.append(prefix + list(range(nxt, nxt + extra)))
            nxt += extra
            lens.append((n_pre + extra - 1) * page + int(torch.randint(1, page + 1, (1,), generator=g)))
    perm = torch.randperm(nxt, generator=g).tolist()
    width = max(map(len, tables))
    tables = [[perm[b] for b in t] + [-1] * (width - len(t)) for t in tables]
    cache = torch.randn(nxt, page, 1, R + Dr, generator=g)
    q = torch.randn(len(lens), H, R + Dr, generator=g) * 2
    return q, cache, torch.tensor(tables, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32), tables, lens


@pytest.mark.parametrize("H,R,Dr,page", [(16, 64, 16, 8), (20, 48, 16, 4)])  # one / two head blocks
def test_mla_cascade_equals_plain_latent_decode(triton_backend, H, R, Dr, page):
    """Shared-prefix latent attention (groups of rows, prefixes of unequal length, a lone row)
    equals plain latent decode: the torch twin with any grouping, and the kernel (rows of a
    group stacked MLA_GROUP_ROWS at a time, the GPU's tiles) with any split counts."""
    q, cache, t, ln, tables, lens = shared_latent_case((3, 2, 1, 4), (3, 1, 2, 2), H, R, Dr, page, seed=H)
    ref = mla_decode_attention_ref(q, cache, t, ln, 0.3, R)
    for max_rows, torch_path in ((None, False), (None, True), (1, False)):
        groups = build_groups(tables, lens, page, 1, "cpu", max_rows, torch_path)
        torch.testing.assert_close(mla_cascade_decode_attention_ref(q, cache, t, ln, groups, 0.3, R), ref, **ATTN32)
    groups = build_groups(tables, lens, page, 1, "cpu", MLA_GROUP_ROWS)
    assert groups.rows.shape == (5, MLA_GROUP_ROWS)  # 3 = 2 + 1, 2, 4 = 2 + 2 (the lone row: no group)
    for splits, prefix_splits in ((None, None), (1, 1), (3, 2)):
        out = mla_cascade_decode_attention(q, cache, t, ln, groups, 0.3, R)  if splits is None else \
            mla_decode.mla_cascade_decode_attention_triton(q, cache, t, ln, groups, 0.3, R, splits, prefix_splits)
        assert out.shape == (len(lens), H, R)
        torch.testing.assert_close(out, ref, **ATTN32)


def test_mla_nested_groups_equal_plain_latent_decode():
    """The torch path's two levels of shared prefixes (test_cascade.grm_tables: a template, each
    order's part inside it, a lone order, another prompt) serve latent attention too."""
    from test_cascade import grm_tables
    H, R, Dr, page = 16, 64, 16, 4
    tables, lens = grm_tables()
    g = torch.Generator().manual_seed(1)
    cache = torch.randn(50, page, 1, R + Dr, generator=g)
    q = torch.randn(len(lens), H, R + Dr, generator=g) * 2
    t = torch.tensor([r + [0] * (9 - len(r)) for r in tables], dtype=torch.int32)
    ln = torch.tensor(lens, dtype=torch.int32)
    groups = build_groups(tables, lens, page, 1, "cpu", torch_path=True)
    assert groups.inner is not None
    ref = mla_decode_attention_ref(q, cache, t, ln, 0.3, R)
    torch.testing.assert_close(mla_cascade_decode_attention_ref(q, cache, t, ln, groups, 0.3, R), ref, **ATTN32)


def test_mla_kernel_bf16(triton_backend):
    q, cache, tables, lens, _ = latent_case([5, 64, 99], 16, 64, 32, 16, torch.bfloat16, seed=1)
    args = (q, cache, tables, lens, 0.2, 64)
    out = mla_decode_attention(*args, num_splits=3)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, mla_decode_attention_ref(*args), **BF16)


def test_mla_kernel_rejects_bad_shapes(triton_backend):
    q, cache, tables, lens, _ = latent_case([5], 4, 16, 8, 4)
    with pytest.raises(ValueError, match="does not fit"):
        mla_decode_attention(q[..., :20], cache, tables, lens, 1.0, 16)
    with pytest.raises(TypeError, match="differ"):
        mla_decode_attention(q.double(), cache, tables, lens, 1.0, 16)
    with pytest.raises(ValueError, match="power-of-two"):
        mla_decode_attention(q, torch.zeros(3, 6, 1, 24), tables, lens, 1.0, 16)


def test_mla_twin_is_latent_attention_per_sequence():
    """Each sequence alone: softmax(q . rows * scale) @ c_kv over exactly its own rows."""
    q, cache, tables, lens, rows = latent_case([1, 9, 30], 4, 16, 8, 4, seed=2)
    out = mla_decode_attention_ref(q, cache, tables, lens, 0.25, 16)
    for b, r in enumerate(rows):
        p = torch.softmax(q[b] @ r.T * 0.25, dim=-1)  # (H, len)
        torch.testing.assert_close(out[b], p @ r[:, :16], **ATTN32)


class Sizes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_mla_twin_never_expands_heads_and_works_in_chunks(monkeypatch):
    """No (B, H, L, R + Dr) tensor: the rows are shared by the heads; with a small chunk budget
    the twin works a few sequences at a time and gives the same numbers."""
    B, H, R, Dr, page = 6, 8, 32, 16, 4
    q, cache, tables, lens, _ = latent_case([3, 20, 9, 14, 1, 17], H, R, Dr, page, seed=3)
    L = tables.shape[1] * page
    with Sizes() as sizes:
        ref = mla_decode_attention_ref(q, cache, tables, lens, 0.2, R)
    assert sizes.largest == B * L * (R + Dr)  # the gathered rows, once, without a head axis
    monkeypatch.setattr(mla_decode, "REF_CHUNK_BYTES", 2 * L * (R + Dr) * 4)  # two sequences per chunk
    with Sizes() as sizes:
        chunked = mla_decode_attention_ref(q, cache, tables, lens, 0.2, R)
    assert sizes.largest == 2 * L * (R + Dr)
    torch.testing.assert_close(chunked, ref, atol=0, rtol=0)


@pytest.fixture
def mla_layer():
    from factories import hf_config
    from minigrm.config import ModelConfig
    c = ModelConfig.from_dict(hf_config("deepseek_v2").to_dict())
    layer = mla.MLAttention(c, 0).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return layer


@pytest.mark.parametrize("B,Tq,Tk", [(3, 10, 10), (2, 7, 19)])  # plain prefill; prefill on a cached prefix
def test_expanded_attention_in_chunks_equals_one_go(mla_layer, monkeypatch, B, Tq, Tk):
    g = torch.Generator().manual_seed(B)
    H, Dn, Dr, R = mla_layer.n_heads, mla_layer.nope, mla_layer.rope, mla_layer.rank
    q_nope, q_pe = torch.randn(B, Tq, H, Dn, generator=g), torch.randn(B, Tq, H, Dr, generator=g)
    c_kv, k_pe = torch.randn(B, Tk, R, generator=g), torch.randn(B, Tk, 1, Dr, generator=g)
    with torch.no_grad():
        ref = mla_layer.attend_expanded(q_nope, q_pe, c_kv, k_pe)  # small: one go
        monkeypatch.setattr(mla, "EXPANDED_CHUNK_BYTES", 3 * H * Tk * 4)  # one sequence, 3 queries' scores
        calls = []
        one_go = mla_layer._attend_expanded
        monkeypatch.setattr(mla_layer, "_attend_expanded", lambda q, *a: calls.append(q.shape[:2]) or one_go(q, *a))
        chunked = mla_layer.attend_expanded(q_nope, q_pe, c_kv, k_pe)
    assert len(calls) == B * -(-Tq // 3) and max(calls) == (1, 3)
    torch.testing.assert_close(chunked, ref, **ATTN32)


SM90_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from minigrm.kernels import mla_decode
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
for name, extra in json.loads(sys.argv[1]):
    fn = getattr(mla_decode, name)
    sig = {a: "*i32" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
    sig.update(q_ptr="*bf16", c_ptr="*bf16", o_ptr="*fp32", lse_ptr="*fp32", scale="fp32")
    consts = dict(R=512, DR=64, PAGE=16, BLOCK_H=16, BLOCK_R=512, BLOCK_P=64, BLOCK_N=32, PRECISION="tf32",
                  DOT_FP32=False, **extra)  # what the launcher picks for V2-Lite in bf16
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=2))
    cubin = os.path.join(tempfile.mkdtemp(), "k.cubin")
    open(cubin, "wb").write(kernel.asm["cubin"])
    usage = subprocess.run([tool, "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    print(json.dumps(dict(kernel=name, regs=int(regs), stack=int(stack), shared=kernel.metadata.shared,
                          mma="mma.sync" in kernel.asm["ptx"])))
"""
# the V2-Lite variants the launchers pick: plain decode, cascade suffixes (from each row's start),
# cascade prefix tiles of MLA_GROUP_ROWS rows x 16 heads (4 rows would spill)
SM90_VARIANTS = [("_mla_split_kernel", dict(WRITE_LSE=True, HAS_START=False)),
                 ("_mla_split_kernel", dict(WRITE_LSE=True, HAS_START=True)),
                 ("_mla_prefix_kernel", dict(MAXR=MLA_GROUP_ROWS, BLOCK_M=16 * MLA_GROUP_ROWS))]


def test_mla_kernels_compile_for_sm90_without_spills():
    """Compiled (not run) for H100/H200 with Triton's bundled toolchain: the V2-Lite variants
    fit the register file without spilling and use tensor-core mma."""
    import json
    import subprocess
    import sys
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        pytest.skip("this triton build ships no NVIDIA toolchain")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-c", SM90_COMPILE, json.dumps(SM90_VARIANTS)], capture_output=True,
                         text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reports = [json.loads(line) for line in out.stdout.strip().splitlines()[-len(SM90_VARIANTS):]]
    assert [r["kernel"] for r in reports] == [name for name, _ in SM90_VARIANTS]
    for r in reports:
        assert r["regs"] <= 255 and r["stack"] == 0 and r["mma"] and r["shared"] <= 100 * 1024, r
