"""Training checkpoints: atomic save, rotation, --keep-best, and resume (train_rft.py, train_rl.py).

Contract:
    checkpoint_step(out, step, total, model, policy, optimizer, d, stop, save_every=, keep_last=,
                    tokenizer_dir=, extra=, metric=None) -> True when the loop must stop
    save_checkpoint(out, step, model, policy, optimizer, d, tokenizer_dir, extra) -> folder
    state = load_checkpoint(folder, policy, optimizer, d)    -> {"step", "extra", ...}
    latest_checkpoint(out) -> folder or None; resolve_resume(--resume, out); best_checkpoint(out)

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
"""
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from . import lora
from .adapter import save_adapter
from .checkpoint import StateOnly, copy_tokenizer, save_model
from .data import write_json
from .training import is_fsdp, stop_requested

LATEST = "latest"
BEST = "best"                   # --keep-best: {"checkpoint", "step", "metric"}
STATE = "trainer_state.json"     # step, extra, world (JSON)
OPTIMIZER = "optimizer.pt"      # the optimizer state dict (tensors and numbers only)
CHECKPOINT = re.compile(r"checkpoint-\d+")


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
    if is_fsdp(policy):  # collectives: every rank takes part, rank 0 receives the full state
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_state = get_optimizer_state_dict(policy, optimizer, options=opts)
        if adapters is None:
            state = get_model_state_dict(policy, options=opts)
            full = StateOnly(model.config, {k.removeprefix("lm."): v for k, v in state.items()})
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
    if is_fsdp(policy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(policy, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(optim_state)
    rng_file = folder / f"rng-rank{d.rank}.pt"
    if rng_file.exists():  # absent when resuming on more ranks than were saved
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return state
