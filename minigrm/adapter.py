"""LoRA adapters in PEFT's format, and merged plain model folders.

An adapter folder is what `peft.PeftModel.save_pretrained` writes, so `peft` loads ours onto
the `transformers` base and minigrm loads adapters that `peft` trained:

    adapter_config.json         peft_type LORA, task_type CAUSAL_LM (or SEQ_CLS for the meta RM),
                                base_model_name_or_path, r, lora_alpha, lora_dropout,
                                target_modules, exclude_modules, bias "none", modules_to_save
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight  (r, in)
                                base_model.model.<module>.lora_B.weight  (out, r)
                                base_model.model.<module>.weight         each modules_to_save
                                                                          parameter (score.weight)

<module> is the HF module name (model.layers.0.self_attn.q_proj), which is also minigrm's, so
reading and writing are a prefix away from `lora.trainable_state_dict`.

Contract:
    save_adapter(model, folder, base_model_name_or_path, state_dict=None) -> folder
    load_adapter(model, folder) -> model           adds the adapters (lora.add_lora) if absent
    load_model(base, adapter=None, merge=False, dtype, device) -> CausalLM
        (also `minigrm.load_model(base, adapter=..., merge=...)`). A SEQ_CLS adapter over a
        causal-LM base gets transformers' scalar-head model first (meta_rm.classifier_from), its
        `score` then comes from the adapter. merge=True returns a plain model (nn.Linear layers).
    merge_state_dict(state, scaling) -> plain HF state dict with B A folded in
    save_merged(model, folder, tokenizer_dir=None, state_dict=None) -> folder   (an HF folder)

DeepSeek-V2 in PEFT: transformers 5 stores routed experts fused (3-D parameters), and PEFT 0.21
turns gate_proj/up_proj/down_proj targets on such a model into expert *parameter* targets, so
it drops the dense and shared-expert MLP adapters minigrm writes; attention adapters (q_proj,
kv_a_proj_with_mqa, kv_b_proj, o_proj) load there as they do in minigrm.

Refused with an error naming the field: PEFT options that change the math and that we do not
implement (DoRA, per-layer rank/alpha patterns, LoRA biases, fan_in_fan_out, layer subsets,
target_parameters, trainable tokens). use_rslora is read (scaling alpha / sqrt(r)).
"""
import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from . import checkpoint, lora

PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
UNSUPPORTED = ("use_dora", "rank_pattern", "alpha_pattern", "lora_bias", "fan_in_fan_out", "layers_to_transform",
               "layers_pattern", "target_parameters", "trainable_token_indices", "alora_invocation_tokens",
               "use_qalora", "layer_replication")
LORA_KEY = re.compile(r"(.+)\.lora_([AB])\.weight")


def save_adapter(model: nn.Module, folder, base_model_name_or_path=None, state_dict=None) -> Path:
    """Write PEFT's adapter folder for a model with adapters (lora.add_lora). `state_dict`: a
    lora.trainable_state_dict gathered beforehand (FSDP2: every rank gathers, rank 0 saves)."""
    cfg = model.lora_config
    state = lora.trainable_state_dict(model) if state_dict is None else state_dict
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    is_classifier = getattr(model.config, "is_classifier", False)
    config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if is_classifier else "CAUSAL_LM",
        "base_model_name_or_path": None if base_model_name_or_path is None else str(base_model_name_or_path),
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "use_rslora": cfg.rslora,
        "target_modules": cfg.targets, "exclude_modules": cfg.exclude, "bias": "none",
        "modules_to_save": cfg.modules_to_save or None, "init_lora_weights": True, "inference_mode": True,
        "fan_in_fan_out": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    return folder


def read_config(folder) -> dict:
    """adapter_config.json, checked: a LoRA adapter whose options we implement."""
    file = Path(folder) / CONFIG
    if not file.exists():
        raise FileNotFoundError(f"no {CONFIG} in {folder}: expected a PEFT adapter folder")
    cfg = json.loads(file.read_text())
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type {cfg.get('peft_type')!r}; minigrm loads LORA adapters only")
    if cfg.get("task_type") not in ("CAUSAL_LM", "SEQ_CLS", None):
        raise ValueError(f"{file}: unsupported task_type {cfg['task_type']!r} (CAUSAL_LM or SEQ_CLS)")
    for key in UNSUPPORTED:
        if cfg.get(key) not in (None, False, {}, [], ""):
            raise ValueError(f"{file}: unsupported field {key}={cfg[key]!r}")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{file}: unsupported field bias={cfg['bias']!r} (only 'none')")
    return cfg


def _exclude_regex(exclude) -> str | None:
    """PEFT's exclude_modules, a regex or a list of names, as one regex."""
    if not exclude or isinstance(exclude, str):
        return exclude or None
    return "|".join(rf"(.*\.)?{re.escape(name)}" for name in exclude)


