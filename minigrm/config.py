"""ModelConfig: one dataclass for every supported family, built from a Hugging Face `config.json`.

The decoder in `model.py` reads only this dataclass, never the raw JSON, so each family's
quirks are resolved here once, into plain switches:

    Llama     silu MLP, optional Llama-3 RoPE scaling, optional attention/MLP biases
    Qwen2     q/k/v biases (o_proj has none), optional sliding window on the top layers
    Qwen3     per-head RMSNorm on q and k (`q_norm`, `k_norm`), head_dim != hidden / heads
    Gemma-2   (1 + w) RMSNorms, four per layer, embeddings scaled by sqrt(hidden),
              GeGLU-tanh MLP, attention scale query_pre_attn_scalar**-0.5, attention and
              final logit tanh softcaps, sliding window on every other layer
    DeepSeek-V2  multi-head latent attention (mla.py, `kv_lora_rank` > 0), mixture-of-experts
              MLPs from layer `first_k_dense_replace` on (moe.py), YaRN RoPE on the rope part
              of q/k with its mscale in the softmax scale

A `*ForSequenceClassification` architecture (the meta RM) sets `num_labels` and a `score`
head instead of `lm_head`. Anything we do not implement is refused with an error that
names the field, rather than silently computing something else.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "deepseek_v2")
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
ROPE_TYPES = ("default", "llama3", "yarn")  # yarn: DeepSeek-V2 only
TOPK_METHODS = ("greedy", "group_limited_greedy")
FULL, SLIDING = "full_attention", "sliding_attention"


def read_json_object(file: Path) -> dict:
    """A JSON object from `file`, or a ValueError naming the file (config.json, tokenizer files)."""
    try:
        value = json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return value


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None or {"rope_type": "llama3" | "yarn", "factor", ...}
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    norm_offset: float = 0.0  # Gemma: RMSNorm computes x * (1 + w)
    scale_embeddings: bool = False  # Gemma: embeddings * sqrt(hidden_size)
    sandwich_norms: bool = False  # Gemma-2: post-attention / pre- and post-feedforward norms
    attn_scale: float = 0.0  # softmax scale; head_dim**-0.5 unless the family says otherwise
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)
    num_labels: int = 0  # > 0: sequence-classification head `score` instead of `lm_head`
    # DeepSeek-V2 multi-head latent attention (mla.py), on when kv_lora_rank > 0; head_dim is
    # then qk_nope_head_dim + qk_rope_head_dim (the query/key width) and RoPE spans the rope part
    kv_lora_rank: int = 0
    q_lora_rank: int | None = None  # None: one q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # DeepSeek-V2 mixture of experts (moe.py), on when n_routed_experts > 0, in every layer
    # from first_k_dense_replace on (the layers before keep the dense MLP of intermediate_size)
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    topk_method: str = "greedy"  # or "group_limited_greedy": best topk_group of n_group groups first
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 0
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    raw: dict = field(default_factory=dict, repr=False)  # the config.json we came from

    @property
    def is_classifier(self) -> bool:
        return self.num_labels > 0

    @classmethod
    def from_pretrained(cls, path) -> "ModelConfig":
        file = Path(path) / "config.json"
        if not file.exists():
            raise FileNotFoundError(f"no config.json in {path}: expected a Hugging Face model folder")
        raw = read_json_object(file)
        try:
            return cls.from_dict(raw)
        except KeyError as e:
            raise ValueError(f"{file}: missing field {e.args[0]!r}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file}: {e}") from None

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        mt = raw.get("model_type")
        if mt not in FAMILIES:
            raise ValueError(f"unsupported model_type {mt!r}; minigrm supports {', '.join(FAMILIES)}")
        n_heads = raw["num_attention_heads"]
        n_layers = raw["num_hidden_layers"]
        head_dim = raw.get("head_dim") or raw["hidden_size"] // n_heads
        c = cls(
            model_type=mt,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=raw.get("num_key_value_heads") or n_heads,
            head_dim=head_dim,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            hidden_act=raw.get("hidden_act") or raw.get("hidden_activation") or "silu",
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            tie_word_embeddings=raw.get("tie_word_embeddings", mt == "gemma2"),
            attn_scale=head_dim**-0.5,
            pad_token_id=raw.get("pad_token_id"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            raw=raw,
        )
        if mt == "gemma2":  # Gemma-2's config stores the activation as `hidden_activation`
            c.hidden_act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if c.hidden_act not in ACTIVATIONS:
            raise ValueError(f"unsupported hidden_act {c.hidden_act!r}; minigrm supports {ACTIVATIONS}")
        c.rope_theta, c.rope_scaling = _rope(raw)
        _family_switches(c, raw)
        if mt == "deepseek_v2":
            _deepseek_v2(c, raw)
        c.num_labels = _num_labels(raw)
        return c


def _rope(raw: dict) -> tuple[float, dict | None]:
    """Read RoPE from either layout: transformers<5 (`rope_theta` + `rope_scaling`) or >=5
    (`rope_parameters` holding both)."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    theta = params.pop("rope_theta", None) or raw.get("rope_theta") or 10000.0
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_scaling type {rope_type!r}; minigrm supports {ROPE_TYPES}")
    if rope_type == "yarn" and raw.get("model_type") != "deepseek_v2":
        raise ValueError("unsupported rope_scaling type 'yarn' outside deepseek_v2 (untested there)")
    if raw.get("partial_rotary_factor", 1.0) != 1.0 or params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("unsupported field partial_rotary_factor != 1.0")
    if rope_type == "default":
        return float(theta), None
    if rope_type == "yarn":
        return float(theta), _yarn(params)
    scaling = {"rope_type": "llama3", "factor": params["factor"],
               "low_freq_factor": params["low_freq_factor"], "high_freq_factor": params["high_freq_factor"],
               "original_max_position_embeddings": params.get("original_max_position_embeddings",
                                                              raw.get("max_position_embeddings"))}
    return float(theta), scaling


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn(params: dict) -> dict:
    """YaRN as DeepSeek-V2 (and transformers) computes it: the frequencies in model.py; here the
    two scalars. cos/sin are multiplied by `attention_factor` = mscale(mscale) / mscale(mscale_all_dim)
    (1.0 in the released models) and the softmax scale by mscale(mscale_all_dim)**2 (`_deepseek_v2`)."""
    for key in ("factor", "original_max_position_embeddings"):
        if params.get(key) is None:
            raise ValueError(f"rope_scaling of type yarn needs the field {key}")
    if "attention_factor" in params or params.get("truncate", True) is not True:
        raise ValueError("unsupported yarn fields attention_factor / truncate=False (DeepSeek-V2 uses neither)")
    factor, m, m_all = float(params["factor"]), params.get("mscale"), params.get("mscale_all_dim")
    # transformers' rule: both mscales given -> their ratio; otherwise mscale(factor, 1)
    attention_factor = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all) if m and m_all else _yarn_mscale(factor)
    return {"rope_type": "yarn", "factor": factor, "beta_fast": params.get("beta_fast") or 32,
            "beta_slow": params.get("beta_slow") or 1, "mscale_all_dim": m_all or 0.0,
            "original_max_position_embeddings": params["original_max_position_embeddings"],
            "attention_factor": attention_factor}


