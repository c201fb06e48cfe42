"""Inference-time scaling of a GRM: greedy, Voting@k and MetaRM@k, with evaluation.

    python infer_scale.py                                            # the shipped demo GRM + meta RM
    python infer_scale.py --model GRM --meta-rm METARM --data rewardbench.jsonl --k-max 32
    torchrun --nproc_per_node=8 infer_scale.py --model ... --data ...  # items split across GPUs

One run (paper §4, Eq. 14; GRM_SPEC §6):
  1. for every item, one greedy judgment (responses in their original order) and k_max sampled
     judgments (temperature 0.5), each over its own seeded shuffle of the responses;
  2. every judgment is parsed and appended to <out>/judgments.jsonl the moment it is done; a
     rerun with the same --out resumes: nothing is sampled twice, nothing is lost on Ctrl-C;
  3. the meta RM (if given) rates every sampled judgment (<out>/meta.jsonl, also resumable);
  4. Voting@k and MetaRM@k (top k/2 by meta reward) for k = 1, 2, 4, ..., k_max are computed by
     taking each item's first k samples; the table goes to the terminal, <out>/results.json,
     <out>/results.csv and the plot <out>/scaling.svg (minigrm/plot.py, no plotting library).
Accuracy uses the paper's tie rule (shuffle, then argmax) and a strict rule (tie = wrong);
single-response items (ReaLMistake-style) are scored by ROC-AUC of the voted score.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import torch

import minigrm
from minigrm import distributed
from minigrm.data import append_jsonl, item_key, load_items, read_jsonl
from minigrm.engine import Engine, sample_seed
from minigrm.evaluate import summarize
from minigrm.meta_rm import load_meta_rm
from minigrm.parser import parse_judgment
from minigrm.plot import scaling_svg
from minigrm.prompts import grm_messages
from minigrm.rewards import is_correct
from minigrm.sampling import SamplingParams
from minigrm.voting import meta_rm_filter, permute, shuffled_order, unshuffle, vote, voting_at_k

DEMO = Path(__file__).resolve().parent / "minigrm" / "demo"
GREEDY = "greedy"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO / "grm"), help="GRM: an HF folder (default: the demo GRM)")
    ap.add_argument("--meta-rm", default=None, help="meta RM folder (default: the demo meta RM with the demo GRM)")
    ap.add_argument("--no-meta-rm", action="store_true", help="skip MetaRM@k")
    ap.add_argument("--data", default=str(DEMO / "data" / "test.jsonl"), help="JSONL of pairs, lists or singles")
    ap.add_argument("--out", default="out/infer_scale", help="output folder (resumes if it holds a run)")
    ap.add_argument("--k-max", type=int, default=16, help="judgments sampled per item")
    ap.add_argument("--k-meta", type=float, default=0.5, help="MetaRM@k keeps round(k * this) judgments")
    ap.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (paper: 0.5)")
    ap.add_argument("--max-tokens", type=int, default=512, help="max tokens per judgment")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    ap.add_argument("--seed", type=int, default=0, help="seed of shuffles, samples and tie-breaks")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--chunk", type=int, default=64, help="items sampled together (bounds memory, not results)")
    ap.add_argument("--max-num-seqs", type=int, default=256, help="sequences decoded together (engine batch)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="eager decode steps (CUDA graphs are on by default on CUDA)")
    args = ap.parse_args(argv)
    if args.meta_rm is None and not args.no_meta_rm and args.model == str(DEMO / "grm"):
        args.meta_rm = str(DEMO / "meta_rm")
    return args


def ks_up_to(k_max: int) -> list[int]:
    ks = [1]
    while ks[-1] * 2 <= k_max:
        ks.append(ks[-1] * 2)
    return ks if ks[-1] == k_max else ks + [k_max]


def order_for(item, sample, seed) -> list[int]:
    n = len(item.responses)
    return list(range(n)) if sample == GREEDY else shuffled_order(n, sample_seed(seed, item_key(item), sample))


def model_dtype(args, d) -> torch.dtype:
    return getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if d.device.type == "cuda" else torch.float32)


# ---------------------------------------------------------------------------- sampling

def sample_judgments(items, args, d, path) -> None:
    """Append every missing (item, sample) judgment to `path`, as each one finishes."""
    done = {(r["item"], r["sample"]) for r in read_jsonl(path)} if path.exists() else set()
    todo = [(it, s) for it in items for s in [GREEDY, *range(args.k_max)] if (str(it.id), s) not in done]
    print(f"[rank {d.rank}] {len(done)} judgments on disk, {len(todo)} to sample", flush=True)
    if not todo:
        return
    dtype = model_dtype(args, d)
    model = minigrm.load_model(args.model, dtype=dtype, device=d.device)
    tok = minigrm.load_tokenizer(args.model)
    engine = Engine(model, tok, max_num_seqs=args.max_num_seqs, progress=not args.no_progress,
                    cuda_graphs=False if args.no_cuda_graphs else None)
    for start in range(0, len(todo), args.chunk * (args.k_max + 1)):
        chunk = todo[start:start + args.chunk * (args.k_max + 1)]
        for greedy in (True, False):
            jobs = [(it, s) for it, s in chunk if (s == GREEDY) == greedy]
            if not jobs:
                continue
            orders = [order_for(it, s, args.seed) for it, s in jobs]
            prompts = [tok.apply_chat_template(grm_messages(it.prompt, permute(it.responses, o)))
                       for (it, _), o in zip(jobs, orders)]
            params = SamplingParams(temperature=0.0 if greedy else args.temperature, max_tokens=args.max_tokens)
            seeds = [sample_seed(args.seed, item_key(it), 0 if s == GREEDY else s + 1) for it, s in jobs]

            def save(i, _, c, jobs=jobs, orders=orders):
                item, sample = jobs[i]
                j = parse_judgment(c.text, len(item.responses))  # 1..10, singles too (GRM_SPEC §1)
                append_jsonl(path, {"item": str(item.id), "sample": sample, "order": orders[i],
                                    "scores": j.scores if c.finish_reason != "length" else None,
                                    "reason": j.reason if c.finish_reason != "length" else "truncated",
                                    "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                                    "text": c.text})
            engine.generate(prompts, params, on_finish=save, seeds=seeds)
    del engine, model


def rate_judgments(items, args, d, judgments, path) -> None:
    """Append the meta reward of every sampled judgment that has none yet."""
    done = {(r["item"], r["sample"]) for r in read_jsonl(path)} if path.exists() else set()
    by_id = {str(it.id): it for it in items}
    todo = [r for r in judgments if r["sample"] != GREEDY and (r["item"], r["sample"]) not in done]
    if not todo:
        return
    dtype = model_dtype(args, d)
    meta = load_meta_rm(args.meta_rm, dtype=dtype, device=d.device)
    for start in range(0, len(todo), 256):
        batch = todo[start:start + 256]
        rewards = meta.score([by_id[r["item"]].prompt for r in batch],
                             [permute(by_id[r["item"]].responses, r["order"]) for r in batch],
                             [r["text"] for r in batch])
        for r, m in zip(batch, rewards):
            append_jsonl(path, {"item": r["item"], "sample": r["sample"], "meta": m})


# ---------------------------------------------------------------------------- evaluation

def item_record(item, samples, meta, k_meta, seed) -> dict:
    """One item's result under one setting; samples = [(shown scores or None, order)]."""
    rec = {"subset": item.subset, "n_samples": len(samples), "n_invalid": sum(s is None for s, _ in samples)}
    if item.kind == "single":
        kept = range(len(samples)) if meta is None else meta_rm_filter(samples, meta, k_meta)
        summed = vote([unshuffle(samples[i][0], samples[i][1]) for i in kept])
        rec.update(score=None if summed is None else summed[0], label=item.truth[0])
    elif len(samples) == 1 and meta is None:
        scores = unshuffle(*samples[0])
        rec.update(correct=is_correct(scores, item.truth), correct_strict=is_correct(scores, item.truth))
    else:
        v = voting_at_k(samples, item.truth, rng_seed=seed, meta_rewards=meta, k_meta=k_meta)
        rec.update(correct=v.correct, correct_strict=v.correct_strict)
    return rec


