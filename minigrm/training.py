"""Machinery shared by train_rft.py and train_rl.py: the log-prob forward that DDP / FSDP2 wrap,
bf16 autocast, gradient-sync control, metric reduction, Ctrl-C and atomic, resumable checkpoints.

Contract:
    policy = LogprobForward(model)            policy(ids (B, T), mask (B, T)) -> (B, T - 1) fp32
                                              policy(ids, mask, prompt_len=P): rows = one prompt's
                                              G completions, the prompt computed once (shared_prefix.py)
    policy = wrap(policy, d, fsdp=False)      DDP when world > 1, FSDP2 with fsdp, else itself
    with full_weights(policy): engine.generate(...)   FSDP2: every rank holds full weights
    with grad_sync(policy, last_micro_batch): loss.backward()
    means = reduce_metrics(d, {"name": (sum, count)})  sums and counts added over ranks
    with interrupt_guard() as stop: ... if stop_requested(d, stop): save and leave  (SIGINT, SIGTERM)
    checkpoint_step(out, step, total, model, policy, optimizer, d, stop, save_every=, keep_last=, ...)
    save_checkpoint(out, step, model, policy, optimizer, d, tokenizer_dir, extra) -> folder
    state = load_checkpoint(folder, policy, optimizer, d)    -> {"step", "extra", ...}
    latest_checkpoint(out) -> folder or None

Why a LogprobForward module: DDP and FSDP2 do their work in hooks around a wrapped module's
`forward` (DDP prepares the gradient all-reduce, FSDP2 all-gathers and frees shards), so
training must call the wrapper. CausalLM.forward would return (B, T, V) logits; this forward
returns only the targets' log-probs (logprob.py's chunked projection), the same numbers as
`logprob.sequence_logprobs` (pinned by a test). The sampling Engine is given the bare model.

Checkpoints: `<out>/checkpoint-<step>/` is an HF folder (config.json, safetensors, tokenizer
files: transformers, minigrm and infer_scale.py load it) plus `trainer_state.json` (step,
world size, the script's extra state), `optimizer.pt` and one `rng-rank<r>.pt` per rank, both
tensors only and read with weights_only=True (a crafted file cannot run code). It is written
in `<out>/.tmp-checkpoint-<step>` and renamed when complete, then `<out>/latest` (a text file
naming it) is replaced atomically: a crash never leaves a half-written checkpoint that
looks complete. Under FSDP2 the model and optimizer are gathered to full (unsharded) state
dicts on rank 0, so a run can resume on another world size. A model with LoRA adapters
(lora.py) is saved as its adapter instead, in PEFT's format (adapter.py: adapter_config.json
naming `tokenizer_dir` as the base, adapter_model.safetensors), and the optimizer state is
that of the adapters only; resume with `load_model(base, adapter=folder)` before wrapping.

Deviations / open choices:
  - autocast runs the decoder in bf16 on CUDA with fp32 master weights; the vocabulary
    projection then uses a bf16 copy of the lm_head weight (its gradient flows back to fp32).
  - FSDP2 rollouts unshard the whole model first, so during sampling every rank holds the
    full weights (plus its KV cache); the layers' hooks find them unsharded and gather nothing,
    which is what lets ranks run different numbers of engine steps.
"""
import json
import os
import random
import re
import shutil
import signal
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from . import lora
from .adapter import save_adapter
from .checkpoint import copy_tokenizer, save_model
from .data import write_json
from .logprob import decoder_hidden, token_logprobs

LATEST = "latest"
BEST = "best"                   # --keep-best: {"checkpoint", "step", "metric"}
STATE = "trainer_state.json"     # step, extra, world (JSON)
OPTIMIZER = "optimizer.pt"      # the optimizer state dict (tensors and numbers only)
CHECKPOINT = re.compile(r"checkpoint-\d+")


class LogprobForward(nn.Module):
    """The module DDP / FSDP2 wrap: forward(ids, loss_mask) = sequence_logprobs(lm, ids, loss_mask)."""

    def __init__(self, lm, chunk_size: int = 1024):
        super().__init__()
        self.lm, self.chunk_size = lm, chunk_size

    def forward(self, input_ids, loss_mask, prompt_len: int | None = None):
        with autocast(input_ids.device):  # prompt_len: one prompt's G rows, its tokens computed once
            hidden = decoder_hidden(self.lm.model, input_ids, prompt_len)  # (B, T, C)
        mask = loss_mask[:, 1:].bool()  # (B, T-1): position t-1 predicts token t
        h, targets = hidden[:, :-1][mask], input_ids[:, 1:][mask]  # (N, C), (N,)
        w = self.lm.lm_head.weight
        lp = token_logprobs(h, w.to(h.dtype), targets, self.lm.config.final_logit_softcapping,
                            chunk_size=self.chunk_size)  # (N,) fp32
        return torch.zeros(mask.shape, dtype=torch.float32, device=h.device).masked_scatter(mask, lp)


