"""Decode roofline of DeepSeek-V2-Lite (the shape of DeepSeek-GRM-16B) with random weights: the
model's decode step (MLA latent kernel, grouped-matmul MoE) at several batch sizes, its
tokens/s and the fraction of the memory-bandwidth bound (PERF.md).

    python -m minigrm.bench_deepseek                                  # on a GPU: 1, 64, 256
    python -m minigrm.bench_deepseek --batch 1 8 --layers 4 --context 512

`decode_roofline(...)` returns one row per batch size and `markdown(rows)` formats them: the
function a GPU acceptance command calls. Each sequence holds `context` cached tokens (random
latent rows, no prefill) and decodes one more; every step re-runs the same inputs.

Bound: a decode step must read, once, every weight the batch uses (attention, dense MLP and
shared experts, router, norms, lm_head, the embedding rows of its tokens, and the routed
experts actually picked in each MoE layer: counted from the step's routing, since with
random weights the router spreads tokens as a trained one roughly does) plus every sequence's
latent KV rows ((context + 1) * (kv_lora_rank + qk_rope_head_dim) per layer). Then
tokens/s <= batch * bandwidth / bytes_per_step. With CUDA the step is captured in a CUDA graph
(as the engine does), after an eager step checked with torch's sync debug mode.
"""
import argparse
import time
import warnings

import torch

from .config import ModelConfig
from .kv_cache import allocate_kv_cache
from .model import CausalLM
from .moe import MoE
from .attention import DecodeAttention

# DeepSeek-V2-Lite's config.json (DeepSeek-GRM-16B's base), the fields minigrm reads
V2_LITE = dict(
    architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2", vocab_size=102400, hidden_size=2048,
    intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27, num_attention_heads=16,
    num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None, qk_nope_head_dim=128, qk_rope_head_dim=64,
    v_head_dim=128, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1,
    topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False,
    hidden_act="silu", max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
    bos_token_id=100000, eos_token_id=100001,
    rope_scaling=dict(type="yarn", factor=40, mscale=0.707, mscale_all_dim=0.707, beta_fast=32, beta_slow=1,
                      original_max_position_embeddings=4096), rope_theta=10000)
BANDWIDTH = {"H100": 3.0e12, "H200": 4.8e12}  # bytes/s: achievable copy (H100), spec (H200), PERF.md
PAGE = 16


def random_model(config: ModelConfig, dtype, device, seed: int = 0) -> CausalLM:
    """Built directly in `dtype` on `device` (no fp32 copy), nn.Linear's default init."""
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = CausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.model.rotary_emb.init_buffers(device)  # fp32 frequencies whatever the default dtype was
    return model.eval().requires_grad_(False)


def active_expert_bytes(model: CausalLM, step) -> tuple[int, list[int]]:
    """Run `step` once, recording each MoE layer's routing -> (bytes of the routed experts it
    picked, read once each, and the number of distinct experts per MoE layer)."""
    picked, originals = [], {}

    def recording(m):
        def route(x):
            weights, experts = originals[m](x)
            picked.append((m, experts))
            return weights, experts
        return route

    for m in model.modules():
        if isinstance(m, MoE):
            originals[m] = m.route
            m.route = recording(m)
    try:
        step()
    finally:
        for m, route in originals.items():
            m.route = route
    per_layer = [(m, int(e.unique().numel())) for m, e in picked]
    nbytes = sum(n * (m.experts.gate_up_proj[0].numel() + m.experts.down_proj[0].numel())
                 * m.experts.gate_up_proj.element_size() for m, n in per_layer)
    return nbytes, [n for _, n in per_layer]


def dense_bytes(model: CausalLM, batch: int) -> int:
    """Every parameter but the routed experts (counted per step) and the embedding table (only
    the batch's rows are read)."""
    emb = model.model.embed_tokens.weight
    n = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
            if ".experts." not in name and p is not emb)
    return n + batch * emb.shape[1] * emb.element_size()


def _time(fn, steps: int, cuda: bool) -> float:
    """Seconds per call of fn, after fn has been run at least once."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / steps
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def _host_syncs(step) -> int:
    """CUDA: synchronising calls torch reports during one eager step (sync debug mode)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@torch.inference_mode()
