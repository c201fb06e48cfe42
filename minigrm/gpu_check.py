"""One command on a GPU machine: the GPU tests and the GRM-workload benchmark, in one report.

    PYTHONPATH=. python -m minigrm.gpu_check [--out out/gpu_check.md]     # < 8 min on an H100/H200
    python -m minigrm.gpu_check --dry-run                                  # CPU, tiny model, seconds

Parts, in order, each in its own process with a time box (a crash, a CUDA error or a timeout in
one part leaves the others' figures; figures are saved as each is measured):
  env        GPU, versions, the bandwidth used for the roofline bound
  tests      pytest tests/test_gpu.py (compiled kernels vs twins, graphs vs eager, memory knob)
  overhead   `bench --overhead` on this device: ms per decode step of a negligible model
  model:X    random weights of shape X (bench.SHAPES), bf16, saved once under <out dir>/models
  minigrm:X  the GRM workload (32 queries x k = 8, 1.5k-token prompts, 512 new tokens, EOS
             ignored) with graphs + cascade, without cascade, without graphs; per variant: time,
             tokens/s, median decode step, decode tokens/s and its fraction of the HBM roofline
             (without and with the shared prompt counted once per query), then batch-1 decode
             with graphs on and off
  hf:X       transformers `generate` on the same weights and prompts (num_return_sequences=k)
  deepseek   DeepSeek-V2-Lite's shape (DeepSeek-GRM-16B), random bf16 weights: the decode roofline
             of bench_deepseek.py at batch 1 / 64 / 256 (MLA latent decode, grouped MoE, a graph)
The report (markdown) goes to --out. --dry-run runs the same parts in this process on the CPU
with bench's 'tiny' shape and a toy workload (tests/test_gpu_check.py runs it).

Adding a model row: put its config in bench.SHAPES and its name in ROWS below.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROWS = ["qwen2.5-0.5b", "qwen2.5-1.5b"]  # bench.SHAPES names benchmarked on the GPU
WORKLOAD = dict(prompts=32, k=8, prompt_len=1536, new_tokens=512, temperature=0.5)
DRY_WORKLOAD = dict(prompts=2, k=2, prompt_len=48, new_tokens=8, temperature=0.5)
BATCH1 = dict(prompt_len=512, new_tokens=256)
DRY_DEEPSEEK = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
                    v_head_dim=16, n_routed_experts=16, vocab_size=256)
TIMEOUTS = {"env": 60, "tests": 200, "overhead": 60, "model": 120, "minigrm": 170, "hf": 150, "deepseek": 150}
DEADLINE_S = 460  # the whole run stays under 8 minutes; later parts are skipped past it


def part_env(cfg, out):
    import torch
    import transformers
    import triton
    from .bench import BANDWIDTH
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
    out.update(device=name, torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
               bandwidth=next((b for k, b in BANDWIDTH.items() if k in name), 3.0e12), date=time.strftime("%Y-%m-%d"))


def part_tests(cfg, out):
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests" / "test_gpu.py")]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=TIMEOUTS["tests"] - 10)
    lines = (r.stdout + r.stderr).strip().splitlines()
    out.update(returncode=r.returncode, summary=lines[-1] if lines else "", tail="\n".join(lines[-40:]))


def part_overhead(cfg, out):
    import torch
    from .bench import main as bench
    out["ms_per_step"] = bench(["--overhead", "--repeats", "1", "--device", cfg["device"]] +
                               (["--prompts", "4", "--prompt-len", "64", "--new-tokens", "8"] if cfg["dry_run"] else []))
    out["threads"] = torch.get_num_threads()


def part_model(cfg, out):
    import torch
    from .bench import build_model_dir
    folder = Path(cfg["models"]) / cfg["shape"]
    if not (folder / "config.json").exists():
        build_model_dir("random:" + cfg["shape"], getattr(torch, cfg["dtype"]), cfg["device"], str(folder))
    out["folder"] = str(folder)


def _prompts(vocab, n, length):
    import torch
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, min(vocab, 30000), (n, length), generator=g).tolist()


def _bounds(config, n_params, dtype, w, bw):
    """Decode tokens/s bounds at the workload's mean context: every row reads its whole context,
    or (prefix sharing) each query's prompt is read once for its k rows."""
    from .kv_cache import kv_bytes_per_token
    batch, kvb = w["prompts"] * w["k"], kv_bytes_per_token(config, dtype)
    weights, own = n_params * dtype.itemsize, w["new_tokens"] / 2
    plain = batch * bw / (weights + batch * (w["prompt_len"] + own) * kvb)
    shared = batch * bw / (weights + (w["prompts"] * w["prompt_len"] + batch * own) * kvb)
    return plain, shared