def load_adapter(model: nn.Module, folder, dtype=torch.float32) -> nn.Module:
    """Load a PEFT LoRA adapter into `model`, first adding the adapters its config describes when
    the model has none (routed experts only when the file holds theirs); every adapter tensor
    must find its parameter and vice versa."""
    cfg = read_config(folder)
    with safe_open(Path(folder) / WEIGHTS, framework="pt", device="cpu") as f:
        state = {}
        for key in f.keys():
            if not key.startswith(PREFIX):
                raise KeyError(f"{folder}/{WEIGHTS}: key {key!r} lacks PEFT's prefix {PREFIX!r}")
            state[key[len(PREFIX):]] = f.get_tensor(key)
    if not lora.lora_layers(model):
        targets = cfg["target_modules"]
        experts = any(re.fullmatch(lora.EXPERTS, k) for k in state if LORA_KEY.fullmatch(k))
        lora.add_lora(model, r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout") or 0.0,
                      targets=targets if isinstance(targets, str) else list(targets), experts=experts,
                      modules_to_save=[m for m in cfg.get("modules_to_save") or [] if _has_module(model, m)],
                      dtype=dtype, rslora=bool(cfg.get("use_rslora")))
        extra = _exclude_regex(cfg.get("exclude_modules"))
        if extra:  # PEFT's exclusions on top of ours
            own = model.lora_config.exclude
            model.lora_config.exclude = extra if own is None else f"(?:{own})|(?:{extra})"
            _drop_excluded(model)
    lora.load_trainable_state_dict(model, state)
    return model


def _has_module(model, name) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _drop_excluded(model):
    """Put back plain Linears where the adapter's exclude_modules says so."""
    for name, m in lora.lora_layers(model):
        if re.fullmatch(model.lora_config.exclude, name):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _plain(m))


def _plain(m: "lora.LoRALinear") -> nn.Linear:
    """An nn.Linear holding the LoRALinear's base weight and bias (the same Parameters)."""
    with torch.device("meta"):
        out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    out.weight, out.bias = m.weight, m.bias
    return out


def load_model(base, adapter=None, merge: bool = False, dtype=torch.float32, device="cpu"):
    """An HF folder plus an optional PEFT adapter folder -> CausalLM (see the module doc)."""
    if adapter is None:
        return checkpoint.load_model(base, dtype=dtype, device=device)
    cfg = read_config(adapter)
    from .config import ModelConfig
    if cfg.get("task_type") == "SEQ_CLS" and not ModelConfig.from_pretrained(base).is_classifier:
        from .meta_rm import classifier_from
        model = classifier_from(base, dtype, device, seed=0).eval()  # its random score is replaced below
    else:
        model = checkpoint.load_model(base, dtype=dtype, device=device)
    load_adapter(model, adapter)
    if not merge:
        return model
    lora.merge(model)
    for name, m in lora.lora_layers(model):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _plain(m))
    del model.lora_config
    return model.requires_grad_(True)  # as checkpoint.load_model leaves a plain model


def merge_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A state dict with adapters (module.lora_A.weight, module.lora_B.weight, module.weight
    unmerged) -> the plain one: module.weight + scaling * B A in the weight's dtype, no lora keys."""
    out = {k: v for k, v in state.items() if not LORA_KEY.fullmatch(k)}
    for k in state:
        m = LORA_KEY.fullmatch(k)
        if m and m.group(2) == "A":
            w, a, b = state[m.group(1) + ".weight"], state[k], state[m.group(1) + ".lora_B.weight"]
            out[m.group(1) + ".weight"] = (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
    return out


def save_merged(model: nn.Module, folder, tokenizer_dir=None, state_dict=None) -> Path:
    """Write a plain HF folder (transformers and minigrm load it) with the adapters folded in.
    `state_dict`: lora.full_state_dict(policy) gathered beforehand (FSDP2), else model.state_dict()."""
    if any(m.merged for _, m in lora.lora_layers(model)):
        raise RuntimeError("save_merged: the model is merged already (call it outside lora.merged)")
    state = model.state_dict() if state_dict is None else state_dict
    plain = merge_state_dict({k: v.detach() for k, v in state.items()}, model.lora_config.scaling)
    return checkpoint.save_model(checkpoint.StateOnly(model.config, plain), folder, tokenizer_dir)


def for_training(base, resume=None, lora_rank: int = 0, alpha: float = 32, dropout: float = 0.0, targets=None,
                 seed: int = 0, dtype=torch.float32, device="cpu", build=None):
    """The model a training run starts from: `build(base)` (default: the HF folder) fresh, or the
    `resume` checkpoint; with lora_rank > 0 only adapters train (a fresh run adds them, a resumed
    run's checkpoint IS its PEFT adapter over `base`). Call before wrapping in DDP / FSDP2."""
    if lora_rank <= 0:
        return checkpoint.load_model(resume, dtype=dtype, device=device) if resume else \
            (build(base) if build else checkpoint.load_model(base, dtype=dtype, device=device))
    if resume:
        model = load_model(base, adapter=resume, dtype=dtype, device=device)
        for _, m in lora.lora_layers(model):  # load_adapter leaves adapters trainable, the base frozen
            m.lora_A.requires_grad_(True), m.lora_B.requires_grad_(True)
        return model
    model = build(base) if build else checkpoint.load_model(base, dtype=dtype, device=device)
    return lora.add_lora(model, lora_rank, alpha, dropout, targets or lora.DEFAULT_TARGETS, seed=seed)


def write_merged(policy, model, folder, tokenizer_dir, d) -> Path | None:
    """--merge at the end of a LoRA run: a plain HF folder with the adapters folded in (every rank
    calls it: under FSDP2 the full weights are gathered first). -> the folder on rank 0."""
    state = lora.full_state_dict(policy) if lora._is_fsdp(policy) else None
    return save_merged(model, folder, tokenizer_dir, state) if d.main else None
