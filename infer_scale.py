"""Inference-time scaling of a GRM: greedy, Voting@k and MetaRM@k, with evaluation.

    python infer_scale.py                                            # the shipped demo GRM + meta RM
    python infer_scale.py --model GRM --meta-rm METARM --data rewardbench.jsonl rmb/ --k-max 32
    torchrun --nproc_per_node=8 infer_scale.py --model ... --data ...  # items split across GPUs

One run (paper §4, Eq. 14; GRM_SPEC §6):
  1. for every item, one greedy judgment and k_max sampled ones (temperature 0.5), each over its
     own seeded shuffle of the responses (grm.py: the greedy one too, so no score depends on
     where the data stores the chosen response);
  2. every judgment is parsed and appended to <out>/judgments.jsonl the moment it is done; a
     rerun with the same --out resumes: nothing is sampled twice, nothing is lost on Ctrl-C, and
     a run with other settings (model, data, seed, temperature, max tokens, dtype) is refused;
  3. the meta RM (if given) rates every sampled judgment (<out>/meta.jsonl, also resumable);
  4. Voting@k and MetaRM@k (the top k/2 by meta reward) for k = 1, 2, 4, ..., k_max take each
     item's first k samples. Printed and written (<out>/results.json, results.csv, scaling.svg,
     rewardbench/<setting>.json): accuracy with the paper's tie rule (a tie in the voted scores
     is broken by a shuffle drawn for each item), strict accuracy (a tie is wrong), RewardBench's
     convention (a tie or no valid judgment counts 1/n), each with a 95% bootstrap interval and
     its number of items; ROC-AUC for single responses (their mean voted score; an item without
     a valid judgment ranks lowest); invalid and truncated rates; per subset, per benchmark
     (benchmarks.py: RewardBench sections, RMB, PPE Correctness, RewardBench 2) and Overall.
"""
import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

import minigrm
from minigrm import cli, distributed, grm, judgments, runs
from minigrm.data import append_jsonl, load_items, read_results
from minigrm.engine import Engine
from minigrm.meta_rm import check_meta_rm_folder, load_meta_rm
from minigrm.report import print_table, write_results

DEMO = Path(__file__).resolve().parent / "minigrm" / "demo"
GREEDY = grm.GREEDY


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO / "grm"), type=cli.existing_folder,
                    help="GRM: an HF folder (default: the demo GRM)")
    ap.add_argument("--meta-rm", default=None, type=cli.existing_folder,
                    help="meta RM folder (default: the demo meta RM with the demo GRM)")
    ap.add_argument("--no-meta-rm", action="store_true", help="skip MetaRM@k")
    ap.add_argument("--judge-baseline", action="store_true",
                    help="the LLM-as-a-judge baseline: the paper's pick-the-best prompt, Voting@k = majority vote "
                         "(pairs and lists only; no meta RM)")
    ap.add_argument("--data", nargs="+", default=[str(DEMO / "data" / "test.jsonl")],
                    help="JSONL / JSON files or folders of pairs, lists, singles, RMB or RewardBench 2 records")
    ap.add_argument("--out", default="out/infer_scale", help="output folder (resumes if it holds this run)")
    ap.add_argument("--k-max", type=cli.positive_int, default=16, help="judgments sampled per item")
    ap.add_argument("--temperature", type=cli.nonneg_float, default=0.5, help="sampling temperature (paper: 0.5)")
    ap.add_argument("--max-tokens", type=cli.positive_int, default=1024,
                    help="max tokens per judgment (a longer one is invalid, counted as truncated)")
    ap.add_argument("--limit", type=cli.nonneg_int, default=None, help="evaluate only the first N items")
    ap.add_argument("--seed", type=int, default=0, help="seed of shuffles, samples and tie-breaks")
    ap.add_argument("--dtype", default=None, type=cli.dtype_name,
                    help="float32 / bfloat16 / float16 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--device", default=None, type=cli.device_name, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--chat-template", default=None,
                    help="chat template family for a folder whose template is not recognised (e.g. chatml)")
    ap.add_argument("--chunk", type=cli.positive_int, default=64, help="items sampled together (bounds memory)")
    ap.add_argument("--max-num-seqs", type=cli.positive_int, default=256, help="sequences decoded together")
    ap.add_argument("--by-subset", action="store_true", help="print every subset's rows (default: up to 8 subsets)")
    ap.add_argument("--n-boot", type=cli.positive_int, default=1000, help="bootstrap resamples for the 95%% intervals")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_engine_args(ap)
    args = ap.parse_args(argv)
    if args.meta_rm is None and not args.no_meta_rm and args.model == str(DEMO / "grm"):
        args.meta_rm = str(DEMO / "meta_rm")
    if args.no_meta_rm or args.judge_baseline:
        args.meta_rm = None
    for p in args.data:
        if not Path(p).exists():
            ap.error(f"--data: {p} not found")
    if args.meta_rm:
        try:
            check_meta_rm_folder(args.meta_rm)
        except ValueError as e:
            ap.error(f"--meta-rm: {e}")
    return args


