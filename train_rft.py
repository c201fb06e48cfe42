"""Rejective fine-tuning of a GRM (the cold start, paper §3.2; GRM_SPEC §4), and meta-RM training
(paper §4; GRM_SPEC §6).

    python train_rft.py --model BASE --data pairs.jsonl --out out/rft
    python train_rft.py --meta-rm --model BASE --sampler GRM --data pairs.jsonl --out out/meta_rm
    torchrun --nproc_per_node=8 train_rft.py ...          (items and batches split across ranks)

Stage A, sampling (resumable: every trajectory is appended to <out>/trajectories.jsonl, or
.rank<r>.jsonl per rank, as soon as it is done; a rerun samples only what is missing):
  - non-hinted: N_RFT (--n-rft, 3) judgments per item from --sampler (default --model), each
    over its own seeded shuffle of the responses;
  - hinted: for a --hinted-share fraction of the items (a seeded draw per item; singles never),
    one more judgment with "The best response is: Response j" appended to the prompt;
  - prompts, orders, seeds and grading are grm.py's (singles use the paper's n = 1 training
    prompt, score 0/1); each record: item id, sample index, hinted flag, order, text, length,
    finish reason, correct (Eq. 10; an invalid or truncated judgment is incorrect), valid.
Rejection (rft.select): incorrect trajectories are dropped; an item
whose N_RFT non-hinted samples are all correct is "too easy" and dropped altogether; a
hinted trajectory is kept iff correct. Acceptance, too-easy and invalid rates are printed and
written to <out>/rejection.json.

Stage B, SFT: next-token loss on the accepted judgments only, their TEXT rendered in the
student's chat template and tokenizer (rft.chat_example: a --sampler with another vocabulary
gives the same targets as text; GRM_SPEC §4 samples RFT data from a stronger model), optionally
mixed with --sft-data (chat JSONL {"messages": [...]}, loss on the last assistant turn);
length-grouped batches, AdamW, warmup + cosine, gradient accumulation, clipping,
<out>/checkpoint-<step> and --resume as in train_rl.py.

Decision (the paper leaves it implicit): a hinted trajectory is trained on the prompt
WITHOUT the hint. The hint only steers sampling towards a correct judgment; the model must
learn to produce that judgment from the ordinary prompt, which is all it sees at inference.
Training on the hinted prompt would teach it to rely on a hint it will never get.

--meta-rm: label every non-hinted sampled trajectory (plus --extra-trajectories: records with
"item", "sample", "order", "text", e.g. infer_scale.py's judgments.jsonl of the GRM to be guided;
their greedy judgments are left out) by Eq. 10 under the prompt each was sampled with; judgments
Eq. 10 cannot label are skipped and counted (meta_examples); the input is meta_rm_messages(context, shown responses, judgment) rendered with
the chat template (add_generation_prompt=False); the model is --model's backbone with a new
scalar `score` head (*ForSequenceClassification, num_labels 1, N(0, 0.02) init), trained with
binary cross-entropy on the reward at the last token (paper LR 1e-5). The checkpoint loads with
minigrm.load_meta_rm and transformers' AutoModelForSequenceClassification.

Open choices / deviations: the hinted share (default 0.25), sampling temperature 1.0, the
paper's batch 1024 / 900 steps become a token budget per micro-batch x --grad-accum x
--epochs (or --steps); each micro-batch's loss is a token mean and micro-batches are averaged (not
re-weighted by their token counts); with several ranks the batches of an epoch are cut to a
multiple of the world size so every rank runs the same number.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minigrm import cli, distributed, grm, judgments, resume, runs, training
from minigrm.adapter import for_training, write_merged
from minigrm.checkpoint import load_model
from minigrm.config import ModelConfig
from minigrm.data import append_jsonl, load_items, read_jsonl, read_results, write_json, write_jsonl
from minigrm.engine import Engine
from minigrm.kv_cache import kv_bytes_per_token
from minigrm.heldout import HeldOut, MetaHeldOut
from minigrm.meta_rm import MetaRM, bce_loss, classifier_from, meta_batches
from minigrm.optim import clip_grad_norm, lr_at, make_optimizer, set_lr
from minigrm.rft import chat_example, select, sft_batches, sft_loss
from minigrm.prompts import meta_rm_messages
from minigrm.sampling import SamplingParams
from minigrm.throughput import mfu, train_flops
from minigrm.tokenizer import load_tokenizer
from minigrm.tracking import Tracker
from minigrm.voting import permute



def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=cli.existing_folder, help="HF folder to fine-tune (paper: a base model)")
    ap.add_argument("--sampler", default=None, type=cli.existing_folder, help="HF folder that samples trajectories (default: --model)")
    ap.add_argument("--data", required=True, nargs="+", help="JSONL files / folders of pairs, lists or singles (data.py)")
    ap.add_argument("--out", default="out/rft", help="output folder: trajectories, log.jsonl, checkpoints")
    ap.add_argument("--n-rft", type=cli.positive_int, default=3, help="non-hinted samples per item (paper: 3)")
    ap.add_argument("--hinted-share", type=cli.fraction, default=0.25, help="share of items that get one hinted sample (open)")
    ap.add_argument("--temperature", type=cli.nonneg_float, default=1.0, help="sampling temperature (open)")
    ap.add_argument("--max-tokens", type=cli.positive_int, default=1024, help="max tokens per sampled judgment")
    ap.add_argument("--sft-data", default=None, help="general chat JSONL {'messages': [...]} mixed into SFT")
    ap.add_argument("--meta-rm", action="store_true", help="train a meta RM (scalar head) instead of the GRM")
    ap.add_argument("--trajectories", default=None,
                    help="pre-sampled judgments {'item', 'sample', 'hinted', 'order', 'text'} on the RFT prompts (e.g. "
                         "from a stronger model served elsewhere) used instead of sampling; graded here by Eq. 10")
    ap.add_argument("--no-rejection", action="store_true",
                    help="train on every trajectory, right or wrong (the paper's 'w/o rejective sampling' ablation)")
    ap.add_argument("--extra-trajectories", default=None,
                    help="meta RM: JSONL of more judgments {'item', 'order', 'text'} from the GRM to guide")
    ap.add_argument("--epochs", type=cli.positive_int, default=1, help="passes over the accepted trajectories")
    ap.add_argument("--steps", type=cli.positive_int, default=None,
                    help="optimizer steps instead of --epochs (as the paper's fixed 900 steps): the epochs repeat, each "
                         "with its own shuffle, until this many (the ablations train as many steps as the full recipe)")
    ap.add_argument("--max-tokens-per-batch", type=cli.positive_int, default=16384, help="padded tokens per micro-batch")
    ap.add_argument("--grad-accum", type=cli.positive_int, default=1, help="micro-batches per optimizer step (per rank)")
    cli.add_training_args(ap, lr=None, lr_help="peak learning rate (paper: 5e-6 RFT, 1e-5 meta RM)")
    args = ap.parse_args(argv)
    args.sampler = args.sampler or args.model
    args.lr = args.lr if args.lr is not None else (1e-5 if args.meta_rm else 5e-6)
    return args


VOLATILE = cli.TRAINING_VOLATILE


# ---------------------------------------------------------------------------- stage A: sampling

def prompt_ids(tok, item, order, hint: bool = False) -> list[int]:
    return tok.encode(tok.apply_chat_template(grm.messages(item, order, training=True, hint=hint)))


def planned_samples(item, args) -> list[tuple[int, bool, list[int]]]:
    """(sample index, hinted, order) of every trajectory stage A draws for an item."""
    plan = [(j, False, grm.order(item, j, args.seed)) for j in range(args.n_rft)]
    if item.kind != "single" and not args.meta_rm and grm.coin(item, args.seed, "hinted") < args.hinted_share:
        plan.append((args.n_rft, True, grm.order(item, args.n_rft, args.seed)))
    return plan


def sample_trajectories(items, args, d, path: Path) -> None:
    done = {(r["item"], r["sample"]) for r in read_results(path, required=("item", "sample"))}
    todo = [(it, j, h, o) for it in items for j, h, o in planned_samples(it, args) if (str(it.id), j) not in done]
    print(f"[rank {d.rank}] {len(done)} trajectories on disk, {len(todo)} to sample", flush=True)
    if not todo:
        return
    dtype = getattr(torch, args.dtype)
    model = load_model(args.sampler, dtype=dtype, device=d.device)
    tok = load_tokenizer(args.sampler, chat_template=args.chat_template)
    blocks = max(2, int(args.kv_cache_gb * 2**30 // (kv_bytes_per_token(model.config, dtype) * 16)))
    engine = Engine(model, tok, num_blocks=blocks, progress=False, **cli.engine_kwargs(args))
    params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)

    def save(i, _, c):
        item, j, hinted, order = todo[i]
        v = grm.judge(item, order, c.text, c.finish_reason, training=True)
        append_jsonl(path, {"item": str(item.id), "sample": j, "hinted": hinted, "order": order, "training": True,
                            "text": c.text, "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                            "correct": v.correct, "valid": v.valid})

    engine.generate([prompt_ids(tok, it, o, h) for it, _, h, o in todo], params, on_finish=save,
                    seeds=[grm.stream_seed(it, j, args.seed) for it, j, _, _ in todo])
    del engine, model


def given_trajectories(path, by_id) -> list[dict]:
    """--trajectories: records sampled elsewhere on the RFT prompts (grm.messages(training=True)),
    graded here exactly as stage A grades its own samples."""
    records = []
    for r in read_jsonl(path, required=("item", "sample", "hinted", "order", "text")):
        if r["item"] not in by_id:
            raise ValueError(f"{path}: a trajectory of item {r['item']!r} is not in --data")
        v = grm.judge(by_id[r["item"]], r["order"], r["text"], r.get("finish_reason", "stop"), training=True)
        records.append({**r, "training": True, "correct": v.correct, "valid": v.valid})
    return records


# ---------------------------------------------------------------------------- stage B: examples

def rft_examples(accepted, by_id, tok) -> list[tuple[list[int], list[bool]]]:
    """The NON-hinted prompt (same order) + the accepted judgment's TEXT, rendered and encoded by
    the student's own chat template and tokenizer (so a --sampler with another vocabulary works);
    loss on the judgment and the template's end-of-turn only."""
    return [chat_example(tok, grm.messages(by_id[r["item"]], r["order"], training=True), r["text"])
            for r in accepted]