def evaluate(items, judgments, metas, args) -> list[dict]:
    by_item = {}
    for r in judgments:
        by_item.setdefault(r["item"], {})[r["sample"]] = (r["scores"], r["order"])
    meta = {(r["item"], r["sample"]): r["meta"] for r in metas}
    settings = [("Greedy", GREEDY, None)] + [(f"Voting@{k}", k, False) for k in ks_up_to(args.k_max)]
    if metas:
        settings += [(f"MetaRM@{k}", k, True) for k in ks_up_to(args.k_max) if k >= 2]
    rows = []
    for name, k, use_meta in settings:
        records = []
        for it in items:
            got = by_item.get(str(it.id), {})
            if k == GREEDY:
                samples, m = [got[GREEDY]], None
            else:
                samples = [got[j] for j in range(k)]
                m = [meta[(str(it.id), j)] for j in range(k)] if use_meta else None
            records.append(item_record(it, samples, m, max(1, round(k * args.k_meta)) if use_meta else None,
                                       args.seed))
        s = summarize(records)
        row = {"setting": name, "k": 1 if k == GREEDY else k, "items": s["n"], "accuracy": s["accuracy"],
               "accuracy_strict": s.get("accuracy_strict"), "invalid_rate": s["invalid_rate"],
               "roc_auc": s.get("roc_auc")}
        if "rewardbench" in s:
            row.update({f"RB {sec}": v for sec, v in s["rewardbench"].items()})
        rows.append(row)
    return rows


