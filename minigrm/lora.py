"""LoRA (Hu et al. 2021, arXiv 2106.09685) on the decoder's Linear layers, chosen by their HF names.

A targeted `nn.Linear` (W: (out, in), bias b) becomes a `LoRALinear`, which keeps W and b as they
were (same Parameters, frozen) and adds two trainable matrices:

    y = x W^T + b + scaling * dropout(x) A^T B^T        A: (r, in), B: (out, r)
    scaling = alpha / r           (alpha / sqrt(r) for rsLoRA, read from PEFT configs only)

A is drawn kaiming-uniform (a = sqrt(5)), B is zero, as PEFT does: the adapted model starts
exactly equal to the base. Module names are PEFT's saved names: `...q_proj.weight` is the base
weight, `...q_proj.lora_A.weight` / `...q_proj.lora_B.weight` the adapter (adapter.py reads and
writes PEFT's files with them). Everything else is frozen, except `modules_to_save` (the meta
RM's `score` head), which trains in full.

Contract:
    add_lora(model, r=16, alpha=32, dropout=0.0, targets=DEFAULT_TARGETS, experts=False,
             modules_to_save=None, seed=0, dtype=torch.float32) -> model     (in place)
    merge(model) / unmerge(model)   fold scaling * B A into W in place / take it out again
    with merged(model): engine.generate(...)    merged for the duration, W restored exactly
    with disabled(model): ref = policy(ids, mask)   the base model (GRPO's reference, no copy)
    trainable_state_dict(module) -> {name: full tensor}; load_trainable_state_dict(model, state)
    full_state_dict(module) -> every tensor (FSDP2: gathered), e.g. for adapter.save_merged

Sampling "never stale": the Engine runs the model's own modules, so it samples from W + BA with
or without merging (LoRA-aware matmuls; MLA's latent decode uses `effective_weight`). `merged`
makes each projection one matmul again: on entry W <- W + scaling * B A (computed in fp32, one
rounding), on exit W is copied back from a backup held on `backup_device` (default CPU, so
device memory does not grow): bit-exact. `exact=False` subtracts instead (no backup; W comes
back within one rounding per element, and with bf16 weights those roundings accumulate over
hundreds of steps, hence not the default). `unmerge` subtracts, like PEFT's. An Engine with
cuda_graphs replays the path taken when it captured (at construction): build it and sample
either always inside `merged` or never, not both.

Choices: adapters are fp32 (`dtype`) even over bf16 base weights (they are the only master
weights AdamW updates); their input is cast to their dtype and the update back to the output's.
Dropout acts only in training mode *with grad enabled*: rollouts and the no-grad old/reference
log-probs of GRPO see the deterministic adapted model (PEFT's dropout also acts under no_grad).
A is initialised from a generator seeded by `seed` and the module's name, so every rank (DDP,
FSDP2) and every world size draws the same adapters. MoE routed experts are adapted only with
`experts=True` (transformers stores them fused, so PEFT cannot load such an adapter there).
"""
import math
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

# attention and MLP projections of every family (MLA's where present)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa",
                   "kv_b_proj", "gate_proj", "up_proj", "down_proj")
EXPERTS = r".*\.mlp\.experts(\..*)?"  # routed experts (moe.py): excluded unless experts=True


@dataclass
class LoraConfig:
    r: int
    alpha: float
    dropout: float = 0.0
    targets: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGETS))  # names, or a regex
    exclude: str | None = None  # regex of module names never adapted
    modules_to_save: list[str] = field(default_factory=list)
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def matches(self, name: str) -> bool:
        """PEFT's rule: a regex fully matches the module name, or a listed name ends it."""
        if self.exclude and re.fullmatch(self.exclude, name):
            return False
        if isinstance(self.targets, str):
            return re.fullmatch(self.targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in self.targets)