def chat_examples(path, tok) -> list[tuple[list[int], list[bool]]]:
    """General chat data {"messages": [...]}: loss on the last assistant turn."""
    out = []
    for r in read_jsonl(path, required=("messages",)):
        msgs = r["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{path}: the last message must be the assistant's")
        out.append(chat_example(tok, msgs[:-1], msgs[-1]["content"]))
    return out


def meta_examples(records, by_id, tok) -> tuple[list[tuple[list[int], float]], int]:
    """(meta RM input ids, 1.0 if the judgment is correct by Eq. 10 else 0.0), and how many
    records were skipped: greedy and hinted judgments (the paper's meta RM learns from sampled,
    non-hinted ones) and judgments Eq. 10 cannot label (a single response judged on the 1..10
    evaluation prompt, an item with several correct responses). Each record is graded with the
    prompt it was sampled with (train_rft.py's: "training": true; infer_scale.py's: evaluation)."""
    out, skipped = [], 0
    for r in records:
        if r["item"] not in by_id:
            raise ValueError(f"a judgment of item {r['item']!r} (--extra-trajectories?) is not in --data")
        item = by_id[r["item"]]
        v = grm.judge(item, r["order"], r["text"], r.get("finish_reason", "stop"), training=r.get("training", False))
        if r.get("hinted") or r["sample"] == grm.GREEDY or v.correct is None:
            skipped += 1
            continue
        text = tok.apply_chat_template(meta_rm_messages(item.prompt, permute(item.responses, r["order"]), r["text"]),
                                       add_generation_prompt=False)
        out.append((tok.encode(text), float(v.correct)))
    return out, skipped


