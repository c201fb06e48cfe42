"""The markdown report of `python -m minigrm.gpu_check`: one table per measurement, every
failed or skipped part named with its error, so a partial run still reads as what it is."""
from pathlib import Path


def _f(x, fmt="{:.1f}"):
    return "-" if x is None else fmt.format(x)


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def write_report(path: Path, results: dict, base: dict, total_s: float) -> None:
    env = results.get("env", {})
    w = base["workload"]
    lines = ["# minigrm GPU check", ""]
    lines.append(f"{env.get('device', '?')} · torch {env.get('torch', '?')} · triton {env.get('triton', '?')} · "
                 f"transformers {env.get('transformers', '?')} · {env.get('date', '')} · run took {total_s:.0f} s"
                 + (" · **dry run (CPU, tiny model)**" if base["dry_run"] else ""))
    lines.append(f"\nRoofline bandwidth: {env.get('bandwidth', 3e12) / 1e12:.1f} TB/s (PERF.md). Workload: "
                 f"{w['prompts']} queries x k = {w['k']}, {w['prompt_len']}-token prompts, {w['new_tokens']} new "
                 f"tokens (EOS ignored), temperature {w['temperature']}, {base['dtype']}, random weights.\n")

    t = results.get("tests", {})
    lines += ["## GPU tests (tests/test_gpu.py)", ""]
    if "summary" in t:
        lines.append(f"`{t['summary']}` (return code {t['returncode']})")
        if t["returncode"] not in (0, 5):
            lines += ["", "```", t["tail"], "```"]
    lines.append("")

    o = results.get("overhead", {})
    lines += ["## Engine overhead", "",
              f"`bench --overhead` on {base['device']}: {_f(o.get('ms_per_step'), '{:.2f}')} ms per decode step at "
              f"batch {'32' if base['dry_run'] else '256'} with a negligible model (1 layer, hidden 32).", ""]

    lines += ["## GRM workload", "",
              "| model | engine | graphs | s | tokens/s | vs HF | decode step ms | decode tok/s | "
              "% roofline | % roofline, prompt once per query |", "|---|---|---|---|---|---|---|---|---|---|"]
    batch1 = []
    for key, r in results.items():
        if not key.startswith("minigrm:"):
            continue
        shape = key.split(":", 1)[1]
        hf = results.get(f"hf:{shape}", {})
        for name, v in r.get("variants", {}).items():
            ratio = hf["seconds"] / v["seconds"] if "seconds" in hf else None
            lines.append(f"| {shape} | minigrm, {name} | {'yes' if v['graphs'] else 'no'} | {_f(v['seconds'])} | "
                         f"{_f(v['tokens_per_s'], '{:.0f}')} | {_f(ratio, '{:.2f}x')} | {_f(v['decode_ms'], '{:.2f}')} | "
                         f"{_f(v['decode_tok_s'], '{:.0f}')} | {_pct(v['roofline_plain'])} | {_pct(v['roofline_shared'])} |")
        if "seconds" in hf:
            lines.append(f"| {shape} | transformers generate | - | {_f(hf['seconds'])} | {_f(hf['tokens_per_s'], '{:.0f}')} "
                         f"| 1.00x | - | - | - | - |")
        if "bound_plain" in r:
            lines.append(f"| {shape} | bound ({r['n_params'] / 1e9:.2f}B params) | | | | | | "
                         f"{_f(r['bound_plain'], '{:.0f}')} / {_f(r['bound_shared'], '{:.0f}')} | 100% | 100% |")
        for name, v in r.get("batch1", {}).items():
            batch1.append(f"| {shape} | {name} | {'yes' if v['graphs'] else 'no'} | {_f(v['decode_ms'], '{:.2f}')} | "
                          f"{_f(v['decode_tok_s'], '{:.0f}')} | {_pct(v['roofline'])} |")
    lines += ["", "Decode figures: the median step that prefilled nothing (all rows decoding); % roofline = decode "
              "tokens/s over batch x bandwidth / (weights + every row's KV at the mean context).", ""]
    if batch1:
        lines += ["## Batch-1 decode", "", "| model | engine | graphs | step ms | tokens/s | % roofline |",
                  "|---|---|---|---|---|---|"] + batch1 + [""]

    if results.get("deepseek", {}).get("rows"):
        from .bench_deepseek import markdown
        lines += ["## DeepSeek-V2-Lite decode (DeepSeek-GRM-16B's shape)", "",
                  markdown(results["deepseek"]["rows"], "random weights" + (" (dry run: a tiny config)" if base["dry_run"]
                                                                            else ", bf16")), ""]

    failed = [(k, r["error"]) for k, r in results.items() if "error" in r]
    lines += ["## Failed or skipped parts", ""]
    lines += [f"- **{k}**: `{e.strip().splitlines()[-1] if e.strip() else e}`" for k, e in failed] or ["none"]
    mem = [(k, v["memory"]) for k, r in results.items() if k.startswith("minigrm:")
           for n, v in r.get("variants", {}).items() if n == "graphs + cascade" and v.get("memory")]
    if mem:
        lines += ["", "## KV sizing (profiled warm-up)", ""]
        lines += [f"- {k}: prefill peak {m['prefill'] / 2**30:.2f} GiB, decode pass (graph pool) "
                  f"{m['decode'] / 2**30:.2f} GiB, kept free {m['reserved'] / 2**30:.2f} GiB" for k, m in mem]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
