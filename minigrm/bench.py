"""Benchmark the GRM sampling workload against Hugging Face `generate`, in one run.

    python -m minigrm.bench                                    # SmolLM2-135M, CPU-sized workload
    python -m minigrm.bench --model random:qwen2.5-1.5b --device cuda --dtype bfloat16 \
        --prompts 32 --k 8 --prompt-len 1536 --new-tokens 512
    python -m minigrm.bench --overhead                         # ms per decode step, batch 256

Workload (PERF.md): P queries x k samples each, prompts of a given length, a fixed number of
new tokens (EOS ignored, so both engines produce exactly P * k * new tokens). The same weights
and prompts go to minigrm's Engine and to `transformers` `generate(num_return_sequences=k)`;
the script prints output tokens/s for both, their ratio and, on CUDA, the fraction of the
memory-bandwidth roofline: per decode step the GPU must read the weights once and every
sequence's KV once, so tokens/s <= batch * bandwidth / (W + sum_seq ctx * kv_bytes_per_token).

`--grm` is the GRM scoring workload itself: P pair items, each judged k times with its responses
shown in a shuffled order (paper §4), so the k prompts of a query differ after the template and
the query (`grm_prompts`; the paper's template and the model's chat template, ~`--prompt-len`
tokens); minigrm gets the P * k prompts, transformers the same prompts left-padded in one batch.

`--overhead` times the engine itself: a 1-layer, hidden-32 model (compute negligible), P = 32
prompts x k = 8 (batch 256), 512-token prompts, 64 new tokens; the median decode step is the
engine's own work per step (bookkeeping, tensor building, op dispatch).
"""
import argparse
import tempfile
import time

import torch

from .checkpoint import load_model
from .config import ModelConfig
from .engine import Engine
from .kv_cache import kv_bytes_per_token
from .sampling import SamplingParams

# Realistic shapes with random weights (no hub here): enough to measure speed.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "gemma-2-2b": dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                       query_pre_attn_scalar=256, sliding_window=4096, hidden_activation="gelu_pytorch_tanh"),
    # DeepSeek-V2-Lite's latent attention (16 heads, rank 512, rope 64) in a 2-layer, hidden-512
    # model: the MLA decode path (cascade on / off) at a size a CPU runs
    "deepseek-v2-mla": dict(model_type="deepseek_v2", hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                            num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None,
                            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, head_dim=64,
                            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=256,
                            first_k_dense_replace=1, vocab_size=4096, tie_word_embeddings=False),
    # a few-MB model for dry runs of gpu_check on a CPU
    "tiny": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}
BANDWIDTH = {"H100": 3.0e12, "H200": 4.8e12}  # achievable-copy (H100) / spec (H200) bytes/s


