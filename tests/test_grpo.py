"""The vectorised GRPO loss equals the paper's formula as a loop; advantages, clipping, KL."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrm.grpo import group_advantages, grpo_loss, grpo_loss_reference


def batch(B=8, T=11, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    logp = (old + spread * torch.randn(B, T, generator=g)).requires_grad_()  # ratios both sides of the clip
    ref = old + spread * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0], lengths[1] = T, 0  # one full, one empty output
    mask = torch.arange(T)[None, :] < lengths[:, None]  # ragged right-padded masks
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("beta", [0.0, 0.08])
def test_vectorised_equals_reference(seed, beta):
    logp, old, ref, adv, mask = batch(seed=seed)
    loss, stats = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=beta)
    slow = grpo_loss_reference(logp, old, ref, adv, mask, clip_eps=0.2, beta=beta)
    torch.testing.assert_close(loss, slow, atol=1e-6, rtol=1e-5)
    (g,) = torch.autograd.grad(loss, logp)
    (g_slow,) = torch.autograd.grad(slow, logp)
    torch.testing.assert_close(g, g_slow, atol=1e-6, rtol=1e-5)
    assert 0 < stats["clip_frac"] < 1  # the inputs exercise both branches
    assert stats["length"] == pytest.approx(mask.sum(1).float().mean().item())
    assert (g[~mask] == 0).all()  # padding gets no gradient


def test_stats_values():
    logp, old, ref, adv, mask = batch(seed=3)
    _, stats = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2)
    m, lp = mask, logp.detach()
    ratio = (lp - old).exp()
    kl = (ref - lp).exp() - (ref - lp) - 1
    clipped = ((ratio > 1.2) & (adv[:, None] > 0)) | ((ratio < 0.8) & (adv[:, None] < 0))
    assert stats["ratio"] == pytest.approx(ratio[m].mean().item(), rel=1e-5)
    assert stats["kl"] == pytest.approx(kl[m].mean().item(), rel=1e-5)
    assert stats["clip_frac"] == pytest.approx(clipped[m].float().mean().item())


def test_kl_zero_when_policy_is_reference():
    logp, old, _, adv, mask = batch()
    _, stats = grpo_loss(logp, old, logp.detach(), adv, mask)
    assert stats["kl"] == 0.0


def test_beta_scales_the_kl_term():
    logp, old, ref, adv, mask = batch(seed=1)
    l0, _ = grpo_loss(logp, old, ref, adv, mask, beta=0.0)
    l1, _ = grpo_loss(logp, old, ref, adv, mask, beta=1.0)
    l3, stats = grpo_loss(logp, old, ref, adv, mask, beta=3.0)
    assert (l1 - l0).item() > 0  # k3 >= 0: the penalty only ever raises the loss
    torch.testing.assert_close(l3 - l0, 3 * (l1 - l0))


def test_group_advantages_sample_std():
    adv, frac = group_advantages(torch.tensor([1., -1., -1., -1., 1., 1., -1., -1.]), G=4)
    torch.testing.assert_close(adv[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[4:], torch.tensor([1., 1., -1., -1.]) / (4 / 3) ** 0.5, atol=1e-5, rtol=0)
    assert frac == 0.0
    for group in adv.view(2, 4):
        assert abs(group.mean()) < 1e-6 and group.std() == pytest.approx(1.0, abs=1e-5)


def test_zero_variance_groups_give_zero_advantage_and_no_nan():
    rewards = torch.tensor([1., 1., 1., 1., -1., -1., -1., -1., 0.1, 0.1, 0.1, 0.1, 1., -1., 1., 1.])
    adv, frac = group_advantages(rewards, G=4)
    assert (adv[:12] == 0).all() and (adv[12:] != 0).all()
    assert frac == 0.75
    logp, old, ref, _, mask = batch(B=16, seed=2)
    loss, stats = grpo_loss(logp, old, ref, adv, mask)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert all(v == v for v in stats.values())  # no NaN
    adv1, frac1 = group_advantages(torch.tensor([1., -1.]), G=1)  # a group of one: nothing to compare
    assert (adv1 == 0).all() and frac1 == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 1.0]), min_size=8, max_size=8))
def test_group_advantages_finite_and_centred(rewards):
    adv, _ = group_advantages(torch.tensor(rewards), G=4)
    assert torch.isfinite(adv).all()
    assert adv.view(2, 4).sum(1).abs().max() < 1e-5


def test_clipped_tokens_get_no_gradient():
    # one token per case; beta = 0 so only the surrogate speaks
    old = torch.zeros(6, 1)
    log_ratio = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.05, -0.05])[:, None]  # ρ = 1.65, 1.65, .61, .61, ~1, ~1
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    logp = log_ratio.clone().requires_grad_()
    loss, stats = grpo_loss(logp, old, old, adv, torch.ones(6, 1, dtype=torch.bool), clip_eps=0.2, beta=0.0)
    (g,) = torch.autograd.grad(loss, logp)
    g = g[:, 0]
    assert g[0] == 0 and g[2] == 0  # ρ > 1+ε with Â > 0, ρ < 1-ε with Â < 0: clipped
    assert (g[[1, 3, 4, 5]] != 0).all()  # the pessimistic bound keeps the unclipped term
    expected = -adv * log_ratio[:, 0].exp() / 6  # d(-ρÂ/B)/d logp = -ρÂ/B
    torch.testing.assert_close(g[[1, 3, 4, 5]], expected[[1, 3, 4, 5]])
    assert stats["clip_frac"] == pytest.approx(2 / 6)


def test_on_policy_gradient_is_the_policy_gradient():
    logp, _, _, adv, mask = batch(seed=5)
    old = logp.detach().clone()
    loss, stats = grpo_loss(logp, old, old, adv, mask, beta=0.08)  # KL gradient is 0 at ref = π
    (g,) = torch.autograd.grad(loss, logp)
    B = logp.shape[0]
    lengths = mask.sum(1, keepdim=True).clamp(min=1)
    expected = torch.where(mask, -adv[:, None] / lengths / B, torch.zeros(()))
    torch.testing.assert_close(g, expected)
    assert stats["ratio"] == pytest.approx(1.0) and stats["clip_frac"] == 0.0


def test_one_pass_old_logprobs_can_be_the_current_ones_detached():
    """train_rl.py with one pass per batch skips the old-policy forward: old = logp.detach().
    Same loss and gradient as old log-probs from a separate no-grad forward of the same weights."""
    torch.manual_seed(0)
    w = torch.randn(6, 9, requires_grad=True)
    feats, mask = torch.randn(4, 6), torch.rand(4, 9) > 0.2
    ref, adv = torch.randn(4, 9), torch.randn(4)
    logp = torch.log_softmax(feats @ w, dim=-1)  # stand-in for per-token log-probs (B, T)
    with torch.no_grad():
        separate = torch.log_softmax(feats @ w, dim=-1)
    a, _ = grpo_loss(logp, logp.detach(), ref, adv, mask, 0.2, 0.08)
    (ga,) = torch.autograd.grad(a, w, retain_graph=True)
    b, _ = grpo_loss(logp, separate, ref, adv, mask, 0.2, 0.08)
    (gb,) = torch.autograd.grad(b, w)
    assert torch.equal(a, b) and torch.equal(ga, gb)
