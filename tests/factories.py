"""Tiny random Hugging Face checkpoints of every supported family, built with transformers.

Weights are re-drawn at a scale where every path matters (unit-variance activations, norm
weights far from their init, biases non-zero), so a missing `(1 + w)` or a wrong softcap
changes the logits by far more than the test tolerance.
"""
import json
import shutil

import torch
import transformers

from minigrm import kernels
from minigrm.config import ModelConfig
from minigrm.engine import Engine
from minigrm.moe import MoE
from minigrm.sampling import SamplingParams

VOCAB = 96


def hf_config(family: str, **overrides):
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        cfg = dict(base, tie_word_embeddings=False, rope_theta=10000.0)
    elif family == "llama3":  # Llama-3.1 RoPE scaling, tied head (as in Llama-3.2-1B)
        cfg = dict(base, tie_word_embeddings=True, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=64))
        family = "llama"
    elif family == "qwen2":
        cfg = dict(base, tie_word_embeddings=True, rope_theta=1000000.0)
    elif family == "qwen3":  # head_dim != hidden / heads
        cfg = dict(base, head_dim=24, tie_word_embeddings=False, rope_theta=1000000.0)
    elif family == "gemma2":  # small window and caps so both change the result
        cfg = dict(base, head_dim=32, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=24,
                   sliding_window=7, attn_logit_softcapping=5.0, final_logit_softcapping=4.0)
    elif family == "deepseek_v2":  # V2-Lite's shape in miniature: MLA without q compression, YaRN,
        # a dense first layer, then MoE with 2 shared + 8 routed experts, 3 active, greedy routing
        cfg = dict(base, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16,
                   qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, n_shared_experts=2,
                   num_experts_per_tok=3, moe_intermediate_size=24, first_k_dense_replace=1,
                   topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
                   tie_word_embeddings=False,
                   rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, beta_fast=32,
                                        beta_slow=1, mscale=0.707, mscale_all_dim=0.707,
                                        original_max_position_embeddings=64))
    else:
        raise ValueError(family)
    cfg.update(overrides)
    return transformers.AutoConfig.for_model(family, **cfg)


@torch.no_grad()
def perturb(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1 and "norm" in name:
            p.copy_(p + 0.3 * noise)  # far from 1 (Llama) or 0 (Gemma's 1 + w)
        elif p.ndim == 1:
            p.copy_(0.2 * noise)  # biases
        elif "embed" in name:
            p.copy_(noise)
        else:
            p.copy_(noise / p.shape[-1] ** 0.5)  # fan-in (HF keeps MoE experts as 3-D (E, out, in))
    return model


def hf_model(family: str, classifier: bool = False, seed: int = 0, **overrides):
    """A perturbed random transformers model in fp32 eval mode."""
    torch.manual_seed(seed)
    config = hf_config(family, **overrides)
    if classifier:
        config.num_labels = 1
        model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return perturb(model.float(), seed).eval()


def save_hf(model, path, **kwargs):
    model.save_pretrained(path, **kwargs)
    return path


class ScriptedEngine:
    """Stands in for minigrm.Engine in infer_scale.py: answers every prompt with
    "Scores: \\boxed{<answer(n)>}" for the n responses it shows (or refuses prompts whose text
    contains "REFUSE", as the engine refuses a prompt longer than the context)."""
    answer = None

    def __init__(self, model, tok, **kw):
        pass

    def generate(self, prompts, params, on_finish=None, seeds=None):
        import re

        from minigrm.sampling import Completion
        for i, p in enumerate(prompts):
            if "REFUSE" in p:
                on_finish(i, 0, Completion("", [], [], "error", error="prompt of 9999 tokens leaves no room"))
                continue
            n = len(re.findall(r"\[The Begin of Response \d+\]", p))
            on_finish(i, 0, Completion(f"Analysis: ...\nScores: \\boxed{{{ScriptedEngine.answer(n)}}}", [1, 2], [],
                                       "stop"))


# ---------------------------------------------------------------- tiny models with a real tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
ITEMS = [
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
    {"prompt": [{"role": "user", "content": "Pick a colour."}], "responses": ["red", "dog", "7"], "best": 0},
    {"prompt": "Is water wet?", "response": "Yes.", "label": 1},
]


def make_tiny_model(smollm2_path, path, seed: int = 0):
    """A tiny random Llama (tied head) with SmolLM2's real tokenizer and chat template."""
    path.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copy(smollm2_path / f, path / f)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def make_tiny_deepseek(smollm2_path, path):
    """A tiny random DeepSeek-V2 (MLA with YaRN, a dense first layer, then 64 experts of which
    each token uses one, routed sharply so that some sit idle on a rank) with SmolLM2's tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    for f in TOKENIZER_FILES:
        shutil.copy(smollm2_path / f, path / f)
    torch.manual_seed(0)
    yarn = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=512,
                beta_fast=32, beta_slow=1, mscale=0.707, mscale_all_dim=0.707)
    cfg = transformers.DeepseekV2Config(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=1, moe_intermediate_size=16,
        first_k_dense_replace=1, max_position_embeddings=2048, rope_parameters=yarn,
        bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = transformers.DeepseekV2ForCausalLM(cfg)
    with torch.no_grad():
        model.model.layers[1].mlp.gate.weight.normal_(0, 5.0)
    model.save_pretrained(path)
    return path


def write_items(path, items=ITEMS):
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


# ---------------------------------------------------------------- engines and MoE layers for tests

# Two prompts share a 8-token prefix (two full blocks of 4); the second is longer than
# gemma2's sliding window (7), the third is short.
PROMPTS = [[5, 17, 33, 8, 61, 7, 9, 11, 3, 4], [5, 17, 33, 8, 61, 7, 9, 11, 80, 81, 82, 83, 84], [40, 41]]


def engine(model, cascade: bool = True, **kw):
    e = Engine(model, None, **{"block_size": 4, "num_blocks": 64, "progress": False, **kw})
    # CPU decode reads shared prefixes through cascade attention only above a length; the tests'
    # prompts are short, so force it on (or off) to pin both paths
    e.runner.cascade_min_tokens = 0 if cascade else 10**9
    return e


def assert_triton_equals_torch(model):
    """Sample with every kernel forced (interpreted on CPU) and with the torch twins: same tokens."""
    params = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_tokens=6, ignore_eos=True, seed=1)
    ref = engine(model).generate(PROMPTS, params)
    kernels.set_backend("triton")
    try:
        out = engine(model).generate(PROMPTS, params)
    finally:
        kernels.set_backend("auto")
    for g_ref, g_out in zip(ref, out):
        for a, b in zip(g_ref, g_out):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def moe_layer(E=8, k=3, C=32, I=16, seed=0, **cfg):
    raw = dict(hf_config("deepseek_v2").to_dict(), n_routed_experts=E, num_experts_per_tok=k,
               hidden_size=C, moe_intermediate_size=I, **cfg)
    moe = MoE(ModelConfig.from_dict(raw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        moe.gate.weight[: E // 2, 0] = -20.0  # with tokens(): half the experts are never picked
    return moe


def tokens(*shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    x[..., 0] = 5.0  # the feature that keeps experts 0 .. E/2 - 1 idle
    return x


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def random_ids(B=2, T=40, seed=0):  # T=40 is far past the gemma2 fixture's window of 7
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