def build_model_dir(name: str, dtype, device="cpu", folder: str | None = None) -> str:
    """A folder with the named model: 'smollm2' or 'random:<shape>' (random weights, built on
    `device` and saved by transformers into `folder` or a new temporary one)."""
    if name == "smollm2":
        from .fixtures import smollm2_path
        return str(smollm2_path())
    if not name.startswith("random:"):
        return name  # a user's HF folder
    import transformers
    shape = dict(SHAPES[name.removeprefix("random:")])
    config = transformers.AutoConfig.for_model(shape.pop("model_type"), max_position_embeddings=8192, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    folder = folder or tempfile.mkdtemp(prefix="minigrm-bench-")
    model.save_pretrained(folder)
    return folder


def roofline_tokens_per_s(config, n_params: int, dtype, batch: int, ctx: float, bandwidth: float) -> float:
    step_bytes = n_params * dtype.itemsize + batch * ctx * kv_bytes_per_token(config, dtype)
    return batch * bandwidth / step_bytes


def make_engine(model, args) -> Engine:
    kv = None if args.kv_cache_gb is None else int(args.kv_cache_gb * 2**30)
    return Engine(model, None, max_num_seqs=max(args.prompts * args.k, 1), cuda_graphs=False if args.no_cuda_graphs else None,
                  cascade=not args.no_cascade, progress=False, kv_cache_bytes=kv)


def grm_prompts(folder: str, P: int, k: int, prompt_len: int) -> list[list[int]]:
    """P pair items x k shuffled orders -> P * k GRM prompts (token ids), query by query. The texts
    are minigrm's own module docstrings (plain English, always at hand): "What does the <a> module
    of minigrm do?" with a's docstring and another module's as the responses, each cut to whole
    words so the prompt is at most prompt_len tokens (the template itself is ~550)."""
    import importlib

    from .prompts import grm_messages
    from .tokenizer import load_tokenizer
    from .voting import permute, shuffled_order
    tok = load_tokenizer(folder)
    n_tokens = lambda q, rs: len(tok.encode(tok.apply_chat_template(grm_messages(q, rs))))  # noqa: E731
    names = ["engine", "cascade", "scheduler", "runner", "grm", "voting", "kv_cache", "decode_state", "scoring",
             "rft", "grpo", "meta_rm", "prompts", "parser", "memory", "serve"]
    docs = [" ".join(importlib.import_module(f"minigrm.{n}").__doc__.split()) for n in names]
    out = []
    for i in range(P):
        a, b = (2 * i) % len(names), (2 * i + 1) % len(names)
        query = f"What does the {names[a]} module of minigrm do, and how?"
        words = [docs[a].split(), docs[b].split()]
        lo, hi = 1, max(map(len, words))  # words per response: the most that fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if n_tokens(query, [" ".join(w[:mid]) for w in words]) <= prompt_len else (lo, mid - 1)
        responses = [" ".join(w[:lo]) for w in words]
        for j in range(k):
            shown = permute(responses, shuffled_order(2, f"bench-{i}-{j}"))
            out.append(tok.encode(tok.apply_chat_template(grm_messages(query, shown))))
    return out


def run_minigrm(model, prompts, args) -> float:
    engine = make_engine(model, args)
    params = SamplingParams(n=1 if args.grm else args.k, temperature=args.temperature, max_tokens=args.new_tokens,
                            ignore_eos=True, seed=0)
    engine.generate([p[:8] for p in prompts[:1]], SamplingParams(n=2, max_tokens=4, ignore_eos=True))  # warm-up
    engine.reset_prefix_cache()  # cold prefix cache
    sync(model)
    t = time.perf_counter()
    outs = engine.generate(prompts, params)
    sync(model)
    assert all(len(c.token_ids) == args.new_tokens for group in outs for c in group)
    return time.perf_counter() - t


def run_hf(hf, prompts, args) -> float:
    L = max(map(len, prompts))  # --grm: prompts of several lengths, left-padded
    dev = next(hf.parameters()).device
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=dev)
    kw = dict(do_sample=args.temperature > 0, num_return_sequences=1 if args.grm else args.k,
              max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0, attention_mask=mask)
    if args.temperature > 0:
        kw.update(temperature=args.temperature, top_p=1.0, top_k=0)
    hf.generate(ids[:1, :8], **dict(kw, max_new_tokens=4, min_new_tokens=4, attention_mask=None))  # warm-up
    sync(hf)
    t = time.perf_counter()
    out = hf.generate(ids, **kw)
    sync(hf)
    assert out.shape == (len(prompts) * kw["num_return_sequences"], ids.shape[1] + args.new_tokens)
    return time.perf_counter() - t


OVERHEAD_MODEL = dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)


def decode_step_times(engine, prompts, params, split: bool = False) -> list[tuple[float, float]]:
    """Run generate, timing every engine step; -> (seconds of the step, seconds of its decode
    pass, or 0 without `split`) for each step that prefilled nothing. The decode pass (model,
    attention, sampler, state update) is what CUDA graphs replay as one launch; the rest is the
    engine's host work. `split` syncs after the decode pass to time it (CPU: no cost)."""
    times, step, decode = [], engine.step, engine.runner.decode
    inner = [0.0]

    def timed_decode(*a, **kw):
        t = time.perf_counter()
        out = decode(*a, **kw)
        sync(engine.model)
        inner[0] += time.perf_counter() - t
        return out

    def timed():
        before, inner[0] = engine.stats["prefill_tokens"], 0.0
        t = time.perf_counter()
        out = step()
        sync(engine.model)
        if engine.stats["prefill_tokens"] == before:
            times.append((time.perf_counter() - t, inner[0]))
        return out
    engine.step = timed
    if split:
        engine.runner.decode = timed_decode
    try:
        engine.generate(prompts, params)
    finally:
        del engine.step
        if split:
            del engine.runner.decode
    return times


