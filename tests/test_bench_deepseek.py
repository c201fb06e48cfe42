"""The DeepSeek-V2-Lite decode roofline benchmark, dry-run on CPU with a tiny V2-Lite-like config:
one row per batch size and the bound's byte count done by hand."""
import pytest
import torch

from minigrm.bench_deepseek import V2_LITE, decode_roofline, markdown, random_model
from minigrm.config import ModelConfig

TINY = dict(V2_LITE, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
            num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            n_routed_experts=16, vocab_size=256)


def test_v2_lite_config_reads():
    c = ModelConfig.from_dict(V2_LITE)
    assert (c.num_hidden_layers, c.kv_lora_rank, c.n_routed_experts, c.head_dim) == (27, 512, 64, 192)
    assert c.rope_scaling["factor"] == 40


def test_decode_roofline_dry_run_on_cpu():
    c = ModelConfig.from_dict(TINY)
    model = random_model(c, torch.float32, "cpu")
    rows = decode_roofline(c, batches=(1, 5), context=40, dtype=torch.float32, device="cpu", steps=2,
                           bandwidth=1e10, model=model)
    assert [r["batch"] for r in rows] == [1, 5] and all(r["mode"] == "eager" for r in rows)
    n_moe, E, k, C, I = 2, 16, 6, 64, 32  # layer 0 is dense
    params = sum(p.numel() for p in model.parameters())
    routed = n_moe * E * 3 * I * C
    for r in rows:
        B = r["batch"]
        assert len(r["experts_per_layer"]) == n_moe
        assert all(k <= n <= min(E, B * k) for n in r["experts_per_layer"])
        if B == 1:
            assert r["experts_per_layer"] == [k, k]  # one token: exactly its k experts
        assert r["expert_bytes"] == sum(r["experts_per_layer"]) * 3 * I * C * 4
        assert r["kv_bytes"] == B * 41 * (32 + 16) * 4 * 3  # (context + 1) latent rows per layer
        dense = (params - routed - 256 * C + B * C) * 4  # every other weight, B embedding rows
        assert r["bytes_per_step"] == dense + r["expert_bytes"] + r["kv_bytes"]
        assert r["bound_tokens_per_s"] == pytest.approx(B * 1e10 / r["bytes_per_step"])
        assert r["ms"] > 0 and r["fraction"] == pytest.approx(r["tokens_per_s"] / r["bound_tokens_per_s"])
        assert r["host_syncs"] is None  # counted on CUDA only
    table = markdown(rows)
    assert table.count("\n| 1 | 40 | eager |") == 1 and table.count("\n| 5 | 40 | eager |") == 1
