"""Throughput of a training step: tokens per second, and on CUDA the model FLOPs utilisation (MFU).

    mfu(flops, seconds, device) -> fraction of the GPU's dense bf16 peak, or None off CUDA
    train_flops(model, tokens, grad=True) -> 6 N T for a forward + backward, 2 N T for a forward

Model FLOPs follow the usual accounting (Kaplan et al. 2020; PaLM's MFU): 2 FLOPs per parameter
per token for a forward pass and 4 more for the backward, with N the parameters a token passes
through (all of a dense model; for an MoE only the active experts, which this counts by
`active_params`). Attention's quadratic term is left out (small next to 6N at GRM lengths; the
figure is then a slight underestimate). Peaks are the vendors' dense bf16 numbers.
"""
import torch

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def peak_flops(device) -> float | None:
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def active_params(model) -> int:
    """Parameters one token passes through: routed experts count k / n_routed of their weights."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    n_routed, k = getattr(cfg, "n_routed_experts", 0) or 0, getattr(cfg, "num_experts_per_tok", 0) or 0
    if n_routed and k:
        routed = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
        total -= routed - routed * k // n_routed
    return total


def train_flops(model, tokens: float, grad: bool = True) -> float:
    return (6 if grad else 2) * active_params(model) * tokens


def mfu(flops: float, seconds: float, device) -> float | None:
    peak = peak_flops(device)
    return None if peak is None or seconds <= 0 else flops / seconds / peak
