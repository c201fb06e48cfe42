"""DeepSeek-V2 (MLA + MoE + YaRN) against transformers' DeepseekV2ForCausalLM, the latent-cache
decode against the expanded attention, and the KV-cache arithmetic of DeepSeek-V2-Lite."""
import json
import math
import shutil

import pytest
import torch
import transformers

import minigrm
from factories import PROMPTS, assert_triton_equals_torch, engine, hf_model, max_diff, random_ids, save_hf
from minigrm import mla
from minigrm import kernels
from minigrm.kernels import mla_decode
from minigrm.config import ModelConfig
from minigrm.cuda_graphs import DecodeGraphs
from minigrm.engine import teacher_forced_logprobs
from minigrm.kv_cache import allocate_kv_cache, kv_bytes_per_token
from minigrm.layers import apply_rope
from minigrm.model import CausalLM
from minigrm.sampling import SamplingParams

TOL = 1e-4
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, beta_fast=32, beta_slow=1,
            original_max_position_embeddings=64)
VARIANTS = {
    # V2-Lite in miniature (factories.py): no query compression, greedy routing, mscale = mscale_all_dim
    "lite": {},
    # V2-236B's options: compressed query, group-limited routing, scaled weights, biases, and
    # mscale != mscale_all_dim so YaRN also scales cos/sin
    "qlora-grouped": dict(q_lora_rank=24, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                          routed_scaling_factor=2.5, attention_bias=True,
                          rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.707)),
    # plain RoPE, every layer MoE
    "plain-rope-all-moe": dict(first_k_dense_replace=0, rope_parameters=dict(rope_type="default", rope_theta=1e4)),
}
# DeepSeek-V2-Lite's config.json (the base of DeepSeek-GRM-16B), as transformers 5 saves it
V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", vocab_size=102400, hidden_size=2048,
    intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
    num_key_value_heads=16, head_dim=64, kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
    first_k_dense_replace=1, moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy",
    norm_topk_prob=False, routed_scaling_factor=1.0, scoring_func="softmax", aux_loss_alpha=0.001,
    seq_aux=True, hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6,
    tie_word_embeddings=False, bos_token_id=100000, eos_token_id=100001,
    rope_parameters=dict(beta_fast=32, beta_slow=1, factor=40, mscale=0.707, mscale_all_dim=0.707,
                         original_max_position_embeddings=4096, rope_theta=10000, rope_type="yarn", type="yarn"),
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    hf = hf_model("deepseek_v2", **VARIANTS[request.param])
    path = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, minigrm.load_model(path), path


def test_logits_match_transformers(pair):
    hf, ours, _ = pair
    ids = random_ids()
    with torch.no_grad():
        ref, out = hf(ids).logits, ours(ids)
    assert ref.std() > 0.5
    assert max_diff(out, ref) < TOL
    norms = [p for n, p in ours.named_parameters() if n.endswith("layernorm.weight")]
    assert any("kv_a_layernorm" in n for n, _ in ours.named_parameters())
    assert all((p - 1).abs().max() > 0.1 for p in norms)  # perturbed: a norm that is skipped shows


def test_modules_follow_the_checkpoint(pair):
    _, ours, _ = pair
    c = ours.config
    layers = ours.model.layers
    assert type(layers[-1].self_attn).__name__ == "MLAttention" and type(layers[-1].mlp).__name__ == "MoE"
    dense = [type(layer.mlp).__name__ == "MLP" for layer in layers]
    assert dense == [i < c.first_k_dense_replace for i in range(c.num_hidden_layers)]
    assert hasattr(layers[0].self_attn, "q_proj") == (c.q_lora_rank is None)


