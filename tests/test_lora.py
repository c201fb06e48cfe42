"""LoRA (lora.py) and its PEFT format (adapter.py): minigrm's adapted model == its merged twin ==
the real `peft` package on the `transformers` base, in both directions; merged sampling equals
sampling from a merged copy and restores the weights bit-exactly; only adapters train."""
import json

import peft
import pytest
import torch
import transformers

import minigrm
from factories import PROMPTS, VOCAB, engine, hf_model, max_diff, save_hf
from minigrm import adapter, lora, resume
from minigrm.distributed import Dist
from minigrm.meta_rm import classifier_from
from minigrm.optim import make_optimizer
from minigrm.training import LogprobForward

TOL = 1e-4
SAMPLE = minigrm.SamplingParams(n=2, temperature=1.0, max_tokens=10, ignore_eos=True, seed=5)

pytestmark = pytest.mark.usefixtures("one_thread")


def ids(B=2, T=30, seed=0):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize(model, seed=1, scale=0.3):
    """Non-zero B (A is already random): the adapter then moves the logits far from the base."""
    g = torch.Generator().manual_seed(seed)
    for _, m in lora.lora_layers(model):
        m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def base(request, tmp_path_factory):
    return request.param, save_hf(hf_model(request.param), tmp_path_factory.mktemp(request.param))


def test_zero_init_equals_base_and_only_adapters_train(base):
    _, path = base
    model = minigrm.load_model(path).train()
    with torch.no_grad():
        ref = model(ids())
    lora.add_lora(model, r=4, alpha=8)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * 7 * model.config.num_hidden_layers  # q k v o gate up down in every layer
    with torch.no_grad():
        assert torch.equal(model(ids()), ref)  # B = 0: the adapted model starts as the base
    model(ids()).logsumexp(-1).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert all(m.lora_B.weight.grad.abs().sum() > 0 for _, m in lora.lora_layers(model))
    opt = make_optimizer(model, 1e-3)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()
                                                                       if p.requires_grad}


def test_adapter_equals_merged_equals_peft(base, tmp_path):
    family, path = base
    model = randomize(lora.add_lora(minigrm.load_model(path), r=4, alpha=8))
    folder = minigrm.save_adapter(model, tmp_path / "adapter", path)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4
    assert cfg["lora_alpha"] == 8 and cfg["bias"] == "none" and cfg["modules_to_save"] is None
    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path), folder).eval()
    plain = minigrm.load_model(path)
    with torch.no_grad():
        ours, theirs, base_logits = model(ids()), hf(ids()).logits, plain(ids())
        with lora.merged(model):
            merged = model(ids())
        reloaded = minigrm.load_model(path, adapter=folder)(ids())
        merged_copy = minigrm.load_model(path, adapter=folder, merge=True)
        assert not lora.lora_layers(merged_copy)  # a plain model
        merged_plain = merged_copy(ids())
    assert max_diff(ours, base_logits) > 100 * TOL  # the adapter matters
    for other in (theirs, merged, reloaded, merged_plain):
        assert max_diff(ours, other) < TOL * max(1.0, ours.abs().max().item() / 10)


def test_peft_trained_adapter_loads_into_minigrm(base, tmp_path):
    family, path = base
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    config = peft.LoraConfig(r=8, lora_alpha=4, target_modules=["q_proj", "v_proj", "up_proj"], use_rslora=True,
                             task_type="CAUSAL_LM")
    pm = peft.get_peft_model(hf, config)
    with torch.no_grad():  # a "trained" adapter: random B
        g = torch.Generator().manual_seed(3)
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(tmp_path / "peft")
    ours = minigrm.load_model(path, adapter=tmp_path / "peft")
    assert ours.lora_config.targets == ["q_proj", "up_proj", "v_proj"]
    assert ours.lora_config.scaling == pytest.approx(4 / 8**0.5)  # rsLoRA
    with torch.no_grad():
        ref = pm.eval()(ids()).logits
        assert max_diff(ours(ids()), ref) < TOL * max(1.0, ref.abs().max().item() / 10)
        with pm.disable_adapter():
            assert max_diff(ours(ids()), pm(ids()).logits) > 100 * TOL


