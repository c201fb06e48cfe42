"""Packed CPU weights (packed.py): the oneDNN product equals the row-major one, follows every kind
of weight update, and stays out of training, small weights, other dtypes and everything outside the
engine's steps (the model's own forward stays the row-major product)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import minigrm
from factories import VOCAB, hf_model, save_hf
from minigrm import packed
from minigrm.fused import fused_linear

pytestmark = pytest.mark.skipif(not packed.ENABLED, reason="needs oneDNN on an x86 CPU")


def linear(n_out, n_in, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) / n_in**0.5)
        if bias:
            lin.bias.copy_(torch.randn(n_out, generator=g))
    return lin


@pytest.mark.parametrize("shape,bias", [((1024, 576), False), ((576, 1536), True)])
@pytest.mark.parametrize("rows", [(1,), (2,), (33,), (300,), (3, 7)])
def test_packed_equals_row_major(shape, bias, rows):
    lin = linear(*shape, bias=bias)
    x = torch.randn(*rows, shape[1])
    with torch.no_grad(), packed.weights():
        out = packed.linear(x, lin, lin.weight, lin.bias)
    assert out is not None and packed.is_packed(lin)  # the packed path ran
    torch.testing.assert_close(out, F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def test_every_weight_update_repacks():
    """A stale packed copy would keep multiplying by the old weights: after an optimizer step, a
    copy_ and a .data re-assignment the product must follow the new ones; unchanged, it is reused."""
    lin = linear(1024, 576)
    x = torch.randn(8, 576)

    def check():
        with torch.no_grad(), packed.weights():
            out = packed.linear(x, lin, lin.weight)
        torch.testing.assert_close(out, F.linear(x, lin.weight), atol=1e-5, rtol=1e-5)
        return packed._kept[lin][1]

    first = check()
    assert check() is first  # same version: packed once
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    lin.weight.grad = torch.randn_like(lin.weight) / 24  # the weights keep their scale (1 / sqrt(576))
    opt.step()
    assert check() is not first
    with torch.no_grad():
        lin.weight.copy_(torch.randn_like(lin.weight) / 24)
    check()
    lin.weight.data = torch.randn(1024, 576) / 24
    check()


def test_stays_out_of_training_small_weights_other_dtypes_and_outside_the_engine():
    x = torch.randn(4, 576)
    big = linear(1024, 576)
    with packed.weights():
        assert packed.linear(x, big, big.weight) is None  # grad mode on
    with torch.no_grad():
        assert packed.linear(x, big, big.weight) is None  # outside weights()
    with torch.no_grad(), packed.weights():
        small = linear(64, 128)
        assert packed.linear(torch.randn(4, 128), small, small.weight) is None
        assert packed.linear(x.double(), big, big.weight.double()) is None
    assert not any(packed.is_packed(m) for m in (big, small))


def test_model_forward_with_every_projection_packed(tmp_path, monkeypatch):
    """A model whose every projection goes through packed weights (threshold 0): its no-grad logits
    equal the training forward's (row-major matmuls); fused q/k/v, gate/up, o and down all packed.
    Outside weights() the same no-grad forward packs nothing and is the row-major one bit for bit."""
    model = minigrm.load_model(save_hf(hf_model("qwen2"), tmp_path))
    ids = torch.randint(3, VOCAB, (2, 11))
    monkeypatch.setattr(packed, "PACK_MIN_NUMEL", 0)
    slow = model(ids).detach()
    with torch.no_grad():
        assert torch.equal(model(ids), slow)
    assert not any(packed.is_packed(m) for m in model.modules())
    with torch.no_grad(), packed.weights():
        fast = model(ids)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    layer = model.model.layers[0]
    assert all(packed.is_packed(m) for m in (layer.self_attn.q_proj, layer.self_attn.o_proj,
                                                       layer.mlp.gate_proj, layer.mlp.down_proj, model.lm_head))
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad(), packed.weights():
        for a, b in zip(fused_linear(x, layer.mlp.gate_proj, layer.mlp.up_proj),
                        (F.linear(x, layer.mlp.gate_proj.weight), F.linear(x, layer.mlp.up_proj.weight))):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_engine_steps_inside_the_scope(tmp_path, monkeypatch):
    """The engine's steps pack (threshold 0 for a tiny model) and sample what the row-major model
    samples greedily."""
    model = minigrm.load_model(save_hf(hf_model("llama"), tmp_path))
    monkeypatch.setattr(packed, "PACK_MIN_NUMEL", 0)
    prompt = torch.randint(3, VOCAB, (9,)).tolist()
    ref = minigrm.greedy_generate(model, prompt, 8)
    assert not packed.is_packed(model.model.layers[0].mlp.down_proj)
    engine = minigrm.Engine(model, None, progress=False)
    out = engine.generate([prompt], minigrm.SamplingParams(temperature=0, max_tokens=8))
    assert packed.is_packed(model.model.layers[0].mlp.down_proj) and packed.is_packed(model.lm_head)
    assert out[0][0].token_ids == ref
    twin = copy.deepcopy(model)  # the packed copies are not the module's attributes: deepcopy works
    assert not packed.is_packed(twin.model.layers[0].mlp.down_proj)