def heldout_evaluator(args, d, out: Path, model, tok):
    """-> a function returning this step's held-out metrics (rank 0), or None without --eval-data:
    GRM: greedy and Voting@K on the held-out items with the live weights; meta RM: ROC-AUC of its
    reward on held-out judgments sampled once by --sampler (<out>/eval_judgments.jsonl)."""
    if not args.eval_data or not d.main:
        return None
    items = load_items(args.eval_data)[:args.eval_limit]
    if not args.meta_rm:
        held, engine = HeldOut(items, args.eval_k, 0.5, args.max_tokens, args.seed), Engine(model, tok, progress=False, **cli.engine_kwargs(args))
        return lambda: held.grm(engine, tok)
    path = out / "eval_judgments.jsonl"
    done = {(r["item"], r["sample"]) for r in read_results(path, required=("item", "sample"))}
    jobs = [(it, j) for it in items for j in range(args.eval_k) if (str(it.id), j) not in done]
    if jobs:
        sampler = load_model(args.sampler, dtype=getattr(torch, args.dtype), device=d.device)
        stok = load_tokenizer(args.sampler, chat_template=args.chat_template)
        judgments.sample(Engine(sampler, stok, progress=False, **cli.engine_kwargs(args)), stok, jobs, 0.5, args.max_tokens, args.seed,
                         lambda r: append_jsonl(path, r))
        del sampler
    held = MetaHeldOut(items, read_results(path))
    return lambda: held.auc(MetaRM(model, tok))