def _deepseek_v2(c: ModelConfig, raw: dict) -> None:
    """MLA and MoE fields of a DeepSeek-V2 config.json; the variants we do not implement are refused."""
    required = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                "num_experts_per_tok", "moe_intermediate_size")
    missing = [k for k in required if not raw.get(k)]
    if missing:
        raise ValueError(f"deepseek_v2 config.json lacks (or zeroes) the field(s) {missing}")
    for k in required:
        setattr(c, k, int(raw[k]))
    c.q_lora_rank = raw.get("q_lora_rank") or None
    c.n_shared_experts = raw.get("n_shared_experts") or 0
    c.topk_method = raw.get("topk_method") or "greedy"
    c.n_group, c.topk_group = raw.get("n_group") or 1, raw.get("topk_group") or 1
    c.routed_scaling_factor = float(raw.get("routed_scaling_factor", 1.0))
    c.first_k_dense_replace = raw.get("first_k_dense_replace") or 0
    c.qkv_bias = c.o_bias = bool(raw.get("attention_bias", False))  # q_a_proj, kv_a_proj_with_mqa, o_proj
    c.mlp_bias = bool(raw.get("mlp_bias", False))
    c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim  # MLA has no KV heads: num_key_value_heads is unused
    c.num_key_value_heads = c.num_attention_heads
    c.attn_scale = c.head_dim**-0.5
    if c.rope_scaling is not None and c.rope_scaling["mscale_all_dim"]:
        c.attn_scale *= _yarn_mscale(c.rope_scaling["factor"], c.rope_scaling["mscale_all_dim"]) ** 2
    if c.topk_method not in TOPK_METHODS:
        raise ValueError(f"unsupported topk_method {c.topk_method!r}; minigrm supports {TOPK_METHODS}")
    if c.topk_method == "group_limited_greedy" and (c.n_routed_experts % c.n_group or c.topk_group > c.n_group):
        raise ValueError(f"n_group={c.n_group} must divide n_routed_experts={c.n_routed_experts} "
                         f"and be >= topk_group={c.topk_group}")
    if raw.get("scoring_func", "softmax") != "softmax":
        raise ValueError(f"unsupported scoring_func {raw['scoring_func']!r}; minigrm supports softmax")
    if raw.get("norm_topk_prob"):  # transformers ignores it; every released DeepSeek-V2 sets it false
        raise ValueError("unsupported field norm_topk_prob=True (minigrm uses the unnormalised top-k softmax)")
    if raw.get("moe_layer_freq", 1) != 1:
        raise ValueError(f"unsupported field moe_layer_freq={raw['moe_layer_freq']} (only 1: every layer "
                         "from first_k_dense_replace on is MoE)")