def test_meta_rm_head_travels_with_the_adapter(tmp_path):
    """SEQ_CLS: the scalar head is a module to save; peft over transformers' sequence classifier
    (built from the causal base, as minigrm builds it) gives the same rewards."""
    path = save_hf(hf_model("qwen2"), tmp_path / "base")
    model = randomize(lora.add_lora(classifier_from(path, torch.float32, "cpu", seed=7), r=4, alpha=16,
                                    targets=["q_proj", "k_proj", "down_proj"]))
    assert model.lora_config.modules_to_save == ["score"] and model.score.weight.requires_grad
    with torch.no_grad():  # a "trained" head, far from its 0.02-scale init
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(2)))
    folder = minigrm.save_adapter(model, tmp_path / "meta", path)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
    x = ids(B=3, T=20)  # no pad token (0) inside: transformers pools at the last position
    with torch.no_grad():
        ours = model(x)[:, -1]  # (B,)
        again = minigrm.load_model(path, adapter=folder)(x)[:, -1]
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        theirs = peft.PeftModel.from_pretrained(hf, folder).eval()(x).logits[:, 0]
        auto = peft.AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
        assert max_diff(auto(x).logits[:, 0], ours) < TOL
    assert max_diff(ours, theirs) < TOL and max_diff(ours, again) < TOL
    assert ours.std() > 1.0  # rewards far apart: the comparison can see a lost head


def test_merged_sampling_equals_a_merged_copy_and_restores_bit_exactly(tmp_path):
    path = save_hf(hf_model("gemma2"), tmp_path / "base")  # softcaps and a sliding window in the engine
    model = randomize(lora.add_lora(minigrm.load_model(path), r=4, alpha=8), scale=0.1)
    folder = minigrm.save_adapter(model, tmp_path / "adapter", path)
    copy = minigrm.load_model(path, adapter=folder, merge=True)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with lora.merged(model):
        got = engine(model).generate(PROMPTS, SAMPLE)
        assert all(m.merged for _, m in lora.lora_layers(model))
    want = engine(copy).generate(PROMPTS, SAMPLE)
    unmerged = engine(model).generate(PROMPTS, SAMPLE)  # LoRA-aware matmuls, no merge
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in want]
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in unmerged]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit-exact
    with lora.merged(model, exact=False):  # subtraction: within one rounding per element
        pass
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=1e-6, atol=1e-7)


def test_mla_latent_decode_uses_the_adapted_kv_b_proj(tmp_path):
    path = save_hf(hf_model("deepseek_v2"), tmp_path / "base")
    model = randomize(lora.add_lora(minigrm.load_model(path), r=4, alpha=8, targets=["kv_b_proj"]), scale=0.5)
    unmerged = engine(model).generate(PROMPTS, SAMPLE)
    with lora.merged(model):
        merged = engine(model).generate(PROMPTS, SAMPLE)
    assert [[c.token_ids for c in g] for g in unmerged] == [[c.token_ids for c in g] for g in merged]
    plain = engine(minigrm.load_model(path)).generate(PROMPTS, SAMPLE)
    assert [[c.token_ids for c in g] for g in plain] != [[c.token_ids for c in g] for g in merged]


