"""Micro-benchmark of one GRPO update on a GRM-shaped group: prefix-shared vs per-sequence
log-probs (shared_prefix.py), with full fine-tuning or LoRA (lora.py).

    python -m minigrm.bench_update                    # SmolLM2-135M shape, P 900, G 4, Tc 300, CPU fp32
    python -m minigrm.bench_update --lora-rank 16     # the same, base frozen, adapters on 7 projections
    python -m minigrm.bench_update --device cuda --dtype bfloat16

One step is the update of one prompt's group: LogprobForward over the G sequences (prompt_len=P
on the shared path), backward of the summed log-probs, an AdamW step. Random weights of
SmolLM2-135M's shape (--layers to shorten it); the vocabulary projection is the chunked one
of logprob.py in both variants. Each variant runs in its own process, so peak memory is its own.
Reported per variant: the fastest step's wall and CPU time (CPU time is less disturbed by other
processes on a shared machine), the activations autograd keeps for the backward, peak memory above
the weights (CUDA: max_memory_allocated; CPU: peak RSS) and the trainable parameter count.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from . import lora
from .config import ModelConfig
from .model import CausalLM
from .optim import make_optimizer
from .training import LogprobForward

SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True, rms_norm_eps=1e-5)
VARIANTS = ("per-sequence", "shared")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=900, help="P, tokens of the shared GRM prompt")
    ap.add_argument("--completion-len", type=int, default=300, help="Tc, tokens of each judgment")
    ap.add_argument("--group-size", type=int, default=4, help="G, judgments per prompt")
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    ap.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (alpha = 2 x rank); 0: full fine-tuning")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up (the fastest is reported)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", help="weight dtype")
    ap.add_argument("--variant", choices=VARIANTS, help="run one variant here (the parent runs each in a process)")
    return ap.parse_args(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run(args)))
        return
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, "-m", "minigrm.bench_update", *argv, "--variant", variant],
                             check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    mode = f"LoRA r={args.lora_rank}" if args.lora_rank else "full fine-tuning"
    print(f"P={args.prompt_len} G={args.group_size} Tc={args.completion_len}; SmolLM2-135M shape, {args.layers} "
          f"layers, {args.dtype} on {args.device}, {mode}; torch {torch.__version__}, {args.threads} threads")
    for name, r in results.items():
        print(f"  {name:13s} step {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU | saved for backward "
              f"{r['saved_mb']:7.1f} MB | peak above weights {r['peak_mb']:7.1f} MB | trainable {r['trainable']:,}")
    a, b = results["per-sequence"], results["shared"]
    print(f"  shared vs per-sequence: x{a['seconds'] / b['seconds']:.2f} wall, x{a['cpu_seconds'] / b['cpu_seconds']:.2f}"
          f" CPU, x{a['saved_mb'] / b['saved_mb']:.2f} less saved for backward, x{a['peak_mb'] / b['peak_mb']:.2f} "
          "less peak memory")


def run(args) -> dict:
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalLM(ModelConfig.from_dict(dict(SMOLLM2, num_hidden_layers=args.layers)))
    model = model.to(getattr(torch, args.dtype)).train()
    if args.lora_rank:
        lora.add_lora(model, r=args.lora_rank, alpha=2 * args.lora_rank)
    policy = LogprobForward(model)
    optimizer = make_optimizer(policy, 1e-6)
    P, G, Tc = args.prompt_len, args.group_size, args.completion_len
    prompt = torch.randint(0, SMOLLM2["vocab_size"], (1, P)).expand(G, P)
    ids = torch.cat([prompt, torch.randint(0, SMOLLM2["vocab_size"], (G, Tc))], dim=1).to(device)  # (G, P + Tc)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, P:] = True
    prompt_len = P if args.variant == "shared" else None

    def step():
        policy(ids, mask, prompt_len=prompt_len).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    base = torch.cuda.memory_allocated() if cuda else _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    saved = {}  # bytes of every distinct storage autograd keeps for the backward, weights excepted
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()  # the warm-up step (and AdamW's state) counts the activations
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base  # Linux: KiB
    return {"seconds": min(times), "cpu_seconds": min(cpu), "saved_mb": sum(saved.values()) / 2**20,
            "peak_mb": peak, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    main()