def _family_switches(c: ModelConfig, raw: dict) -> None:
    n = c.num_hidden_layers
    if c.model_type == "llama":
        c.qkv_bias = c.o_bias = bool(raw.get("attention_bias", False))
        c.mlp_bias = bool(raw.get("mlp_bias", False))
    elif c.model_type == "qwen2":
        c.qkv_bias = True  # hard-wired in Qwen2, whatever attention_bias says
    elif c.model_type == "qwen3":
        c.qkv_bias = c.o_bias = bool(raw.get("attention_bias", False))
        c.qk_norm = True
    elif c.model_type == "gemma2":
        c.norm_offset, c.scale_embeddings, c.sandwich_norms = 1.0, True, True
        c.attn_scale = raw.get("query_pre_attn_scalar", 256) ** -0.5
        c.attn_logit_softcapping = raw.get("attn_logit_softcapping", 50.0)
        c.final_logit_softcapping = raw.get("final_logit_softcapping", 30.0)
        c.sliding_window = raw.get("sliding_window", 4096)
        c.qkv_bias = c.o_bias = bool(raw.get("attention_bias", False))
        if raw.get("use_bidirectional_attention"):
            raise ValueError("unsupported field use_bidirectional_attention=True (minigrm is causal only)")
    if c.model_type in ("qwen2", "qwen3"):
        # Qwen's sliding window (off in every released model) covers layers >= max_window_layers.
        if raw.get("use_sliding_window"):
            c.sliding_window = raw.get("sliding_window", 4096)
            start = raw.get("max_window_layers", n)
            c.layer_types = [SLIDING if i >= start else FULL for i in range(n)]
    layer_types = raw.get("layer_types")
    if layer_types and c.sliding_window is not None:
        c.layer_types = list(layer_types)
    elif not c.layer_types:
        # Gemma-2 alternates sliding (even layers) and global (odd layers) attention.
        c.layer_types = [SLIDING if c.model_type == "gemma2" and i % 2 == 0 else FULL for i in range(n)]
    bad = set(c.layer_types) - {FULL, SLIDING}
    if bad or len(c.layer_types) != n:
        raise ValueError(f"unsupported layer_types {sorted(bad) or c.layer_types}")


def _num_labels(raw: dict) -> int:
    archs = raw.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        return 0
    if "num_labels" in raw:
        return int(raw["num_labels"])
    return len(raw.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"})  # transformers' default is 2
