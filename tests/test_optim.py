"""AdamW parameter groups, the warmup + cosine schedule, and gradient clipping."""
import math

import pytest
import torch
import torch.nn as nn

from minigrm.optim import clip_grad_norm, lr_at, make_optimizer, set_lr


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4, bias=True)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: must appear once
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_decay_only_on_matrices():
    model = Tiny()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(model.embed.weight), id(model.proj.weight), id(model.proj.bias),
                   id(model.norm.weight), id(model.norm.bias)}  # tied once, frozen left out
    assert len(decay["params"]) == 2
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert not opt.defaults["fused"]  # CPU


def test_no_decay_group_is_not_decayed():
    model = Tiny()
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5)
    before_bias, before_w = model.proj.bias.detach().clone(), model.proj.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay can move a parameter
    assert torch.equal(model.proj.bias, before_bias)
    assert torch.allclose(model.proj.weight, before_w * (1 - 0.1 * 0.5))


def test_schedule_key_steps():
    base, warm, total = 1e-3, 10, 110
    assert lr_at(0, base, warm, total) == pytest.approx(base / warm)
    assert lr_at(4, base, warm, total) == pytest.approx(base * 5 / warm)
    assert lr_at(9, base, warm, total) == pytest.approx(base)
    assert lr_at(10, base, warm, total) == pytest.approx(base)
    assert lr_at(60, base, warm, total) == pytest.approx(0.55 * base)  # halfway: (base + min) / 2
    assert lr_at(110, base, warm, total) == pytest.approx(0.1 * base)
    assert lr_at(500, base, warm, total) == pytest.approx(0.1 * base)
    assert lr_at(35, base, warm, total, min_lr_ratio=0.0) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi / 4)))
    lrs = [lr_at(s, base, warm, total) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    assert lr_at(0, base, 0, 0) == base and lr_at(1, base, 0, 0) == pytest.approx(0.1 * base)  # no ZeroDivision


def test_set_lr_and_clip():
    model = Tiny()
    opt = make_optimizer(model, lr=1.0)
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for g in opt.param_groups)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0) if p.requires_grad else None
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    norm = clip_grad_norm(model, max_norm=1.0)
    assert isinstance(norm, float) and norm == pytest.approx(3.0 * n**0.5)
    after = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm()
    assert after.item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.gpu
def test_fused_on_cuda():
    opt = make_optimizer(Tiny().cuda(), lr=1e-3, weight_decay=0.1)
    assert opt.defaults["fused"]