def report(rows, out: Path, title: str = "") -> None:
    cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))
    print("(accuracy, strict accuracy, invalid rate and ROC-AUC in %)")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    svg = scaling_svg(rows, title=title)
    if svg:
        (out / "scaling.svg").write_text(svg)


def main(argv=None):
    args = parse_args(argv)
    for what, p in (("GRM", args.model), ("data", args.data), ("meta RM", args.meta_rm)):
        if p is not None and not Path(p).exists():
            demo = " (the demo checkpoints are not in this checkout yet: pass --model/--data)" \
                if str(DEMO) in str(p) else ""
            sys.exit(f"infer_scale.py: {what} not found: {p}{demo}")
    d = distributed.init(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = load_items(args.data)[:args.limit]
    suffix = f".rank{d.rank}" if d.world > 1 else ""
    try:
        mine = d.shard(items)
        sample_judgments(mine, args, d, out / f"judgments{suffix}.jsonl")
        if args.meta_rm and not args.no_meta_rm:
            judgments = list(read_jsonl(out / f"judgments{suffix}.jsonl"))
            rate_judgments(mine, args, d, judgments, out / f"meta{suffix}.jsonl")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: every finished judgment is in {out}; rerun the same command to resume")
    d.barrier()
    if d.main:
        files = sorted(out.glob("judgments*.jsonl"))
        judgments = [r for f in files for r in read_jsonl(f)]
        metas = [r for f in sorted(out.glob("meta*.jsonl")) for r in read_jsonl(f)]
        rows = evaluate(items, judgments, metas if args.meta_rm and not args.no_meta_rm else [], args)
        title = f"{Path(args.model).name} on {Path(args.data).name}: {len(items)} items"
        print(f"\n{args.model} on {args.data}: {len(items)} items, k_max={args.k_max}, T={args.temperature}")
        report(rows, out, title)
    distributed.shutdown()


if __name__ == "__main__":
    main()