def test_each_feature_matters(tmp_path):
    """Guards the guard: with the same weights, dropping or changing each feature moves the
    logits by far more than TOL, so the comparison with transformers would catch it."""
    base = save_hf(hf_model("deepseek_v2", rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.707)),
                   tmp_path / "base")
    ids = random_ids()
    model = minigrm.load_model(base)
    with torch.no_grad():
        ref = model(ids)
    raw = json.loads((base / "config.json").read_text())
    rope = raw["rope_parameters"]
    changes = {
        "yarn": dict(rope_parameters=dict(rope, rope_type="default", type="default")),
        "yarn-cos-sin-factor": dict(rope_parameters=dict(rope, mscale=0.707)),  # = mscale_all_dim: factor 1
        "routed-scaling": dict(routed_scaling_factor=2.0),
        "group-limited-routing": dict(topk_method="group_limited_greedy", n_group=4, topk_group=1),
        "experts-per-token": dict(num_experts_per_tok=2),
        "dense-first-layer": dict(first_k_dense_replace=0),  # refused: layer 0 has no experts
    }
    for name, change in changes.items():
        folder = shutil.copytree(base, tmp_path / name)
        (folder / "config.json").write_text(json.dumps({**raw, **change}))
        if name == "dense-first-layer":
            with pytest.raises(KeyError, match="experts"):
                minigrm.load_model(folder)
            continue
        with torch.no_grad():
            assert max_diff(minigrm.load_model(folder)(ids), ref) > 100 * TOL, name
    c = model.config
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        for layer in model.model.layers:  # softmax scale without YaRN's mscale**2
            mp.setattr(layer.self_attn, "scale", c.head_dim**-0.5)
        assert max_diff(model(ids), ref) > 100 * TOL, "softmax mscale"
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():  # half-split pairs instead of interleaved
        mp.setattr(mla, "apply_rope_interleaved", lambda x, cos, sin: apply_rope(x.float(), cos, sin).type_as(x))
        assert max_diff(model(ids), ref) > 100 * TOL, "interleaved rope"
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.shared_experts.down_proj.weight.zero_()
        assert max_diff(model(ids), ref) > 100 * TOL, "shared experts"


@pytest.mark.parametrize("change,message", [
    (dict(norm_topk_prob=True), "norm_topk_prob"),
    (dict(scoring_func="sigmoid"), "scoring_func"),
    (dict(topk_method="noaux_tc"), "topk_method"),
    (dict(moe_layer_freq=2), "moe_layer_freq"),
    (dict(kv_lora_rank=None), "kv_lora_rank"),
    (dict(topk_method="group_limited_greedy", n_group=5, topk_group=2), "n_group"),
    (dict(rope_parameters=dict(V2_LITE["rope_parameters"], attention_factor=1.0)), "attention_factor"),
])
def test_refuses_what_it_does_not_implement(change, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**V2_LITE, **change})


def test_yarn_only_for_deepseek_v2():
    with pytest.raises(ValueError, match="yarn"):
        ModelConfig.from_dict(dict(V2_LITE, model_type="llama"))


def test_v2_lite_config_builds_15_7b_params_and_its_latent_cache():
    """DeepSeek-V2-Lite (DeepSeek-GRM-16B) on the meta device: the parameter count of the
    release, and KV bytes per token of the latent cache against MHA/GQA of the same shape."""
    c = ModelConfig.from_dict(V2_LITE)
    mscale = 0.1 * 0.707 * math.log(40) + 1
    assert c.head_dim == 192 and c.attn_scale == pytest.approx(192**-0.5 * mscale**2)
    assert c.rope_scaling["attention_factor"] == 1.0
    with torch.device("meta"):
        model = CausalLM(c)
    n = sum(p.numel() for p in model.parameters())
    assert 15.6e9 < n < 15.8e9  # "15.7B total parameters, 2.4B activated"
    mla_bytes = kv_bytes_per_token(c, torch.bfloat16)
    assert mla_bytes == (512 + 64) * 27 * 2 == 31104
    same_shape = dict(model_type="llama", vocab_size=102400, hidden_size=2048, intermediate_size=10944,
                      num_hidden_layers=27, num_attention_heads=16, head_dim=128)
    mha = kv_bytes_per_token(ModelConfig.from_dict(dict(same_shape, num_key_value_heads=16)), torch.bfloat16)
    gqa = kv_bytes_per_token(ModelConfig.from_dict(dict(same_shape, num_key_value_heads=4)), torch.bfloat16)
    assert (mha, gqa) == (2 * 16 * 128 * 27 * 2, 2 * 4 * 128 * 27 * 2) == (221184, 55296)
    print(f"\nKV bytes/token bf16: MLA {mla_bytes}, GQA-4 {gqa}, MHA {mha} ({mha / mla_bytes:.1f}x MLA)")
    k, v = allocate_kv_cache(c, num_blocks=2, block_size=16, dtype=torch.bfloat16, device="meta")
    assert len(k) == 27 and v is None and k[0].shape == (2, 16, 1, 576)
    # the release's own config.json (transformers 4.33 layout: rope_theta + rope_scaling) reads the same
    original = {k: v for k, v in V2_LITE.items() if k not in ("rope_parameters", "head_dim")}
    original.update(rope_theta=10000, rope_scaling={k: v for k, v in V2_LITE["rope_parameters"].items()
                                                    if k not in ("rope_theta", "rope_type")})
    o = ModelConfig.from_dict(original)
    assert (o.rope_theta, o.rope_scaling, o.attn_scale, o.head_dim) == (c.rope_theta, c.rope_scaling, c.attn_scale, 192)