class LoRALinear(nn.Linear):
    """nn.Linear (the same weight and bias Parameters) plus scaling * B A; see the module doc."""

    def __init__(self, base: nn.Linear, r: int, scaling: float, dropout: float, dtype, generator):
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.scaling, self.dropout, self.merged, self.disabled = scaling, dropout, False, False
        kw = dict(bias=False, device=base.weight.device, dtype=dtype)
        self.lora_A = nn.Linear(self.in_features, r, **kw)  # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, **kw)  # (out, r)
        with torch.no_grad():  # PEFT's init: kaiming-uniform A, zero B
            a = torch.empty(self.lora_A.weight.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.zero_()

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged or self.disabled:
            return y
        h = x.to(self.lora_A.weight.dtype)
        h = F.dropout(h, self.dropout, training=self.training and torch.is_grad_enabled())
        return y + (self.lora_B(self.lora_A(h)) * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A, (out, in) in fp32."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def effective_weight(self) -> torch.Tensor:
        """The weight this layer applies, W + scaling * B A, in W's dtype (for code that reads the
        weight instead of calling the layer: MLA's absorbed decode)."""
        if self.merged or self.disabled:
            return self.weight
        return (self.weight.float() + self.delta_weight()).to(self.weight.dtype)

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.lora_A.out_features}, scaling={self.scaling}"


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def add_lora(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.0, targets=DEFAULT_TARGETS,
             experts: bool = False, modules_to_save=None, seed: int = 0, dtype=torch.float32,
             rslora: bool = False) -> nn.Module:
    """Freeze `model`, put an adapter on every Linear whose name matches `targets` (a list of
    names, or a regex fully matching the module name), unfreeze `modules_to_save` (default:
    ["score"] for a scalar-head model). -> the same model, with `model.lora_config` set."""
    if lora_layers(model):
        raise ValueError("the model already has LoRA adapters")
    if modules_to_save is None:
        modules_to_save = ["score"] if getattr(getattr(model, "config", None), "is_classifier", False) else []
    cfg = LoraConfig(r, alpha, dropout, targets if isinstance(targets, str) else list(targets),
                     None if experts else EXPERTS, list(modules_to_save), rslora)
    model.requires_grad_(False)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and n.startswith("model.layers.")]
    names = [n for n in linears if cfg.matches(n)]  # the decoder's layers only: never lm_head / score
    if cfg.exclude and not any(re.fullmatch(cfg.exclude, n) for n in linears):
        cfg.exclude = None  # nothing to exclude (no MoE): keep adapter_config.json plain
    if not names:
        raise ValueError(f"no Linear layer matches the LoRA targets {cfg.targets}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        setattr(parent, child, LoRALinear(getattr(parent, child), r, cfg.scaling, dropout, dtype, g))
    for name in cfg.modules_to_save:
        model.get_submodule(name).requires_grad_(True)
    if not isinstance(cfg.targets, str):  # keep the names that matched something (PEFT's target_modules)
        cfg.targets = sorted({t for t in cfg.targets if any(n == t or n.endswith("." + t) for n in names)})
    model.lora_config = cfg
    return model


@torch.no_grad()
def merge(model: nn.Module) -> None:
    """W <- W + scaling * B A for every adapter not yet merged (one rounding, from fp32)."""
    for _, m in lora_layers(model):
        if not m.merged:
            m.weight.copy_(m.weight.float() + m.delta_weight())
            m.merged = True


@torch.no_grad()
def unmerge(model: nn.Module) -> None:
    """W <- W - scaling * B A: the base weights again, within one rounding per element."""
    for _, m in lora_layers(model):
        if m.merged:
            m.weight.copy_(m.weight.float() - m.delta_weight())
            m.merged = False


@contextmanager
def merged(model: nn.Module, exact: bool = True, backup_device="cpu"):
    """Merge for the duration (e.g. a rollout); on exit restore W bit-exactly from a backup on
    `backup_device` (exact=True) or by subtraction (exact=False). Under FSDP2 enter it inside
    `training.full_weights(policy)`, which holds the unsharded weights it merges into."""
    layers = [m for _, m in lora_layers(model) if not m.merged]
    with torch.no_grad():
        backup = [m.weight.detach().to(backup_device, copy=True) for m in layers] if exact else None
    for m in layers:
        with torch.no_grad():
            m.weight.copy_(m.weight.float() + m.delta_weight())
        m.merged = True
    try:
        yield model
    finally:
        with torch.no_grad():
            for i, m in enumerate(layers):
                m.weight.copy_(backup[i] if exact else m.weight.float() - m.delta_weight())
                m.merged = False


@contextmanager
def disabled(model: nn.Module):
    """The base model for the duration (the adapters skipped, nothing copied): GRPO's reference
    log-probs when the reference is the base, without a second copy of the weights."""
    layers = [m for _, m in lora_layers(model)]
    if any(m.merged for m in layers):
        raise RuntimeError("lora.disabled: the adapters are merged into the weights (leave lora.merged first)")
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


def _is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return any(isinstance(m, FSDPModule) for m in module.modules())


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """{name: full CPU tensor} of the trainable parameters (adapters, modules_to_save), named as
    in the bare CausalLM (a LogprobForward's `lm.` prefix dropped). Under FSDP2 it is a
    collective (every rank must call it) that gathers the shards of those tensors only."""
    return _gather(module, trainable_only=True)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor, gathered the same way (for adapter.save_merged under FSDP2)."""
    return _gather(module, trainable_only=False)


def _gather(module, trainable_only: bool) -> dict[str, torch.Tensor]:
    if _is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        state = get_model_state_dict(module, options=opts)
        if trainable_only:  # a tied frozen head slips through ignore_frozen_params
            names = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
            state = {k: v for k, v in state.items() if k in names}
    else:
        module = getattr(module, "module", module)  # DDP
        names = {n for n, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
        state = {n: t.detach().to("cpu", copy=True) for n, t in module.state_dict().items()
                 if n in names or not trainable_only}
    return {k.removeprefix("lm."): v for k, v in state.items()}


@torch.no_grad()
def load_trainable_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a trainable_state_dict into the (bare, unwrapped) model; the key sets must be equal."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(f"trainable state does not match the model: missing {missing[:8]} "
                       f"({len(missing)} total), unexpected {unexpected[:8]} ({len(unexpected)} total)")
    for n, p in params.items():
        if p.shape != state[n].shape:
            raise ValueError(f"shape mismatch for {n}: state has {tuple(state[n].shape)}, model {tuple(p.shape)}")
        p.copy_(state[n])