# ---------------------------------------------------------------------------- main

def fits(examples, limit: int, what: str, d) -> list:
    """Drop (and count) examples longer than the model's context or the micro-batch budget."""
    kept = [e for e in examples if len(e[0]) <= limit]
    if d.main and len(kept) < len(examples):
        print(f"dropped {len(examples) - len(kept)} {what} longer than {limit} tokens "
              "(the model's context or --max-tokens-per-batch)", flush=True)
    return kept


def main(argv=None):
    args = parse_args(argv)
    d = distributed.init(args.device)
    out = Path(args.out)
    if d.main:  # one run per folder, its settings recorded; a fresh start never overwrites a run
        runs.take(out, cli.recorded_settings(args, ("model", "sampler", "data", "sft_data", "extra_trajectories",
                                                   "trajectories"),
                                             VOLATILE),
                  fresh_ok=bool(args.resume), has_run=lambda o: any(o.glob("trajectories*.jsonl")))
    d.barrier()
    torch.manual_seed(args.seed + d.rank)
    items = load_items(args.data)
    grm.check_trainable(items)
    by_id = {str(it.id): it for it in items}
    suffix = f".rank{d.rank}" if d.world > 1 else ""

    # stage A: sample (resumable with --resume) or read --trajectories, then reject
    if args.trajectories:
        records = given_trajectories(args.trajectories, by_id)
    else:
        try:
            sample_trajectories(d.shard(items), args, d, out / f"trajectories{suffix}.jsonl")
        except KeyboardInterrupt:
            print(f"\ninterrupted: every finished trajectory is in {out}; rerun with --resume to continue")
            sys.exit(130)
        d.barrier()
        records = [r for f in sorted(out.glob("trajectories*.jsonl")) for r in read_results(f)]
    tok = load_tokenizer(args.model, chat_template=args.chat_template)
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    limit = min(ModelConfig.from_pretrained(args.model).max_position_embeddings, args.max_tokens_per_batch)
    if args.meta_rm:
        if args.extra_trajectories:
            records += list(read_jsonl(args.extra_trajectories, required=("item", "sample", "order", "text")))
        examples, skipped = meta_examples(records, by_id, tok)
        examples = fits(examples, limit, "meta-RM inputs", d)
        stats = {"examples": len(examples), "skipped": skipped,
                 "positive_rate": sum(y for _, y in examples) / max(len(examples), 1)}
    else:
        accepted, stats = select(records, reject=not args.no_rejection)
        examples = fits(rft_examples(accepted, by_id, tok), limit, "accepted trajectories", d)
        if args.sft_data:
            chat = fits(chat_examples(args.sft_data, tok), limit, "--sft-data conversations", d)
            stats["sft_data_examples"] = len(chat)
            examples += chat
    if d.main:
        print("rejection" if not args.meta_rm else "meta RM data", json.dumps(stats), flush=True)
        write_json(out / ("meta_data.json" if args.meta_rm else "rejection.json"), stats)
    if not examples:
        sys.exit("train_rft.py: no training examples (every item too easy or every trajectory rejected?)")

    # stage B: the model, its loss, the batches of every epoch (a pure function of the seed)
    dtype = getattr(torch, args.dtype)
    resume_from = resume.resolve_resume(args.resume, out)
    build = (lambda path: classifier_from(path, dtype, d.device, args.seed)) if args.meta_rm else None
    model = for_training(args.model, resume_from, dtype=dtype, device=d.device, build=build, **cli.lora_kwargs(args)).train()
    if args.meta_rm:  # a scalar head on the backbone, binary cross-entropy on Eq. 10 labels
        policy, loss_fn, batcher = training.wrap(model, d, args.fsdp), bce_loss, meta_batches
    else:  # next-token loss on the accepted judgments
        policy, loss_fn, batcher = training.wrap(training.LogprobForward(model), d, args.fsdp), sft_loss, sft_batches
    batches_of = lambda epoch: batcher(examples, args.max_tokens_per_batch, pad_id, args.seed + epoch)  # noqa: E731
    model.model.gradient_checkpointing = args.grad_checkpointing
    optimizer = make_optimizer(policy, args.lr, args.weight_decay)
    per_rank = len(batches_of(0)) // d.world
    steps_per_epoch = per_rank // args.grad_accum
    total = args.steps or steps_per_epoch * args.epochs
    if steps_per_epoch == 0:
        sys.exit(f"train_rft.py: {per_rank} batches per rank make no step of --grad-accum {args.grad_accum}")
    start = resume.load_checkpoint(resume_from, policy, optimizer, d)["step"] if resume_from else 0
    log_path = out / "log.jsonl"
    if d.main:  # drop records of steps after the checkpoint we resume from (and a torn last line)
        write_jsonl(log_path, [r for r in read_results(log_path, required=("step",)) if r["step"] <= start])
    tracker = Tracker(out, args.tensorboard, args.wandb_project, vars(args), enabled=d.main)
    evaluate = heldout_evaluator(args, d, out, model, tok)
    best_key = "eval/meta_auc" if args.meta_rm else f"eval/voting@{args.eval_k}"

    with training.interrupt_guard() as stop:
        for step in range(start, total):
            t0 = time.time()
            epoch, k = divmod(step, steps_per_epoch)
            batches = d.shard(batches_of(epoch)[:per_rank * d.world])[k * args.grad_accum:(k + 1) * args.grad_accum]
            lr = lr_at(step, args.lr, args.warmup_steps, total, args.min_lr_ratio)
            set_lr(optimizer, lr)
            loss_sum, tokens = 0.0, 0.0
            for i, batch in enumerate(batches):
                batch = [t.to(d.device) for t in batch]
                with training.grad_sync(policy, i == len(batches) - 1):
                    loss = loss_fn(policy, batch)
                    (loss / len(batches)).backward()
                loss_sum += loss.item() / len(batches)
                tokens += float(batch[0].numel())
            grad_norm = clip_grad_norm(policy, args.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            m = training.reduce_metrics(d, {"loss": (loss_sum, 1.0), "tokens": (tokens, 1.0 / d.world),
                                            "time": (time.time() - t0, 1.0)})
            record = {"step": step + 1, "epoch": epoch, **m, "lr": lr, "grad_norm": grad_norm,
                      "update_tok_per_s": m["tokens"] / max(m["time"], 1e-9),  # tokens: all ranks'
                      "mfu": mfu(train_flops(model, m["tokens"]) / d.world, m["time"], d.device)}
            metric = None
            if args.eval_data and ((step + 1) % args.eval_every == 0 or step + 1 == total):
                with training.full_weights(policy):  # rank 0 evaluates on the full weights, the others wait
                    model.eval()
                    record.update(evaluate() if evaluate else {})
                    model.train()
                    d.barrier()
                if args.keep_best:  # every rank must agree on whether to save: rank 0's number for all
                    metric = d.all_sum([record.get(best_key, 0.0) if d.main else 0.0])[0]
            if d.main:
                tracker.log(record)
                print(f"step {step + 1}/{total} | loss {m['loss']:.4f} | lr {lr:.2e} | gnorm {grad_norm:.3f} | "
                      f"tokens {m['tokens']:.0f} | {m['time']:.1f}s" + "".join(
                          f" | {k} {v:.3f}" for k, v in record.items() if k.startswith("eval/")), flush=True)
            if resume.checkpoint_step(out, step + 1, total, model, policy, optimizer, d, stop,
                                        save_every=args.save_every, keep_last=args.keep_last,
                                        tokenizer_dir=args.model, extra={"seed": args.seed}, metric=metric):
                break
    tracker.close()
    if args.merge and args.lora_rank and not stop["requested"] and write_merged(policy, model, out / "merged",
                                                                                args.model, d):
        print(f"wrote {out / 'merged'}: the adapters folded into a plain HF folder", flush=True)
    if d.main:
        runs.release(out)
    distributed.shutdown()
    if training.exit_code(stop):
        sys.exit(training.exit_code(stop))


if __name__ == "__main__":
    main()
