"""AdamW, its learning-rate schedule and gradient clipping, shared by RFT and GRPO training.

Contract:
    opt = make_optimizer(model, lr, weight_decay)   torch.optim.AdamW, two parameter groups
    lr = lr_at(step, base_lr, warmup_steps, total_steps)   pure function of the step
    set_lr(opt, lr)                                  write it into every group
    norm = clip_grad_norm(model, max_norm)           the pre-clip global L2 norm, as a float

The paper (GRM_SPEC §4, §5) gives only the peak learning rates (5e-6 for RFT, 4e-7 for GRPO)
and the step counts (900 each); the optimizer, betas, warmup and decay shape are not stated.
Deviations / open choices, all arguments with conventional defaults:
  - AdamW with betas (0.9, 0.95) and eps 1e-8, the usual LLM fine-tuning setting.
  - Weight decay only on weights with >= 2 dims (matrices and embeddings); norms and biases
    are never decayed (decaying a Gemma `(1 + w)` norm weight would pull it towards scale 1).
  - Linear warmup, then cosine decay down to `min_lr_ratio * base_lr` at `total_steps`.
"""
import math

import torch
import torch.nn as nn


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    # the fused kernel (one launch for all tensors) exists only for CUDA tensors
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup: steps 0..warmup_steps-1 rise linearly to base_lr, (step + 1) / warmup_steps, so the
    first step already moves the weights. Then a half cosine from base_lr at step warmup_steps
    to min_lr_ratio * base_lr at step total_steps, and flat after it.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    min_lr = min_lr_ratio * base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to max_norm in place; return the norm before clipping, as a
    float (also under FSDP2, whose gradients are DTensors: the norm is reduced over the shards)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