def test_deepseek_v2_attention_adapter_equals_peft(tmp_path):
    """MLA projections by their HF names. (PEFT 0.21 turns gate/up/down targets on transformers'
    fused MoE models into expert parameters, dense MLPs included, so only attention is compared.)"""
    path = save_hf(hf_model("deepseek_v2"), tmp_path / "base")
    model = randomize(lora.add_lora(minigrm.load_model(path), r=4, alpha=8,
                                    targets=["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]))
    folder = minigrm.save_adapter(model, tmp_path / "adapter", path)
    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(path), folder).eval()
    with torch.no_grad():
        assert max_diff(model(ids()), hf(ids()).logits) < TOL
        assert max_diff(model(ids()), minigrm.load_model(path)(ids())) > 100 * TOL


def test_grad_checkpointing_and_dropout(tmp_path):
    """Dropout draws the same masks when checkpointing recomputes a layer; no-grad forwards
    (rollouts, old and reference log-probs) see no dropout."""
    path = save_hf(hf_model("qwen3"), tmp_path / "base")
    model = randomize(lora.add_lora(minigrm.load_model(path).train(), r=4, alpha=8, dropout=0.3))
    policy, x, mask = LogprobForward(model), ids(), torch.ones(2, 30, dtype=torch.bool)
    grads = []
    for checkpointing in (False, True):
        model.model.gradient_checkpointing = checkpointing
        torch.manual_seed(0)
        model.zero_grad()
        policy(x, mask).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(policy(x, mask), policy(x, mask))  # deterministic without grad
        model.eval()
        assert torch.equal(policy(x, mask), policy(x, mask))


def test_trainable_state_roundtrip_and_merged_folder(tmp_path):
    path = save_hf(hf_model("llama3"), tmp_path / "base")  # tied head
    model = randomize(lora.add_lora(minigrm.load_model(path), r=2, alpha=2, targets=["o_proj", "down_proj"]))
    state = lora.trainable_state_dict(LogprobForward(model))  # the "lm." prefix dropped
    assert sorted(state) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    fresh = lora.add_lora(minigrm.load_model(path), r=2, alpha=2, targets=["o_proj", "down_proj"])
    lora.load_trainable_state_dict(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(ids()), model(ids()))
    with pytest.raises(KeyError, match="missing"):
        lora.load_trainable_state_dict(fresh, {k: v for k, v in state.items() if "layers.0" not in k})
    folder = adapter.save_merged(model, tmp_path / "merged", tokenizer_dir=None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert max_diff(hf(ids()).logits, model(ids())) < TOL
        adapter_folder = minigrm.save_adapter(model, tmp_path / "adapter")
        same = minigrm.load_model(path, adapter=adapter_folder, merge=True)
        assert torch.equal(minigrm.load_model(folder)(ids()), same(ids()))  # one rounding, the same one


def test_refusals(tmp_path):
    path = save_hf(hf_model("llama"), tmp_path / "base")
    with pytest.raises(ValueError, match="no Linear layer matches"):
        lora.add_lora(minigrm.load_model(path), targets=["c_attn"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(path)
    peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True)).save_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="use_dora"):
        minigrm.load_model(path, adapter=tmp_path / "d")


def test_bf16_base_with_fp32_adapters(tmp_path):
    """The base kept in bf16 (frozen), the adapters fp32 master weights with fp32 gradients."""
    path = save_hf(hf_model("llama"), tmp_path / "base")
    model = randomize(lora.add_lora(minigrm.load_model(path, dtype=torch.bfloat16).train(), r=4, alpha=8))
    ref = randomize(lora.add_lora(minigrm.load_model(path).train(), r=4, alpha=8))
    out = model(ids())
    assert out.dtype == torch.bfloat16
    out.float().logsumexp(-1).sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        assert max_diff(out.float(), ref(ids())) < 0.05 * ref(ids()).abs().max()  # bf16 rounding only


def test_lora_checkpoint_holds_adapters_only_and_resumes_exactly(tmp_path):
    """resume.save_checkpoint writes the adapter (PEFT's format) and the adapters' AdamW state;
    load_model(base, adapter=checkpoint) + load_checkpoint continue exactly."""
    path = save_hf(hf_model("qwen3"), tmp_path / "base")
    batches = [(ids(seed=s), torch.ones(2, 30, dtype=torch.bool)) for s in range(3)]

    def start(model):
        policy = LogprobForward(model.train())
        return policy, make_optimizer(policy, 1e-2)

    def step(policy, opt, k):
        (-policy(*batches[k]).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model = lora.add_lora(minigrm.load_model(path), r=4, alpha=8)
    policy, opt = start(model)
    for k in range(2):
        step(policy, opt, k)
    ckpt = resume.save_checkpoint(tmp_path / "run", 2, model, policy, opt, Dist(), path)
    step(policy, opt, 2)  # the uninterrupted run's third step
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "rng-rank0.pt", "trainer_state.json", "optimizer.pt"} <= names
    assert not any(n.startswith("model") for n in names)  # no copy of the frozen base
    n_adapters = len(lora.trainable_state_dict(model))
    assert len(torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]) == n_adapters

    resumed = minigrm.load_model(path, adapter=ckpt)
    policy2, opt2 = start(resumed)
    assert resume.load_checkpoint(ckpt, policy2, opt2, Dist())["step"] == 2
    step(policy2, opt2, 2)
    want, got = lora.trainable_state_dict(model), lora.trainable_state_dict(resumed)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert any(m.lora_B.weight.abs().sum() > 0 for _, m in lora.lora_layers(resumed))  # B has trained


def test_disabled_adapters_give_the_base_model(tmp_path):
    """GRPO's reference log-probs from the policy itself: the base, exactly, and no copy."""
    path = save_hf(hf_model("gemma2"), tmp_path / "base")
    base = LogprobForward(minigrm.load_model(path))
    policy = LogprobForward(randomize(lora.add_lora(minigrm.load_model(path), r=4, alpha=8)))
    x, mask = ids(), torch.ones(2, 30, dtype=torch.bool)
    with torch.no_grad():
        adapted = policy(x, mask)
        with lora.disabled(policy.lm):
            assert torch.equal(policy(x, mask), base(x, mask))
        assert torch.equal(policy(x, mask), adapted) and max_diff(adapted, base(x, mask)) > 100 * TOL
        with lora.merged(policy.lm), pytest.raises(RuntimeError, match="merged"):
            with lora.disabled(policy.lm):
                pass
