"""Machinery shared by train_rft.py and train_rl.py around the forward and the loop: the
log-prob forward that DDP / FSDP2 wrap, gradient-sync control, metric reduction, Ctrl-C.
Checkpoints and resume are resume.py's.

Contract:
    policy = LogprobForward(model)            policy(ids (B, T), mask (B, T)) -> (B, T - 1) fp32
                                              policy(ids, mask, prompt_len=P): rows = one prompt's
                                              G completions, the prompt computed once (shared_prefix.py)
    policy = wrap(policy, d, fsdp=False)      DDP when world > 1, FSDP2 with fsdp, else itself
    with full_weights(policy): engine.generate(...)   FSDP2: every rank holds full weights
    with grad_sync(policy, last_micro_batch): loss.backward()
    means = reduce_metrics(d, {"name": (sum, count)})  sums and counts added over ranks
    with interrupt_guard() as stop: ... if stop_requested(d, stop): save and leave  (SIGINT, SIGTERM)

Why a LogprobForward module: DDP and FSDP2 do their work in hooks around a wrapped module's
`forward` (DDP prepares the gradient all-reduce, FSDP2 all-gathers and frees shards), so
training must call the wrapper. CausalLM.forward would return (B, T, V) logits; this forward
returns only the targets' log-probs: `logprob.sequence_logprobs` with the decoder under bf16
autocast on CUDA (fp32 master weights). The sampling Engine is given the bare model.

Deviation / open choice: FSDP2 rollouts unshard the whole model first, so during sampling every
rank holds the full weights (plus its KV cache); the layers' hooks find them unsharded and
gather nothing, which is what lets ranks run different numbers of engine steps.
"""
import signal
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn

from .logprob import sequence_logprobs

class LogprobForward(nn.Module):
    """The module DDP / FSDP2 wrap: forward(ids, loss_mask) = sequence_logprobs(lm, ids, loss_mask)
    with the decoder under bf16 autocast on CUDA."""

    def __init__(self, lm, chunk_size: int = 1024):
        super().__init__()
        self.lm, self.chunk_size = lm, chunk_size

    def forward(self, input_ids, loss_mask, prompt_len: int | None = None):
        return sequence_logprobs(self.lm, input_ids, loss_mask, self.chunk_size, prompt_len=prompt_len,
                                 mixed_precision=True)


def is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(module, FSDPModule)


def wrap(policy: LogprobForward, d, fsdp: bool = False, trainable: bool = True):
    """DDP (world > 1) or FSDP2 (`fsdp`: each decoder layer, then the root) of a LogprobForward
    or of a bare CausalLM (the meta RM's scalar head needs no vocabulary). A frozen model
    (`trainable=False`, the GRPO reference) is sharded under FSDP2 and left alone otherwise."""
    if fsdp and d.world > 1:
        from torch.distributed.fsdp import fully_shard
        lm = policy.lm if isinstance(policy, LogprobForward) else policy  # or a bare (classifier) CausalLM
        for layer in lm.model.layers:
            fully_shard(layer)
        fully_shard(policy)
        ids = torch.zeros(1, 2, dtype=torch.long, device=d.device)
        with torch.no_grad():  # the first forward through the root fixes FSDP2's root (lazy init)
            policy(ids, torch.ones_like(ids, dtype=torch.bool)) if lm is not policy else policy(ids)
        policy.reshard()  # the root keeps its weights gathered after a forward: the optimizer needs shards
        return policy
    if d.world > 1 and trainable:
        ids = [d.device.index] if d.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(policy, device_ids=ids)
    return policy


@contextmanager
def full_weights(policy):
    """FSDP2: all-gather every shard for a rollout and keep it (no resharding after each layer's
    forward); reshard afterwards. Each rank then holds the full weights. No-op otherwise."""
    if not is_fsdp(policy):
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    mods = [m for m in policy.modules() if isinstance(m, FSDPModule)]
    policy.set_reshard_after_forward(False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
        policy.set_reshard_after_forward(True)  # FSDP2's defaults: layers reshard, the root keeps
        policy.set_reshard_after_forward(False, recurse=False)


def grad_sync(policy, enabled: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
    if is_fsdp(policy):
        policy.set_requires_gradient_sync(enabled)
        return nullcontext()
    if isinstance(policy, nn.parallel.DistributedDataParallel) and not enabled:
        return policy.no_sync()
    return nullcontext()


def reduce_metrics(d, pairs: dict[str, tuple[float, float]]) -> dict[str, float]:
    """{name: (sum, count)} on each rank -> {name: sum over ranks / count over ranks}."""
    names = list(pairs)
    flat = d.all_sum([v for n in names for v in pairs[n]])
    return {n: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else 0.0 for i, n in enumerate(names)}


@contextmanager
def interrupt_guard():
    """Turn the first Ctrl-C (SIGINT) or SIGTERM (a scheduler's stop, `kill`) into a request
    (`stop["requested"]`, `stop["signal"]`) that the loop honours at the end of a step, so a
    checkpoint is never taken in the middle of an optimizer update. A second one interrupts at once.
    The script then exits with 128 + the signal number (130 / 143), as a shell expects."""
    stop = {"requested": False, "signal": None}

    def handler(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"], stop["signal"] = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: finishing this step, then saving a checkpoint (send it again to abort)", flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def exit_code(stop) -> int:
    """0 for a finished run; 128 + signal number for one stopped by SIGINT / SIGTERM."""
    return 128 + int(stop["signal"]) if stop["requested"] and stop["signal"] else 0


def stop_requested(d, stop) -> bool:
    """True on every rank as soon as any rank was interrupted (they must save together)."""
    return d.all_sum([float(stop["requested"])])[0] > 0
