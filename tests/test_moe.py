"""The MoE's grouped dispatch (no host sync) against its readable per-expert loop: values and
gradients, idle experts' zero gradients, a fixed op count whatever the number of experts, and
the stacked experts saved and loaded under the checkpoint's per-expert names."""
import pytest
import torch
import transformers
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

import minigrm
from factories import hf_model, moe_layer, save_hf, tokens

# ops that wait for the GPU (a device->host read) or size their output from the data
SYNCING_OPS = ("_local_scalar_dense", "bincount", "nonzero", "unique", "masked_select", "repeat_interleave")


class OpLog(TorchDispatchMode):
    """Records every aten op that runs (one CUDA launch or more each, on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def both(moe, x):
    """(grouped, loop) outputs and the gradients of sum(out * probe) w.r.t. x and every parameter."""
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    results = []
    for grouped in (True, False):
        moe.grouped = grouped
        moe.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        out = moe(xx)
        (out.float() * probe.float()).sum().backward()
        results.append((out.detach(), xx.grad, {n: p.grad for n, p in moe.named_parameters()}))
    return results


@pytest.mark.parametrize("cfg", [{}, dict(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                          routed_scaling_factor=2.5)])
def test_grouped_dispatch_equals_loop_values_and_gradients(cfg):
    moe = moe_layer(**cfg)
    x = tokens(3, 7, 32, seed=2)  # 21 tokens
    (out, gx, grads), (out_ref, gx_ref, grads_ref) = both(moe, x)
    assert out.shape == x.shape and out.std() > 0.1
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], atol=1e-5, rtol=1e-5, msg=name)
    # idle experts: a zero gradient (the same tensors on every DDP / FSDP2 rank), not none
    for g in (grads, grads_ref):
        idle = g["experts.gate_up_proj"].flatten(1).abs().amax(dim=1) == 0  # (E,)
        assert idle[:4].all() and not idle[4:].any()
        assert (g["experts.down_proj"][:4] == 0).all()


def test_grouped_dispatch_equals_loop_in_bf16():
    moe = moe_layer().to(torch.bfloat16)
    x = tokens(16, 32, seed=3).to(torch.bfloat16)
    (out, gx, grads), (out_ref, gx_ref, grads_ref) = both(moe, x)
    assert out.dtype == torch.bfloat16
    tol = dict(atol=2e-2, rtol=1.6e-2)  # ~2 bf16 ulp: the loop rounds each expert's weighted output
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)
    for name in ("experts.gate_up_proj", "experts.down_proj"):
        torch.testing.assert_close(grads[name], grads_ref[name], **tol)


@pytest.mark.parametrize("cfg", [{}, dict(topk_method="group_limited_greedy", n_group=4, topk_group=2)])
def test_grouped_dispatch_never_syncs(monkeypatch, cfg):
    """No .item() / .tolist() / data-sized op in routing and the fast path; the same check
    catches the loop."""
    moe = moe_layer(**cfg).requires_grad_(False)
    x = tokens(10, 32, seed=4)

    def refuse(self, *a):
        raise AssertionError("host sync")

    for grouped in (True, False):
        moe.grouped = grouped
        with monkeypatch.context() as mp, OpLog() as log:
            mp.setattr(torch.Tensor, "tolist", refuse)
            mp.setattr(torch.Tensor, "item", refuse)
            try:
                moe(x)
                synced = [op for op in log.ops if op in SYNCING_OPS]
            except AssertionError:
                synced = ["tolist"]
        assert (synced == []) == grouped, (grouped, synced)


def test_grouped_dispatch_launches_do_not_grow_with_experts():
    """A fixed op count per layer whatever E (64 experts in V2-Lite); the loop's grows with E."""
    counts = {}
    for E in (8, 64):
        moe = moe_layer(E=E, k=6).requires_grad_(False)
        x = tokens(64, 32, seed=5)
        for grouped in (True, False):
            moe.grouped = grouped
            moe(x)  # warm-up: the one-time probe for a CPU grouped matmul
            with OpLog() as log:
                moe(x)
            counts[E, grouped] = len(log.ops)
    assert counts[8, True] == counts[64, True] < 40
    assert counts[64, False] > 4 * counts[8, True] and counts[64, False] > counts[8, False] + 100
    print(f"\naten ops per MoE layer (E=8, E=64): grouped {counts[8, True]}, {counts[64, True]}; "
          f"loop {counts[8, False]}, {counts[64, False]}")


def test_stacked_experts_keep_the_checkpoint_names(tmp_path):
    """Loaded expert by expert into the stacked tensors, saved back under the same names: the
    saved folder holds the released key set and transformers reads it back to the same logits."""
    src = save_hf(hf_model("deepseek_v2"), tmp_path / "src")
    ours = minigrm.load_model(src)
    out = minigrm.save_model(ours, tmp_path / "out")
    keys = lambda p: set(safe_open(p / "model.safetensors", framework="pt").keys())  # noqa: E731
    assert keys(out) == keys(src) and "model.layers.1.mlp.experts.7.up_proj.weight" in keys(out)
    assert ours.model.layers[1].mlp.experts.gate_up_proj.shape == (8, 48, 64)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
        assert torch.equal(minigrm.load_model(out)(ids), ours(ids))
