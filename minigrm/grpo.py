"""GRPO: group-relative advantages and the clipped policy loss with a KL penalty (GRM_SPEC §5).

Original GRPO (Shao et al. 2024, DeepSeekMath), as used by DeepSeek-GRM's rule-based online RL.
For each prompt q, sample a group of G outputs o_1..o_G with rewards r̂_i ∈ {+1, -1} (Eq. 11);

    Â_i = (r̂_i - mean(r̂)) / std(r̂)                      for every token of o_i
    J(θ) = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ_it Â_i, clip(ρ_it, 1-ε, 1+ε) Â_i) - β KL_it ]
    ρ_it = π_θ(o_it | q, o_i,<t) / π_old(o_it | q, o_i,<t)
    KL_it = π_ref/π_θ - log(π_ref/π_θ) - 1                 (the k3 estimator, always >= 0)

Contract:
    adv, frac_zero_std = group_advantages(rewards (num_groups * G,), G)   groups are contiguous
    loss, stats = grpo_loss(logp, old_logp, ref_logp (B, T), advantages (B,), mask (B, T))
    grpo_loss_reference(...)   the same, as a per-sequence, per-token Python loop (slow twin)

loss = -J averaged over every output of the batch (B = num_groups * G), i.e. the 1/G Σ_i of
the formula taken over all groups at once. The log-prob tensors are per output token, e.g.
`logprob.sequence_logprobs(...)`, with `mask` = that call's `loss_mask[:, 1:]`.

Open choices (GRM_SPEC marks them open; defaults here are the conventional ones):
  - std is the unbiased *sample* std (divide by G - 1), as torch.std and TRL's GRPOTrainer
    use; DeepSeekMath says only "the standard deviation of the group". With ±1 rewards and
    G = 4 a 1-vs-3 group gets Â = ±1.5 / ∓0.5 (the population std would give ±1.73 / ∓0.58).
  - eps is added to the std; a group whose rewards are all equal has Â = 0 exactly (it gives
    no policy gradient, only the KL term), and its share is logged as frac_zero_std.
  - ε = 0.2, β = 0.08 (the paper's 27B value), KL = k3, computed in fp32 per token.
  - An output with no tokens (|o_i| = 0) contributes 0 instead of dividing by zero.
"""
import torch


def group_advantages(rewards: torch.Tensor, G: int, eps: float = 1e-6) -> tuple[torch.Tensor, float]:
    """(num_groups * G,) rewards, outputs of one prompt adjacent -> ((num_groups * G,) fp32
    advantages, fraction of groups whose rewards are all equal)."""
    assert rewards.ndim == 1 and rewards.numel() % G == 0, (rewards.shape, G)
    r = rewards.float().view(-1, G)  # (num_groups, G)
    centred = r - r.mean(dim=1, keepdim=True)
    std = (centred.square().sum(dim=1, keepdim=True) / max(G - 1, 1)).sqrt()  # sample std
    zero_std = (r == r[:, :1]).all(dim=1, keepdim=True)  # exact test: no rounding noise
    adv = torch.where(zero_std, torch.zeros_like(r), centred / (std + eps))
    return adv.view(-1), zero_std.float().mean().item()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor,
              advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2,
              beta: float = 0.08) -> tuple[torch.Tensor, dict]:
    """Vectorised -J(θ); all (B, T) except advantages (B,). Gradients flow only into logp.

    stats: kl (mean k3 per output token), clip_frac (share of tokens where the clipped term is
    the strict minimum, so the token gives no ratio gradient), ratio (mean ρ), length (mean |o_i|).
    """
    mask = mask.float()  # (B, T)
    logp, old_logp, ref_logp = logp.float(), old_logp.float().detach(), ref_logp.float().detach()
    adv = advantages.float().detach()[:, None]  # (B, 1)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    surrogate = torch.minimum(unclipped, clipped)
    log_ref_ratio = ref_logp - logp  # log(π_ref / π_θ)
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # (B, T), k3 >= 0
    per_token = surrogate - beta * kl
    lengths = mask.sum(dim=1)  # (B,)
    per_output = (per_token * mask).sum(dim=1) / lengths.clamp(min=1)  # (B,): 1/|o_i| Σ_t
    loss = -per_output.mean()

    with torch.no_grad():
        n_tok = mask.sum().clamp(min=1)
        stats = torch.stack([(kl * mask).sum() / n_tok,
                             ((clipped < unclipped).float() * mask).sum() / n_tok,
                             (ratio * mask).sum() / n_tok,
                             lengths.mean()]).tolist()  # one device sync for all four
    return loss, dict(zip(("kl", "clip_frac", "ratio", "length"), stats))


def grpo_loss_reference(logp, old_logp, ref_logp, advantages, mask, clip_eps: float = 0.2,
                        beta: float = 0.08) -> torch.Tensor:
    """The slow twin of grpo_loss (loss only): the paper's formula, one output and one token
    at a time, in Python."""
    B, T = logp.shape
    total = logp.new_zeros((), dtype=torch.float32)
    for i in range(B):
        a = float(advantages[i])
        tokens = [t for t in range(T) if mask[i, t]]
        seq = logp.new_zeros((), dtype=torch.float32)
        for t in tokens:
            rho = torch.exp(logp[i, t].float() - float(old_logp[i, t]))
            clipped_rho = torch.clamp(rho, 1 - clip_eps, 1 + clip_eps)
            surrogate = torch.min(rho * a, clipped_rho * a)
            q = float(ref_logp[i, t]) - logp[i, t].float()
            kl = torch.exp(q) - q - 1
            seq = seq + surrogate - beta * kl
        if tokens:
            total = total + seq / len(tokens)
    return -total / B
