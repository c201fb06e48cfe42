"""Fused q/k/v and gate/up projections (one matmul over one storage) against one matmul each."""
import pytest
import torch

import minigrm
from factories import VOCAB, hf_model, save_hf
from minigrm.fused import _consecutive, fuse_projections, fused_linear


@pytest.fixture(scope="module", params=["qwen2", "gemma2"])  # q/k/v biases; GeGLU and head_dim 32
def model(request, tmp_path_factory):
    return minigrm.load_model(save_hf(hf_model(request.param), tmp_path_factory.mktemp(request.param)))


def groups(model):
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        yield [a.q_proj, a.k_proj, a.v_proj]
        yield [m.gate_proj, m.up_proj]


def separate(x, linears):
    return [torch.nn.functional.linear(x, lin.weight, lin.bias) for lin in linears]


def test_loaded_weights_share_one_storage_and_fused_equals_separate(model):
    x = torch.randn(2, 5, model.config.hidden_size)
    for linears in groups(model):
        assert _consecutive([lin.weight for lin in linears])
        if linears[0].bias is not None:
            assert _consecutive([lin.bias for lin in linears])
        with torch.no_grad():
            for a, b in zip(fused_linear(x, *linears), separate(x, linears)):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    keys = set(model.state_dict())
    assert "model.layers.0.self_attn.k_proj.weight" in keys and not any("qkv" in k or "gate_up" in k for k in keys)


def test_training_updates_reach_the_fused_storage(tmp_path):
    """Gradients flow to the HF-named parameters (separate matmuls when grad is on); an
    optimizer step updates them in place, so the fused matmul sees the new weights."""
    model = minigrm.load_model(save_hf(hf_model("llama"), tmp_path))
    params = list(model.parameters())
    fuse_projections(model)  # idempotent: same parameter objects
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(3, VOCAB, (2, 12))
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    attn = model.model.layers[1].self_attn
    assert attn.k_proj.weight.grad is not None and attn.k_proj.weight.grad.abs().sum() > 0
    before = attn.k_proj.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, attn.k_proj.weight) and _consecutive([attn.q_proj.weight, attn.k_proj.weight])
    x = torch.randn(3, model.config.hidden_size)
    with torch.no_grad():
        for a, b in zip(fused_linear(x, attn.q_proj, attn.k_proj, attn.v_proj), separate(x, [attn.q_proj, attn.k_proj,
                                                                                            attn.v_proj])):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_moved_weights_fall_back_to_separate_matmuls(model):
    """After .to() the weights no longer share a storage: one matmul each, same results."""
    m = minigrm.model.CausalLM(model.config)
    m.load_state_dict(model.state_dict())
    m = m.double()
    a = m.model.layers[0].self_attn
    assert not _consecutive([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
    ids = torch.randint(3, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).float(), model(ids), atol=1e-4, rtol=1e-4)


def test_lora_layers_are_never_fused(model):
    """A LoRA layer keeps the fused base weight but adds B A in its own forward: the fused matmul
    would drop that update, so fused_linear must call the layers (no-grad output = grad output)."""
    import copy
    from minigrm import lora
    m = copy.deepcopy(model)
    fuse_projections(m)
    lora.add_lora(m, r=2, alpha=4, seed=0)
    for _, layer in lora.lora_layers(m):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    ids = torch.randint(0, VOCAB, (1, 7))
    with torch.no_grad():
        fast = m(ids)
    slow = m(ids)
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)