def decode_roofline(config: ModelConfig, batches=(1, 64, 256), context: int = 1536, dtype=torch.bfloat16,
                    device="cuda", steps: int = 20, graphs: bool = True, bandwidth: float | None = None,
                    model: CausalLM | None = None) -> list[dict]:
    """One row per batch size: ms per decode step, tokens/s, bytes per step, the bound and the
    fraction of it reached (None without a bandwidth: not on a known GPU, and none given)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if bandwidth is None and cuda:
        name = torch.cuda.get_device_name(device)
        bandwidth = next((bw for key, bw in BANDWIDTH.items() if key in name), None)
    model = model or random_model(config, dtype, device)
    dtype = next(model.parameters()).dtype
    blocks_per_seq = -(-(context + 1) // PAGE)
    caches, _ = allocate_kv_cache(config, max(batches) * blocks_per_seq, PAGE, dtype, device)
    for c in caches:
        c.normal_()  # random latent rows: what the kernel reads is what counts
    rows = []
    for B in batches:
        g = torch.Generator(device=device).manual_seed(B)
        ids = torch.randint(0, config.vocab_size, (1, B), device=device, generator=g)
        positions = torch.full((1, B), context, device=device)
        tables = torch.arange(B * blocks_per_seq, device=device, dtype=torch.int32).view(B, blocks_per_seq)
        lens = torch.full((B,), context + 1, device=device, dtype=torch.int32)
        slots = tables[:, context // PAGE].long() * PAGE + context % PAGE  # the new token's row
        logits = torch.empty(B, config.vocab_size, device=device, dtype=dtype)

        def step():
            attn = DecodeAttention(caches, None, slots, tables, lens, all_valid=True)
            logits.copy_(model.lm_head(model.model(ids, positions, attn)[0]))

        expert_bytes, experts_per_layer = active_expert_bytes(model, step)  # also the warm-up
        syncs = _host_syncs(step) if cuda else None
        run, how = step, "eager"
        if cuda and graphs:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                run, how = graph.replay, "graph"
            except RuntimeError as e:  # report, and time the eager step instead
                how = f"eager (capture failed: {str(e).splitlines()[0][:80]})"
            run()
        seconds = _time(run, steps, cuda)
        kv_bytes = B * (context + 1) * caches[0].shape[-1] * caches[0].element_size() * len(caches)
        step_bytes = dense_bytes(model, B) + expert_bytes + kv_bytes
        bound = B * bandwidth / step_bytes if bandwidth else None
        rows.append(dict(batch=B, context=context, mode=how, ms=seconds * 1e3, tokens_per_s=B / seconds,
                         bytes_per_step=step_bytes, kv_bytes=kv_bytes, expert_bytes=expert_bytes,
                         experts_per_layer=experts_per_layer, host_syncs=syncs, bound_tokens_per_s=bound,
                         fraction=B / seconds / bound if bound else None))
    return rows


def markdown(rows: list[dict], title: str = "DeepSeek-V2-Lite shape, random weights, decode") -> str:
    lines = [f"**{title}**", "", "| batch | context | step | ms/step | tokens/s | GB/step (KV) | "
             "experts/layer | host syncs | bound tokens/s | of bound |", "|" + "---|" * 10]
    for r in rows:
        mean_experts = sum(r["experts_per_layer"]) / max(1, len(r["experts_per_layer"]))
        bound = f"{r['bound_tokens_per_s']:,.0f}" if r["bound_tokens_per_s"] else "-"
        frac = f"{r['fraction']:.0%}" if r["fraction"] is not None else "-"
        syncs = "-" if r["host_syncs"] is None else str(r["host_syncs"])
        lines.append(f"| {r['batch']} | {r['context']} | {r['mode']} | {r['ms']:.2f} | {r['tokens_per_s']:,.0f} | "
                     f"{r['bytes_per_step'] / 1e9:.2f} ({r['kv_bytes'] / 1e9:.2f}) | {mean_experts:.1f} | "
                     f"{syncs} | {bound} | {frac} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64, 256], help="decode batch sizes")
    ap.add_argument("--context", type=int, default=1536, help="cached tokens per sequence")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than V2-Lite's 27 (quick runs)")
    ap.add_argument("--steps", type=int, default=20, help="timed decode steps per batch size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--dtype", default="bfloat16", help="bfloat16 or float32")
    ap.add_argument("--no-graphs", action="store_true", help="time eager steps instead of a CUDA graph")
    ap.add_argument("--bandwidth", type=float, default=None, help="bytes/s for the bound (default: by GPU name)")
    args = ap.parse_args(argv)
    raw = dict(V2_LITE, num_hidden_layers=args.layers or V2_LITE["num_hidden_layers"])
    rows = decode_roofline(ModelConfig.from_dict(raw), args.batch, args.context, getattr(torch, args.dtype),
                           args.device, args.steps, not args.no_graphs, args.bandwidth)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(markdown(rows, f"DeepSeek-V2-Lite shape ({raw['num_hidden_layers']} layers), random weights, "
                         f"decode on {gpu}, torch {torch.__version__}"))


if __name__ == "__main__":
    main()