def model_dtype(args, d) -> torch.dtype:
    return getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if d.device.type == "cuda" else torch.float32)


def settings_of(args, d) -> dict:
    """What shapes the judgments and meta rewards on disk (runs.claim refuses a mismatch)."""
    ignore = ("out", "k_max", "limit", "chunk", "max_num_seqs", "by_subset", "n_boot", "no_progress", "device",
              "no_meta_rm", "dtype", "cuda_graphs")
    return {**cli.recorded_settings(args, ("model", "data", "meta_rm"), ignore), "dtype": str(model_dtype(args, d))}


# ---------------------------------------------------------------------------- sampling

def sample_judgments(items, args, d, path) -> None:
    """Append every missing (item, sample) judgment to `path`, as each one finishes."""
    done = {(r["item"], r["sample"]) for r in read_results(path, required=("item", "sample"))}
    todo = [(it, s) for it in items for s in [GREEDY, *range(args.k_max)] if (str(it.id), s) not in done]
    print(f"[rank {d.rank}] {len(done)} judgments on disk, {len(todo)} to sample", flush=True)
    if not todo:
        return
    model = minigrm.load_model(args.model, dtype=model_dtype(args, d), device=d.device)
    tok = minigrm.load_tokenizer(args.model, chat_template=args.chat_template)
    engine = Engine(model, tok, max_num_seqs=args.max_num_seqs, progress=not args.no_progress,
                    **cli.engine_kwargs(args))
    refused = judgments.sample(engine, tok, todo, args.temperature, args.max_tokens, args.seed,
                               lambda record: append_jsonl(path, record), baseline=args.judge_baseline,
                               chunk=args.chunk * (args.k_max + 1))
    if refused:
        print(f"[rank {d.rank}] {len(refused)} judgments refused by the engine, counted invalid ({refused[0]})")
    del engine, model


def rate_judgments(items, args, d, records, path) -> None:
    """Append the meta reward of every sampled judgment that has none yet."""
    done = {(r["item"], r["sample"]) for r in read_results(path)}
    todo = [r for r in records if r["sample"] != GREEDY and (r["item"], r["sample"]) not in done]
    if not todo:
        return
    meta = load_meta_rm(args.meta_rm, dtype=model_dtype(args, d), device=d.device, chat_template=args.chat_template)
    too_long = 0
    for start in range(0, len(todo), 256):
        for r in judgments.rate(meta, items, todo[start:start + 256]):
            too_long += r["meta"] is None
            append_jsonl(path, r)
    if too_long:
        print(f"[rank {d.rank}] {too_long} judgments too long for the meta RM: ranked last by MetaRM@k")


def main(argv=None):
    args = parse_args(argv)
    d = distributed.init(args.device)
    out = Path(args.out)
    items = load_items(args.data)[:args.limit]
    if args.judge_baseline:
        kept = [it for it in items if it.kind in ("pair", "list")]
        if d.main and len(kept) < len(items):
            print(f"--judge-baseline: {len(items) - len(kept)} single-response / several-best items left out")
        items = kept
    suffix = f".rank{d.rank}" if d.world > 1 else ""
    settings = settings_of(args, d)
    with runs.claim(out, settings) if d.main else nullcontext(out):
        d.barrier()
        try:
            mine = d.shard(items)
            sample_judgments(mine, args, d, out / f"judgments{suffix}.jsonl")
            if args.meta_rm:
                rate_judgments(mine, args, d, read_results(out / f"judgments{suffix}.jsonl"),
                               out / f"meta{suffix}.jsonl")
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished judgment is in {out}; rerun the same command to resume")
            sys.exit(130)
        d.barrier()
        if d.main:
            records = [r for f in sorted(out.glob("judgments*.jsonl")) for r in read_results(f)]
            metas = [r for f in sorted(out.glob("meta*.jsonl")) for r in read_results(f)] if args.meta_rm else []
            rows = judgments.settings_rows(items, records, metas, args.k_max, args.seed, args.n_boot)
            title = f"{Path(args.model).name}: {len(items)} items, k_max={args.k_max}, T={args.temperature}"
            print(f"\n{args.model} on {', '.join(args.data)}: {len(items)} items, k_max={args.k_max}, "
                  f"T={args.temperature}, seed {args.seed}")
            print_table(rows, by_subset=args.by_subset)
            write_results(rows, out, args.model, title)
    distributed.shutdown()


if __name__ == "__main__":
    main()