def autocast(device):
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs and tests stay in fp32)."""
    device = torch.device(device)
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _is_fsdp(module) -> bool:
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
    if not _is_fsdp(policy):
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
    if _is_fsdp(policy):
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


def checkpoint_step(out, step: int, total: int, model, policy, optimizer, d, stop, *, save_every: int,
                    keep_last: int, tokenizer_dir, extra: dict, metric: float | None = None) -> bool:
    """End of a training step: save every `save_every` steps, at the end, when interrupted (all
    ranks together), and when `metric` (--keep-best's held-out number, higher is better) beats the
    best so far, which <out>/best then names. -> True when the loop must stop (Ctrl-C / SIGTERM)."""
    interrupted = stop_requested(d, stop)
    best = best_checkpoint(out) if metric is not None else None
    improved = metric is not None and (best is None or metric > best["metric"])
    if step % save_every == 0 or step == total or interrupted or improved:
        path = save_checkpoint(out, step, model, policy, optimizer, d, tokenizer_dir, extra, keep_last)
        if d.main:
            if improved:
                write_json(Path(out) / BEST, {"checkpoint": path.name, "step": step, "metric": metric})
            print(f"saved {path}" + (f" (best held-out so far: {metric:.4f})" if improved else ""), flush=True)
    if interrupted and d.main:
        print(f"interrupted after step {step}: rerun with --resume to continue", flush=True)
    return interrupted


def best_checkpoint(out) -> dict | None:
    """--keep-best's record {"checkpoint", "step", "metric"}, or None."""
    path = Path(out) / BEST
    if not path.exists():
        return None
    best = json.loads(path.read_text())
    if not CHECKPOINT.fullmatch(str(best.get("checkpoint"))):
        raise ValueError(f"{path} names {best.get('checkpoint')!r}, not a checkpoint-<step> folder")
    return best


class _FullModel:
    """What save_model reads from a model (config and state_dict), for a gathered FSDP2 state."""

    def __init__(self, config, state):
        self.config, self._state = config, state

    def state_dict(self):
        return self._state


def _rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states as tensors only (loadable with weights_only=True)."""
    version, words, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": torch.tensor(words, dtype=torch.int64),
             "python_version": torch.tensor(version), "python_gauss": torch.tensor([] if gauss is None else [gauss])}
    if torch.cuda.is_available():
        for i, t in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = t
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    gauss = state["python_gauss"].tolist()
    random.setstate((int(state["python_version"]), tuple(state["python"].tolist()), gauss[0] if gauss else None))
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(out, step: int, model, policy, optimizer, d, tokenizer_dir, extra: dict | None = None,
                    keep_last: int = 0) -> Path:
    """Write <out>/checkpoint-<step> atomically (see module doc); every rank must call it.
    `model` is the bare CausalLM, `policy` its (possibly wrapped) LogprobForward."""
    out = Path(out)
    final, tmp = out / f"checkpoint-{step}", out / f".tmp-checkpoint-{step}"
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    d.barrier()
    adapters = lora.trainable_state_dict(policy) if lora.lora_layers(model) else None  # FSDP2: a collective
    full = model
    if _is_fsdp(policy):  # collectives: every rank takes part, rank 0 receives the full state
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_state = get_optimizer_state_dict(policy, optimizer, options=opts)
        if adapters is None:
            state = get_model_state_dict(policy, options=opts)
            full = _FullModel(model.config, {k.removeprefix("lm."): v for k, v in state.items()})
    else:
        optim_state = optimizer.state_dict()
    torch.save(_rng_state(), tmp / f"rng-rank{d.rank}.pt")
    if d.main:
        if adapters is not None:  # LoRA: the adapter in PEFT's format, not the frozen base
            save_adapter(model, tmp, tokenizer_dir, adapters)
            copy_tokenizer(tokenizer_dir, tmp)
        else:
            save_model(full, tmp, tokenizer_dir)
        torch.save(optim_state, tmp / OPTIMIZER)
        (tmp / STATE).write_text(json.dumps({"step": step, "extra": extra or {}, "world": d.world}, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = out / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n")
        os.replace(pointer, out / LATEST)
        if keep_last > 0:  # only this run's: never a later step left by another run, never this one
            steps = sorted(int(p.name[11:]) for p in out.glob("checkpoint-*") if CHECKPOINT.fullmatch(p.name))
            best = best_checkpoint(out)
            for old in [s for s in steps if s < step][:max(0, len([s for s in steps if s <= step]) - keep_last)]:
                if best is None or best["checkpoint"] != f"checkpoint-{old}":  # --keep-best's stays
                    shutil.rmtree(out / f"checkpoint-{old}", ignore_errors=True)
    d.barrier()
    return final


def latest_checkpoint(out) -> Path | None:
    """The checkpoint <out>/latest names: None when there is no pointer yet. The pointer may only
    name a complete checkpoint-<step> folder inside `out` (never a path elsewhere)."""
    pointer = Path(out) / LATEST
    if not pointer.exists():
        return None
    name = pointer.read_text().strip()
    if not CHECKPOINT.fullmatch(name):
        raise ValueError(f"{pointer} names {name!r}, not a checkpoint-<step> folder of this run")
    folder = Path(out) / name
    if not (folder / STATE).exists():
        raise FileNotFoundError(f"{pointer} names {folder}, which is missing or incomplete: "
                                "restore it, or remove the pointer to start over")
    return folder


def resolve_resume(resume, out) -> Path | None:
    """--resume value -> checkpoint folder: "latest" (<out>/latest; None before the first save)
    or a path the user names."""
    if not resume:
        return None
    if resume == LATEST:
        return latest_checkpoint(out)
    folder = Path(resume)
    if not (folder / STATE).exists():
        raise FileNotFoundError(f"--resume {resume}: no {STATE} there (not a training checkpoint)")
    return folder


def load_checkpoint(folder, policy, optimizer, d) -> dict:
    """Restore the optimizer and this rank's RNG from a checkpoint (the weights are loaded from
    the same folder with load_model, before wrapping); -> the trainer state (step, extra).
    Only tensors and JSON are read (weights_only=True): a crafted checkpoint cannot run code."""
    folder = Path(folder)
    state = json.loads((folder / STATE).read_text())
    optim_state = torch.load(folder / OPTIMIZER, map_location="cpu", weights_only=True)
    if _is_fsdp(policy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(policy, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optim_state)
    rng_file = folder / f"rng-rank{d.rank}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than were saved
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state
