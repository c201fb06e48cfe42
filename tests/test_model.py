"""The decoder equals transformers, family by family, on tiny perturbed checkpoints (fp32)."""
import pytest
import torch

import minigrm
from factories import VOCAB, hf_model, max_diff, random_ids, save_hf

FAMILIES = ["llama", "llama3", "qwen2", "qwen3", "gemma2"]
TOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_lm_logits_match_transformers(family, tmp_path):
    hf = hf_model(family)
    ours = minigrm.load_model(save_hf(hf, tmp_path))
    ids = random_ids()
    with torch.no_grad():
        ref, out = hf(ids).logits, ours(ids)
    assert out.shape == (2, 40, VOCAB)
    assert ref.std() > 0.5  # the test is only as strong as the logits are far from zero
    assert max_diff(out, ref) < TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_rewards_match_transformers(family, tmp_path):
    hf = hf_model(family, classifier=True)
    ours = minigrm.load_model(save_hf(hf, tmp_path))
    ids = random_ids(B=3, T=20)
    ids[0, 15:] = 0  # right padding with pad_token_id=0: reward read at position 14
    ids[1, 7:] = 0
    with torch.no_grad():
        ref = hf(ids).logits.squeeze(-1)  # (B,) pooled by transformers
        per_position = ours(ids)  # (B, T)
    assert per_position.shape == (3, 20)
    pooled = minigrm.sequence_rewards(per_position, ids, pad_token_id=0)
    assert max_diff(pooled, ref) < TOL
    assert max_diff(pooled[0], per_position[0, 14]) == 0


def test_gemma2_sliding_window_and_softcaps_matter(tmp_path):
    """Guards the guard: each Gemma-2 feature changes logits by far more than TOL."""
    ids = random_ids()
    base = minigrm.load_model(save_hf(hf_model("gemma2"), tmp_path / "base"))
    with torch.no_grad():
        ref = base(ids)
        for override in [dict(sliding_window=4096), dict(attn_logit_softcapping=None),
                         dict(final_logit_softcapping=None), dict(query_pre_attn_scalar=32)]:
            other = minigrm.load_model(save_hf(hf_model("gemma2", **override), tmp_path / str(override)))
            assert max_diff(other(ids), ref) > 100 * TOL, override


def test_untied_and_tied_heads(tmp_path):
    untied = minigrm.load_model(save_hf(hf_model("llama"), tmp_path / "untied"))
    tied = minigrm.load_model(save_hf(hf_model("qwen2"), tmp_path / "tied"))
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight


@pytest.mark.parametrize("family", ["llama3", "gemma2"])
def test_sharded_transformers_checkpoint(family, tmp_path):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 3
    ours = minigrm.load_model(tmp_path)
    with torch.no_grad():
        assert max_diff(ours(random_ids()), hf(random_ids()).logits) < TOL


@pytest.mark.parametrize("stored,requested", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_dtype_conversion_on_load(stored, requested, tmp_path):
    hf = hf_model("qwen3").to(stored)
    ours = minigrm.load_model(save_hf(hf, tmp_path), dtype=requested)
    assert {p.dtype for p in ours.parameters()} == {requested}
    assert all(p.device.type == "cpu" for p in ours.parameters())  # nothing left on meta
    w_hf = hf.model.layers[1].mlp.up_proj.weight
    assert torch.equal(ours.model.layers[1].mlp.up_proj.weight, w_hf.to(requested))


def test_bf16_forward_close_to_transformers(tmp_path):
    hf = hf_model("gemma2").to(torch.bfloat16)
    ours = minigrm.load_model(save_hf(hf, tmp_path), dtype=torch.bfloat16)
    with torch.no_grad():
        ref, out = hf(random_ids()).logits.float(), ours(random_ids()).float()
    assert max_diff(out, ref) < 0.1 * ref.abs().max()


def test_greedy_generate_matches_transformers(tmp_path):
    hf = hf_model("qwen2")
    ours = minigrm.load_model(save_hf(hf, tmp_path))
    prompt = [5, 17, 33, 8, 61]
    out = minigrm.greedy_generate(ours, prompt, max_new_tokens=12)
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                      eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert out == ref


def test_causal_attention_uses_sdpas_own_causal_mask(monkeypatch):
    """Plain causal attention (no window, no softcap, as many queries as keys: every training and
    scoring forward) goes to SDPA with is_causal and no mask tensor: on CPU bit for bit the
    explicitly masked call, forward and backward, with grouped heads. Windows, softcaps and
    queries after a cached prefix keep the explicit mask."""
    import torch.nn.functional as F

    from minigrm.layers import causal_attention
    calls, sdpa = [], F.scaled_dot_product_attention
    def recorded(*a, **kw):
        calls.append((kw.get("is_causal", False), kw.get("attn_mask") is None))
        return sdpa(*a, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 150, h, 32, generator=g).requires_grad_() for h in (6, 2, 2))  # (B, T, H, D)
    grads = []
    for explicit in (False, True):
        for t in (q, k, v):
            t.grad = None
        if explicit:  # the masked call itself
            allowed = torch.arange(150)[None, :] <= torch.arange(150)[:, None]
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            out = sdpa(qt, kt, vt, attn_mask=allowed, scale=0.2, enable_gqa=True).transpose(1, 2)
        else:
            out = causal_attention(q, k, v, 0.2)
        out.backward(torch.ones_like(out))
        grads.append([out.detach()] + [t.grad.clone() for t in (q, k, v)])
    assert calls == [(True, True)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    calls.clear()
    with torch.no_grad():
        causal_attention(q, k, v, 0.2, window=16)
        causal_attention(q[:, -10:], k, v, 0.2)  # 10 queries after 140 cached keys
    assert calls == [(False, False), (False, False)]


def test_lm_head_in_vocabulary_slices_equals_one_call(monkeypatch):
    """LMHead's CPU inference path (2+ rows, no autograd) multiplies by slices of the vocabulary:
    bit for bit F.linear, for a vocabulary not a multiple of the slice, 3-d inputs and any row
    count; one row, autograd and a vocabulary within one slice keep the single call."""
    import torch.nn.functional as F

    from minigrm.layers import LMHead
    g = torch.Generator().manual_seed(0)
    head = LMHead(96, 2 * LMHead.VOCAB_SLICE + 77, bias=False)
    torch.nn.init.normal_(head.weight, generator=g)
    mms, mm = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **kw: mms.append(1) or mm(*a, **kw))
    for shape in [(2, 96), (33, 96), (3, 5, 96), (300, 96)]:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            assert torch.equal(head(x), F.linear(x, head.weight))
    assert len(mms) == 4 * 3  # three slices per call
    mms.clear()
    with torch.no_grad():
        head(torch.randn(1, 96))  # one row
    x = torch.randn(4, 96, requires_grad=True)
    head(x).sum().backward()  # autograd: the differentiable call
    assert x.grad is not None and mms == []
