"""LoRA under DDP and FSDP2 (2 gloo ranks on CPU): two optimizer steps give the same adapters as one
process, checkpoints hold the adapters and their optimizer state only, merged weights work inside
full_weights, a merged HF folder is written from the gathered state.

This file is also the worker: `torchrun --nproc_per_node=2 tests/test_lora_distributed.py ...`.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, T = 2, 4, 24


def worker(argv=None):
    """Two LoRA steps on a fixed batch split over the ranks, then a checkpoint (resume.py) and
    `result.pt` (adapters, gradient norms, logits of the plain and merged model under full_weights)."""
    from minigrm import adapter, distributed, lora, resume, training
    from minigrm.checkpoint import load_model
    from minigrm.optim import clip_grad_norm, make_optimizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args(argv)
    d = distributed.init("cpu")
    torch.manual_seed(100 + d.rank)  # different per rank: the adapters' init must not depend on it
    model = load_model(args.model, dtype=getattr(torch, args.dtype)).train()
    model.model.gradient_checkpointing = True
    lora.add_lora(model, r=4, alpha=8, seed=0)
    with torch.no_grad():  # a non-zero B, the same on every rank, so that A's gradient is not zero
        for name, m in lora.lora_layers(model):
            m.lora_B.weight.copy_(torch.full(m.lora_B.weight.shape, 0.01) * (1 + len(name) % 5))
    policy = training.wrap(training.LogprobForward(model), d, args.fsdp)
    optimizer = make_optimizer(policy, 1e-3)
    ids = torch.randint(3, 96, (BATCH, T), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(BATCH, T, dtype=torch.bool)
    mask[:, 8:] = True
    mine, norms = d.shard(list(range(BATCH))), []
    for _ in range(STEPS):
        logp = policy(ids[mine], mask[mine])  # (b, T-1)
        (-logp.sum() / mask[mine, 1:].sum()).backward()  # the rank's mean; DDP / FSDP2 average ranks
        norms.append(clip_grad_norm(policy, 1.0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    state = lora.trainable_state_dict(policy)  # every rank: FSDP2 gathers the adapters' shards
    resume.save_checkpoint(Path(args.out) / "run", STEPS, model, policy, optimizer, d, args.model)
    full = lora.full_state_dict(policy)  # every rank (FSDP2: a collective); rank 0 writes a merged folder
    if d.main:
        adapter.save_merged(model, Path(args.out) / "merged", args.model, state_dict=full)
    with training.full_weights(policy), torch.no_grad():
        plain = model(ids)
        with lora.merged(model):
            merged = model(ids)
    if d.main:
        torch.save({"state": state, "plain": plain, "merged": merged, "norms": norms}, Path(args.out) / "result.pt")
    distributed.shutdown()


def run(tmp_path, model, name, fsdp, world, dtype="float32"):
    out = tmp_path / name
    out.mkdir()
    args = ["--model", str(model), "--out", str(out), "--dtype", dtype] + (["--fsdp"] if fsdp else [])
    if world == 1:
        worker(args)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", __file__, *args]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=300)
    return out, torch.load(out / "result.pt")


@pytest.mark.slow  # three runs, two of them torchrun with 2 processes: ~50 s on 2 cores
def test_fsdp2_and_ddp_lora_steps_equal_one_process(tmp_path):
    import minigrm
    from factories import hf_model, save_hf

    torch.set_num_threads(1)
    path = save_hf(hf_model("qwen2"), tmp_path / "base")  # biases, tied head
    one_dir, one = run(tmp_path, path, "one", fsdp=False, world=1)
    start = minigrm.lora.trainable_state_dict(minigrm.lora.add_lora(minigrm.load_model(path), r=4, alpha=8))
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in one["state"])
    assert any(not torch.equal(one["state"][k], start[k]) for k in start if "lora_A" in k)  # A trained
    for name, fsdp in (("fsdp2", True), ("ddp", False)):
        out, two = run(tmp_path, path, name, fsdp=fsdp, world=2)
        assert sorted(two["state"]) == sorted(one["state"])
        assert two["norms"] == pytest.approx(one["norms"], rel=1e-5) and one["norms"][0] > 0
        # AdamW moves each element by about lr = 1e-3 whatever its gradient's size, so a gradient
        # element that is nearly a cancelling sum turns the ranks' rounding into ~1e-6 differences
        for k in one["state"]:
            torch.testing.assert_close(two["state"][k], one["state"][k], rtol=0, atol=1e-5)
        ckpt = out / "run" / "checkpoint-2"
        optim = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
        assert len(optim) == len(one["state"])  # AdamW state of the adapters only
        assert not (ckpt / "model.safetensors").exists()
        torch.testing.assert_close(two["merged"], two["plain"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(two["plain"], one["plain"], rtol=1e-4, atol=1e-4)
        loaded = minigrm.load_model(path, adapter=ckpt)
        with torch.no_grad():
            ids = torch.randint(3, 96, (BATCH, T), generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(loaded(ids), one["plain"], rtol=1e-4, atol=1e-4)
            merged = minigrm.load_model(out / "merged")  # a plain HF folder
            assert not minigrm.lora.lora_layers(merged)
            torch.testing.assert_close(merged(ids), one["plain"], rtol=1e-4, atol=1e-4)
    assert (one_dir / "run" / "checkpoint-2" / "adapter_config.json").exists()


if __name__ == "__main__":
    worker()