def overhead(args) -> float:
    """Median ms per decode step of a model whose compute is negligible (1 layer, hidden 32,
    2 heads, vocab 128): what is left is the engine's own work per step, the time a GPU would
    wait for the CPU. Prints each repeat's median; returns the median of them."""
    from .fused import fuse_projections
    from .model import CausalLM
    torch.manual_seed(0)
    model = fuse_projections(CausalLM(ModelConfig.from_dict(OVERHEAD_MODEL)).to(args.device).eval())
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, OVERHEAD_MODEL["vocab_size"], (args.prompts, args.prompt_len), generator=g).tolist()
    engine = make_engine(model, args)
    params = SamplingParams(n=args.k, temperature=args.temperature, max_tokens=args.new_tokens, ignore_eos=True, seed=0)
    medians, hosts = [], []
    for rep in range(args.repeats):
        times = decode_step_times(engine, prompts, params, split=True)
        steps = sorted(t for t, _ in times)
        host = sorted(t - d for t, d in times)
        medians.append(steps[len(steps) // 2] * 1e3)
        hosts.append(host[len(host) // 2] * 1e3)
        print(f"repeat {rep}: {len(times)} decode steps at batch {args.prompts * args.k}, median {medians[-1]:.2f} ms "
              f"(outside the decode pass: {hosts[-1]:.2f} ms)")
    best, best_host = sorted(medians)[len(medians) // 2], sorted(hosts)[len(hosts) // 2]
    print(f"engine overhead: {best:.2f} ms per decode step, of which {best_host:.2f} ms outside the decode pass "
          f"(scheduling, bookkeeping; the decode pass itself is one CUDA-graph replay on a GPU) "
          f"(median of {args.repeats} medians; {torch.get_num_threads()} threads, {args.device})")
    return best


def sync(model):
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, random:<shape> (%s) or an HF folder" % ", ".join(SHAPES))
    ap.add_argument("--prompts", type=int, default=None, help="P: distinct queries (default 4; --overhead: 32)")
    ap.add_argument("--k", type=int, default=8, help="samples per query")
    ap.add_argument("--prompt-len", type=int, default=512, help="tokens per prompt (the GRM template alone is ~550)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens generated per sample, EOS ignored "
                    "(default 128; --overhead: 64)")
    ap.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (0 = greedy)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="eager decode steps (graphs are on by default on CUDA)")
    ap.add_argument("--no-cascade", action="store_true", help="plain paged attention for shared prefixes")
    ap.add_argument("--kv-cache-gb", type=float, default=None,
                    help="KV cache budget in GiB on any device (default: 2 on CPU, profiled on CUDA)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--grm", action="store_true", help="the GRM workload: k shuffled paper-template prompts per "
                    "query (needs a model with a tokenizer: smollm2 or an HF folder)")
    ap.add_argument("--overhead", action="store_true", help="ms per decode step of a negligible model (engine work)")
    ap.add_argument("--repeats", type=int, default=3, help="--overhead: generate calls to time")
    args = ap.parse_args(argv)
    if args.grm and args.model.startswith("random:"):
        ap.error("--grm builds real prompts: it needs a model with a tokenizer (smollm2 or an HF folder)")
    args.prompts = args.prompts or (32 if args.overhead else 4)
    args.new_tokens = args.new_tokens or (64 if args.overhead else 128)
    with torch.no_grad():  # (a context, not set_grad_enabled: a caller's grad mode is left as it was)
        return overhead(args) if args.overhead else workload(args)


def workload(args) -> None:
    """The GRM sampling workload through minigrm and transformers; prints the table."""
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device == "cuda" else torch.float32)
    folder = build_model_dir(args.model, dtype)
    model = load_model(folder, dtype=dtype, device=args.device)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    if args.grm:
        prompts = grm_prompts(folder, args.prompts, args.k, args.prompt_len)
    else:
        prompts = torch.randint(100, min(vocab, 30000), (args.prompts, args.prompt_len), generator=g).tolist()
    n_tokens = args.prompts * args.k * args.new_tokens

    t_ours = run_minigrm(model, prompts, args)
    rows = [("minigrm", t_ours)]
    if not args.no_hf:
        import gc

        import transformers
        del model
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()  # hand the engine's KV pool back before transformers runs
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
        rows.append(("transformers", run_hf(hf, prompts, args)))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    what = (f"{args.prompts} GRM queries x k={args.k} shuffled prompts of {min(map(len, prompts))}-"
            f"{max(map(len, prompts))} tokens" if args.grm else f"{args.prompts} prompts x k={args.k}, "
            f"prompt {args.prompt_len} tokens")
    print(f"\n{args.model} on {device}, {dtype}: {what}, {args.new_tokens} new tokens each (EOS ignored)")
    print(f"{'engine':<14}{'seconds':>10}{'tokens/s':>12}")
    for name, t in rows:
        print(f"{name:<14}{t:>10.2f}{n_tokens / t:>12.1f}")
    if len(rows) == 2:
        print(f"speed-up vs transformers: {rows[1][1] / t_ours:.2f}x")
    if args.device == "cuda":
        config = ModelConfig.from_pretrained(folder)
        bw = next((b for k, b in BANDWIDTH.items() if k in device), 3.0e12)
        bound = roofline_tokens_per_s(config, n_params, dtype, args.prompts * args.k,
                                      args.prompt_len + args.new_tokens / 2, bw)
        print(f"roofline bound (no prefix sharing counted, {bw / 1e12:.1f} TB/s): {bound:.0f} tokens/s; "
              f"minigrm reaches {n_tokens / t_ours / bound:.0%} (decode-only bound; prefill time included)")


if __name__ == "__main__":
    main()