def _run_engine(model, prompts, w, **kw):
    import torch
    from .bench import decode_step_times
    from .engine import Engine
    from .sampling import SamplingParams
    engine = Engine(model, None, max_num_seqs=len(prompts) * w["k"], progress=False, **kw)
    engine.generate([p[:8] for p in prompts[:1]], SamplingParams(n=2, max_tokens=4, ignore_eos=True))  # warm-up
    engine.reset_prefix_cache()
    params = SamplingParams(n=w["k"], temperature=w["temperature"], max_tokens=w["new_tokens"], ignore_eos=True, seed=0)
    t = time.perf_counter()
    steps = sorted(t for t, _ in decode_step_times(engine, prompts, params))
    seconds = time.perf_counter() - t
    row = dict(seconds=seconds, tokens_per_s=len(prompts) * w["k"] * w["new_tokens"] / seconds,
               decode_ms=1e3 * steps[len(steps) // 2], graphs=engine.runner.graphs is not None,
               kv_blocks=engine.blocks.num_blocks, memory=engine.memory)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def part_minigrm(cfg, out, save):
    import torch
    from .checkpoint import load_model
    dtype = getattr(torch, cfg["dtype"])
    model = load_model(cfg["folder"], dtype=dtype, device=cfg["device"])
    torch.set_grad_enabled(False)
    n_params = sum(p.numel() for p in model.parameters())
    w, bw = cfg["workload"], cfg["bandwidth"]
    prompts = _prompts(model.config.vocab_size, w["prompts"], w["prompt_len"])
    plain, shared = _bounds(model.config, n_params, dtype, w, bw)
    out.update(n_params=n_params, bound_plain=plain, bound_shared=shared, variants={})
    for name, kw in (("graphs + cascade", {}), ("no cascade", dict(cascade=False)), ("no graphs", dict(cuda_graphs=False))):
        row = _run_engine(model, prompts, w, **kw)
        decode_tok_s = w["prompts"] * w["k"] / (row["decode_ms"] / 1e3)
        row.update(decode_tok_s=decode_tok_s, roofline_plain=decode_tok_s / plain, roofline_shared=decode_tok_s / shared)
        out["variants"][name] = row
        save()
    b1 = dict(prompts=1, k=1, temperature=0.0, prompt_len=min(BATCH1["prompt_len"], w["prompt_len"]),
              new_tokens=min(BATCH1["new_tokens"], 8 * w["new_tokens"]))
    bound1 = _bounds(model.config, n_params, dtype, b1, bw)[0]
    out["batch1"] = {}
    for name, kw in (("graphs", {}), ("no graphs", dict(cuda_graphs=False))):
        row = _run_engine(model, _prompts(model.config.vocab_size, 1, b1["prompt_len"]), b1, **kw)
        row.update(decode_tok_s=1e3 / row["decode_ms"], roofline=1e3 / row["decode_ms"] / bound1)
        out["batch1"][name] = row
        save()


def part_hf(cfg, out):
    import torch
    import transformers
    from .bench import run_hf
    dtype = getattr(torch, cfg["dtype"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(cfg["folder"], dtype=dtype).to(cfg["device"]).eval()
    w = cfg["workload"]
    args = argparse.Namespace(temperature=w["temperature"], k=w["k"], new_tokens=w["new_tokens"], grm=False)
    with torch.no_grad():
        seconds = run_hf(hf, _prompts(hf.config.vocab_size, w["prompts"], w["prompt_len"]), args)
    out.update(seconds=seconds, tokens_per_s=w["prompts"] * w["k"] * w["new_tokens"] / seconds)


def part_deepseek(cfg, out):
    """DeepSeek-V2-Lite's shape (DeepSeek-GRM-16B) with random weights: the decode roofline of
    bench_deepseek.py (MLA latent decode, grouped MoE, CUDA graph) at batch 1 / 64 / 256. The
    dry run uses a tiny config of the same structure."""
    import torch
    from .bench_deepseek import V2_LITE, decode_roofline
    from .config import ModelConfig
    dry = cfg["dry_run"]
    raw = dict(V2_LITE, **DRY_DEEPSEEK) if dry else V2_LITE
    out["rows"] = decode_roofline(ModelConfig.from_dict(raw), batches=(1, 4) if dry else (1, 64, 256),
                                  context=40 if dry else 1536, dtype=getattr(torch, cfg["dtype"]),
                                  device=cfg["device"], steps=2 if dry else 20, bandwidth=cfg["bandwidth"])


PARTS = {"env": part_env, "tests": part_tests, "overhead": part_overhead, "model": part_model,
         "minigrm": part_minigrm, "hf": part_hf, "deepseek": part_deepseek}


def run_part(kind, cfg, result_file, isolate, timeout):
    """Run one part (in a child process when `isolate`), its figures saved to result_file as
    they come. -> the figures, with 'error' set on failure or timeout."""
    out = {}

    def save():
        Path(result_file).write_text(json.dumps(out))
    if not isolate:
        t = time.perf_counter()
        try:
            PARTS[kind](cfg, out, save) if kind == "minigrm" else PARTS[kind](cfg, out)
        except Exception:  # one failing part must not lose the others
            out["error"] = traceback.format_exc(limit=3)[-1500:]
        out["wall_s"] = time.perf_counter() - t
        save()
        return out
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "minigrm.gpu_check", "--part", kind, "--config", json.dumps(cfg), "--result", result_file]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        error = None if r.returncode == 0 else f"exit {r.returncode}: " + (r.stdout + r.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        error = f"timed out after {timeout:.0f} s"
    if Path(result_file).exists():
        out = json.loads(Path(result_file).read_text())
    if error and "error" not in out:
        out["error"] = error
    out["wall_s"] = time.perf_counter() - t
    return out


def plan(dry_run: bool) -> list[tuple[str, str | None]]:
    rows = ["tiny"] if dry_run else ROWS
    steps = [("env", None), ("tests", None), ("overhead", None)]
    for shape in rows:
        steps += [("model", shape), ("minigrm", shape), ("hf", shape)]
    return steps + [("deepseek", None)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/gpu_check.md", help="the markdown report")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, toy workload, in one process (seconds)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (env, tests, overhead, model, minigrm, hf, deepseek)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this (child) process
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.part:  # the child side of run_part
        run_part(args.part, json.loads(args.config), args.result, isolate=False, timeout=None)
        return None
    from .gpu_report import write_report
    if args.dry_run:
        import torch
        torch.set_num_threads(1)  # toy shapes: threads only add contention on a shared CPU
    out_path = Path(args.out)
    work = out_path.parent / "gpu_check_parts"
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    base = dict(dry_run=args.dry_run, device="cpu" if args.dry_run else "cuda",
                dtype="float32" if args.dry_run else "bfloat16", models=str(work / "models"),
                workload=DRY_WORKLOAD if args.dry_run else WORKLOAD, bandwidth=3.0e12)
    results, start, folders = {}, time.perf_counter(), {}
    for kind, shape in plan(args.dry_run):
        key = kind if shape is None else f"{kind}:{shape}"
        left = DEADLINE_S - (time.perf_counter() - start)
        if kind in skip:
            continue
        if kind in ("minigrm", "hf") and shape not in folders:
            results[key] = {"error": "no model folder (the model part failed or was skipped)"}
            continue
        if not args.dry_run and left < 20:
            results[key] = {"error": "skipped: the run's time budget is spent"}
            continue
        cfg = dict(base, shape=shape, folder=folders.get(shape), bandwidth=results.get("env", {}).get("bandwidth", 3.0e12))
        results[key] = run_part(kind, cfg, str(work / f"{key.replace(':', '_')}.json"), isolate=not args.dry_run,
                                timeout=min(TIMEOUTS[kind], max(left, 20)))
        if kind == "model" and "folder" in results[key]:
            folders[shape] = results[key]["folder"]
        print(f"gpu_check: {key} {'failed' if 'error' in results[key] else 'done'} "
              f"({results[key].get('wall_s', 0):.0f} s)", flush=True)
    write_report(out_path, results, base, time.perf_counter() - start)
    print(f"gpu_check: report written to {out_path}")
    return results


if __name__ == "__main__":
    main()