# --- the latent cache ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_latent_decode_equals_expanded_attention(backend, monkeypatch):
    """The absorbed form over a paged, shuffled latent cache = up-projected K/V + causal attention,
    with the torch twin and with the Triton kernel (interpreted on CPU, 3 splits)."""
    monkeypatch.setattr(minigrm.kernels, "_backend", backend)
    monkeypatch.setattr(mla_decode, "_auto_splits", lambda *a: 3)
    c = ModelConfig.from_dict(hf_model("deepseek_v2", q_lora_rank=24).config.to_dict())
    layer = mla.MLAttention(c, 0).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    lens, page, H = [13, 1, 30], 4, c.num_attention_heads
    R, Dr, Dn = c.kv_lora_rank, c.qk_rope_head_dim, c.qk_nope_head_dim
    blocks = sum(-(-n // page) for n in lens)
    cache = torch.zeros(blocks, page, 1, R + Dr)
    perm, tables, expected = torch.randperm(blocks, generator=g).tolist(), [], []
    q_nope, q_pe = torch.randn(len(lens), H, Dn, generator=g), torch.randn(len(lens), H, Dr, generator=g)
    for b, n in enumerate(lens):
        table = [perm.pop() for _ in range(-(-n // page))]
        tables.append(table + [0] * (8 - len(table)))
        c_kv, k_pe = torch.randn(1, n, R, generator=g), torch.randn(1, n, 1, Dr, generator=g)
        rows = torch.cat([c_kv[0], k_pe[0, :, 0]], dim=-1)
        for t in range(n):
            cache[table[t // page], t % page, 0] = rows[t]
        expected.append(layer.attend_expanded(q_nope[None, None, b], q_pe[None, None, b], c_kv, k_pe)[0, 0])
    out = layer.latent_decode(q_nope, q_pe, cache, torch.tensor(tables, dtype=torch.int32),
                              torch.tensor(lens, dtype=torch.int32))
    assert out.shape == (3, H, c.v_head_dim)
    assert max_diff(out, torch.stack(expected)) < 1e-5


def test_engine_greedy_equals_transformers_generate(pair):
    hf, ours, _ = pair
    e = engine(ours)
    assert e.runner.v_cache is None and e.runner.k_cache[0].shape == (64, 4, 1, 16 + 8)
    outs = e.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
        assert out[0].token_ids == ref


def test_engine_logprobs_equal_full_forward_with_sharing_and_preemption(pair):
    """Latent-cache decode (absorbed) and prefill on a shared prefix (decompressed) against the
    uncompressed full forward, through prefix sharing and preemption in a tiny pool."""
    _, ours, _ = pair
    params = SamplingParams(n=3, temperature=1.0, max_tokens=10, ignore_eos=True, seed=3)
    small = engine(ours, num_blocks=12)
    outs = small.generate(PROMPTS, params)
    assert small.scheduler.num_preemptions > 0 and small.stats["cached_tokens"] > 0
    for prompt, group in zip(PROMPTS, outs):
        for c in group:
            ref = teacher_forced_logprobs(ours, prompt, c.token_ids)
            assert max(abs(a - b) for a, b in zip(ref, c.logprobs)) < 2e-3
    big = engine(ours).generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in outs] == [[c.token_ids for c in g] for g in big]


def test_engine_cascade_equals_plain_latent_decode(pair, monkeypatch):
    """Shared-prefix latent attention in the engine (the n samples of a prompt grouped on its
    blocks) gives plain latent decode's tokens and logprobs; the groups were really used."""
    _, ours, _ = pair
    params = SamplingParams(n=4, temperature=1.0, max_tokens=10, ignore_eos=True, seed=7)
    calls = []
    grouped = mla.mla_cascade_decode_attention
    monkeypatch.setattr(mla, "mla_cascade_decode_attention", lambda *a: calls.append(a[4]) or grouped(*a))
    on = engine(ours).generate(PROMPTS, params)
    assert calls and all(g.prefix_len.min() > 0 for g in calls)
    off = engine(ours, cascade=False).generate(PROMPTS, params)
    assert [[c.token_ids for c in g] for g in on] == [[c.token_ids for c in g] for g in off]
    assert max(abs(x - y) for g, h in zip(on, off) for a, b in zip(g, h) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5


def test_engine_on_triton_kernels_equals_torch_path(tmp_path):
    """The GPU path (RMSNorm kernel on kv_a_layernorm's strided rows and q_a_layernorm, the MLA
    latent decode kernel, the sampler; interpreted on CPU) gives the torch path's tokens."""
    assert_triton_equals_torch(minigrm.load_model(save_hf(hf_model("deepseek_v2", **VARIANTS["qlora-grouped"]), tmp_path)))


class EagerReplay(DecodeGraphs):
    """What a CUDA-graph replay computes, run eagerly (CPU): bucket-sized passes whose rows past
    the live count are padding (slot -1, length 1, full-width tables)."""

    def capture(self):
        self.graphs = dict.fromkeys(self.sizes)

    def replay(self, n):
        b = next(s for s in self.sizes if s >= n)
        self.buckets_run.add(b)
        return self.body(b)[:, :n]


@pytest.mark.parametrize("family,cascade", [("deepseek_v2", False), ("llama", False), ("deepseek_v2", True)])
def test_graph_body_with_padding_rows_equals_eager(family, cascade, tmp_path):
    """MLA decode in CUDA graphs: the graph body (padding rows masked on the device, latent rows
    stored through the masked store) gives the eager engine's tokens and logprobs, and padding
    rows write nothing into the cache; the dense body (no cascade: the torch path) likewise.
    With cascade, the body reads the static group buffers through the Triton kernels (MLA
    cascade: suffix, stacked prefix, merge; interpreted on CPU)."""
    model = minigrm.load_model(save_hf(hf_model(family), tmp_path))
    params = SamplingParams(n=3, temperature=1.0, max_tokens=9, ignore_eos=True, seed=5)
    ref = engine(model, cascade=False, max_num_seqs=12).generate(PROMPTS, params)
    if cascade:
        kernels.set_backend("triton")
    try:
        e = engine(model, cascade=cascade, max_num_seqs=12)
        e.runner.graphs = EagerReplay(e.runner, 12)
        e.runner.graphs.buckets_run = set()
        e.runner.graphs.ensure_captured()
        out = e.generate(PROMPTS, params)
        assert not cascade or e.runner.graphs.groups.prefix_len.max() > 0  # live groups reached the buffers
    finally:
        kernels.set_backend("auto")
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in ref]
    # (full-width tables change the fp32 reductions' blocking, not their values beyond rounding)
    assert max(abs(x - y) for g, h in zip(out, ref) for a, b in zip(g, h)
               for x, y in zip(a.logprobs, b.logprobs)) < (1e-4 if cascade else 1e-5)
    n_rows = sum(1 for g in out for _ in g)
    assert max(e.runner.graphs.buckets_run) > n_rows  # buckets with padding rows ran
    # a pass whose rows are all padding writes nothing (a slot of -1 must not wrap to the last slot)
    cache = e.runner.k_cache[0]
    cache.fill_(7.0)
    e.runner.state.num_rows_t.fill_(0)
    e.runner.graphs.set_groups(None, 0)
    if cascade:  # the static group buffers are the kernels' input (the torch twin takes live groups)
        kernels.set_backend("triton")
    try:
        with torch.inference_mode():
            e.runner.graphs.body(4)
    finally:
        kernels.set_backend("auto")
    assert (cache == 7.0).all()


def test_bf16_close_to_transformers(pair):
    _, _, path = pair
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    ours = minigrm.load_model(path, dtype=torch.bfloat16)
    with torch.no_grad():
        ref, out = hf(random_ids()).logits.float(), ours(random_ids()).float()
    assert max_diff(out, ref) < 0.1 * ref.abs().max()


def test_bench_shape_has_v2_lite_attention_and_runs(capsys):
    """The README's DeepSeek row: `bench --model random:deepseek-v2-mla` has V2-Lite's latent
    attention (heads, rank, rope and nope widths) and runs (tiny workload, cascade on and off)."""
    from minigrm import bench
    shape = bench.SHAPES["deepseek-v2-mla"]
    for key in ("num_attention_heads", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        assert shape[key] == V2_LITE[key], key
    for extra in ([], ["--no-cascade"]):
        bench.main(["--model", "random:deepseek-v2-mla", "--prompts", "2", "--k", "2", "--prompt-len", "24",
                    "--new-tokens", "3", "--no-hf", *extra])
        assert "minigrm" in capsys.readouterr().out
        assert torch.is_grad_enabled()  # the caller's grad mode is left as it was
