"""Rule-based online RL of a GRM with GRPO (paper §3.2, Eq. 10 / 11; GRM_SPEC §5).

    python train_rl.py --model RFT_CHECKPOINT --data pairs.jsonl --out out/rl --steps 900
    torchrun --nproc_per_node=8 train_rl.py --model ... --data ... [--fsdp]

Each step, top to bottom:
  1. rollout: take the step's prompts (--prompts-per-step, split across ranks), show each item's
     responses in a seeded random order, render the GRM prompt with the chat template, and
     sample G judgments per prompt from the CURRENT policy (the Engine reads the live weights);
  2. reward: parse each judgment, map its scores back to the original order, r = +1 if correct
     (Eq. 10), -1 otherwise (invalid or truncated judgments included);
  3. advantage: group-normalised within each prompt's G samples (grpo.group_advantages);
  4. loss: old log-probs (the policy before this update) and reference log-probs, both from
     the same chunked log-prob forward, no grad; then the clipped GRPO objective with the k3
     KL penalty, over micro-batches with gradient accumulation;
  5. update: clip the gradient norm, AdamW with linear warmup + cosine decay;
  6. log (<out>/log.jsonl and one stdout line, metrics all-reduced over ranks) and checkpoint
     (<out>/checkpoint-<step>, an HF folder; --resume continues exactly where it stopped).

Items: pairs and lists use the default GRM prompt (scores 1..10); singles use the n = 1
training prompt (scores 0/1, correct iff it equals the label).

Deviations from the paper's GRPO, and open choices (GRM_SPEC marks them open):
  - ε = 0.2 (--clip-eps), KL = GRPO's k3 estimator per token, rollout temperature 1.0, max
    judgment length --max-tokens (the paper states none of these).
  - Advantages use the sample std (G - 1) and are 0 for a group with equal rewards (logged
    as frac_reward_zero_std); see grpo.py.
  - One reference model for the whole run (the policy's initialisation unless --ref-model),
    never refreshed; the paper does not say it was updated.
  - Old log-probs come from the training forward, not from the sampler (whose kernels round
    differently), so ρ = 1 exactly on the first pass over a batch; with one pass (the default) they
    are the current log-probs detached, which saves a forward and gives the same gradient.
  - A truncated judgment (hit --max-tokens) is invalid, even if it closed its \\boxed{}: the
    same rule infer_scale.py applies.
  - --epochs-per-batch passes over each rollout batch, one optimizer step per pass (GRPO's μ);
    the paper's batch size (512) and step count (900) are flags, not defaults baked in.
  - Prompts longer than --max-prompt-tokens are dropped before training (and counted).
  - --drop-too-easy samples 3 judgments per item from the reference model at the rollout
    temperature (the paper's reference model is unspecified) and drops items right 3/3.
  - Under --fsdp each rank holds the full weights while sampling (training.full_weights).
  - Prefix sharing stays on within a rollout (the G samples and shuffles of a query share
    their prompt's K/V), but the engine's cache of freed prefix blocks is cleared after every
    update: those K/V were computed with the previous weights.
"""
import argparse
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from minigrm import cli, distributed, grm, lora, resume, runs, training
from minigrm.adapter import for_training, write_merged
from minigrm.batching import right_pad
from minigrm.checkpoint import load_model
from minigrm.data import load_items, read_json_list, read_results, write_json, write_jsonl
from minigrm.engine import Engine
from minigrm.grpo import group_advantages, grpo_loss
from minigrm.heldout import HeldOut
from minigrm.kv_cache import kv_bytes_per_token
from minigrm.optim import clip_grad_norm, lr_at, make_optimizer, set_lr
from minigrm.sampling import SamplingParams
from minigrm.throughput import mfu, train_flops
from minigrm.tokenizer import load_tokenizer
from minigrm.tracking import Tracker


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=cli.existing_folder, help="HF folder: the policy's initialisation (e.g. the RFT checkpoint)")
    ap.add_argument("--ref-model", default=None, type=cli.existing_folder, help="HF folder of the frozen KL reference (default: --model)")
    ap.add_argument("--data", required=True, nargs="+", help="JSONL files / folders of pairs, lists or singles (data.py)")
    ap.add_argument("--out", default="out/rl", help="output folder: log.jsonl, checkpoint-<step>/, latest")
    ap.add_argument("--steps", type=cli.positive_int, default=900, help="RL steps (rollout + update) in total (paper: 900)")
    ap.add_argument("--prompts-per-step", type=cli.positive_int, default=128,
                    help="prompts per step over all ranks; x group size = outputs per step (paper: 512)")
    ap.add_argument("--group-size", type=cli.positive_int, default=4, help="G, judgments sampled per prompt (paper: 4)")
    ap.add_argument("--beta", type=cli.nonneg_float, default=0.08, help="KL coefficient (paper: 0.08 for 27B, 0.002 for 16B)")
    ap.add_argument("--clip-eps", type=cli.positive_float, default=0.2, help="PPO clip range epsilon (open; 0.2 is conventional)")
    ap.add_argument("--epochs-per-batch", type=cli.positive_int, default=1, help="optimizer passes over each rollout batch")
    ap.add_argument("--micro-batch-size", type=cli.positive_int, default=8,
                    help="sequences per forward/backward; gradients accumulate over the rank's whole batch")
    ap.add_argument("--no-shared-prefix", dest="shared_prefix", action="store_false",
                    help="one full forward per sequence instead of each prompt's tokens once for its G samples")
    ap.add_argument("--temperature", type=cli.nonneg_float, default=1.0, help="rollout temperature (open; 1.0)")
    ap.add_argument("--max-tokens", type=cli.positive_int, default=1024, help="max tokens per sampled judgment")
    ap.add_argument("--max-prompt-tokens", type=cli.positive_int, default=None,
                    help="drop items whose GRM prompt is longer (default: the model's context - --max-tokens)")
    ap.add_argument("--drop-too-easy", action="store_true",
                    help="before training, drop items the reference model judges right 3 out of 3 times")
    cli.add_training_args(ap, lr=4e-7, lr_help="peak learning rate (paper: 4e-7)")
    args = ap.parse_args(argv)
    if args.group_size < 2:
        ap.error("--group-size must be >= 2: GRPO's advantage compares the samples of a group")
    return args


VOLATILE = cli.TRAINING_VOLATILE + ("steps",)  # may change on resume


# ---------------------------------------------------------------------------- prompts

def render(item, tok, sample, seed: int) -> tuple[list[int], list[int]]:
    """-> (prompt token ids, order): the GRM training prompt with the responses in grm.order."""
    order = grm.order(item, sample, seed)
    return tok.encode(tok.apply_chat_template(grm.messages(item, order, training=True))), order


def items_at(positions: list[int], n_items: int, seed: int) -> list[int]:
    """Item indices at global data positions: position p of the run is item perm_e[p % n] of
    epoch e = p // n's seeded permutation, so the data a step sees is a pure function of the step
    (nothing to save for a resume). Step s covers positions s * P .. (s + 1) * P - 1."""
    out = []
    for pos in positions:
        epoch, i = divmod(pos, n_items)
        perm = list(range(n_items))
        random.Random(seed * 1_000_003 + epoch).shuffle(perm)
        out.append(perm[i])
    return out


def drop_too_easy(items, engine, tok, args, d, cache: Path) -> list:
    """Items that the reference model gets right 3/3 times are dropped (cached in <out>)."""
    easy = read_json_list(cache)
    if easy is None:
        mine = d.shard(list(range(len(items))))
        rendered = [render(items[i], tok, "too-easy", args.seed) for i in mine]
        outs = engine.generate([p for p, _ in rendered], SamplingParams(n=3, temperature=args.temperature,
                                                                       max_tokens=args.max_tokens),
                               seeds=[grm.stream_seed(items[i], "too-easy", args.seed) for i in mine])
        flags = [0.0] * len(items)
        for i, (_, order), samples in zip(mine, rendered, outs):
            flags[i] = float(all(grm.judge(items[i], order, c.text, c.finish_reason, training=True).correct
                                 for c in samples))
        flags = d.all_sum(flags)
        easy = sorted(str(items[i].id) for i, f in enumerate(flags) if f > 0)
        if d.main:
            write_json(cache, easy)
    kept = [it for it in items if str(it.id) not in easy]
    if d.main:
        print(f"drop-too-easy: {len(items) - len(kept)} of {len(items)} items right 3/3, {len(kept)} kept")
    return kept


def pad_batch(seqs, pad_id: int, device):
    """[(ids, prompt length)] -> (B, T) ids right-padded, (B, T) bool mask of the output tokens."""
    ids = right_pad([s for s, _ in seqs], pad_id)
    mask = right_pad([[False] * n + [True] * (len(s) - n) for s, n in seqs], False, torch.bool)
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------------------- training

def main(argv=None):
    args = parse_args(argv)
    d = distributed.init(args.device)
    out = Path(args.out)
    if d.main:  # one run per folder, its settings recorded; a fresh start never overwrites a run
        runs.take(out, cli.recorded_settings(args, ("model", "ref_model", "data"), VOLATILE),
                  fresh_ok=bool(args.resume), has_run=lambda o: (o / "log.jsonl").exists())
    d.barrier()
    G = args.group_size
    if args.prompts_per_step % d.world:
        sys.exit(f"--prompts-per-step {args.prompts_per_step} must be a multiple of the {d.world} ranks "
                 "(every rank runs the same number of micro-batches)")
    torch.manual_seed(args.seed + d.rank)
    random.seed(args.seed + d.rank)
    dtype = getattr(torch, args.dtype)

    # models: the policy (from the checkpoint when resuming), the frozen reference, the engine
    #         (with LoRA and no --ref-model, the reference is the policy with its adapters switched off)
    resume_from = resume.resolve_resume(args.resume, out)
    model = for_training(args.model, resume_from, dtype=dtype, device=d.device, **cli.lora_kwargs(args)).train()
    model.model.gradient_checkpointing = args.grad_checkpointing
    base_ref = args.lora_rank and not args.ref_model
    ref = model if base_ref else load_model(args.ref_model or args.model, dtype=dtype, device=d.device)
    tok = load_tokenizer(args.model, chat_template=args.chat_template)
    pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
    policy = training.wrap(training.LogprobForward(model), d, args.fsdp)
    ref_policy = policy if base_ref else training.wrap(training.LogprobForward(ref.requires_grad_(False)), d,
                                                       args.fsdp, trainable=False)
    reference = (lambda: lora.disabled(model)) if base_ref else nullcontext  # the reference forward's context
    sampling = (lambda: lora.merged(model)) if args.lora_rank else nullcontext  # fold adapters in to sample
    optimizer = make_optimizer(policy, args.lr, args.weight_decay)
    start = 0
    if resume_from:
        start = resume.load_checkpoint(resume_from, policy, optimizer, d)["step"]
        if d.main:
            print(f"resumed from {resume_from} at step {start}")
    local_seqs = args.prompts_per_step // d.world * G
    block = 16
    num_blocks = max(2, int(args.kv_cache_gb * 2**30 // (kv_bytes_per_token(model.config, dtype) * block)))
    engine = Engine(model, tok, block_size=block, num_blocks=num_blocks, max_num_seqs=max(local_seqs, 3),
                    progress=False, **cli.engine_kwargs(args))  # the bare model: the engine reads its live weights every step

    # data: drop over-long prompts, optionally the too-easy ones
    items = load_items(args.data)
    grm.check_trainable(items)
    n_all, limit = len(items), args.max_prompt_tokens or engine.max_model_len - args.max_tokens
    items = [it for it in items if len(render(it, tok, 0, args.seed)[0]) <= limit]
    if d.main and len(items) < n_all:
        print(f"dropped {n_all - len(items)} of {n_all} items with prompts over {limit} tokens (the model's "
              f"context {engine.max_model_len} minus --max-tokens, or --max-prompt-tokens)")
    if args.drop_too_easy:
        with training.full_weights(ref_policy), (lora.disabled(model) if base_ref else nullcontext()):
            ref_engine = Engine(ref, tok, block_size=block, num_blocks=num_blocks, max_num_seqs=max(local_seqs, 3),
                                progress=False, **cli.engine_kwargs(args))
            items = drop_too_easy(items, ref_engine, tok, args, d, out / "too_easy.json")
            del ref_engine
    if not items:
        sys.exit("train_rl.py: no training items left")

    log_path = out / "log.jsonl"
    if d.main:  # drop records of steps after the checkpoint we resume from (and a torn last line)
        write_jsonl(log_path, [r for r in read_results(log_path, required=("step",)) if r["step"] <= start])
    tracker = Tracker(out, args.tensorboard, args.wandb_project, vars(args), enabled=d.main)
    heldout = HeldOut(load_items(args.eval_data)[:args.eval_limit], args.eval_k, 0.5, args.max_tokens, args.seed) \
        if args.eval_data and d.main else None

    with training.interrupt_guard() as stop:
        for step in range(start, args.steps):
            t0 = time.time()
            # 1. rollout: this rank's share of the step's prompts, G judgments each
            positions = d.shard(list(range(step * args.prompts_per_step, (step + 1) * args.prompts_per_step)))
            mine = [items[i] for i in items_at(positions, len(items), args.seed)]
            rendered = [render(it, tok, pos, args.seed) for it, pos in zip(mine, positions)]
            params = SamplingParams(n=G, temperature=args.temperature, max_tokens=args.max_tokens)
            with training.full_weights(policy), sampling():
                outs = engine.generate([p for p, _ in rendered], params,
                                       seeds=[grm.stream_seed(it, pos, args.seed) for it, pos in zip(mine, positions)])
            # 2. rewards (Eq. 10 / 11): outputs of one prompt are adjacent, as group_advantages wants them
            judged = [grm.judge(it, order, c.text, c.finish_reason, training=True)
                      for it, (_, order), samples in zip(mine, rendered, outs) for c in samples]
            rewards = torch.tensor([v.reward for v in judged])
            # 3. advantages
            adv, frac_zero_std = group_advantages(rewards, G)
            seqs = [(p + c.token_ids, len(p)) for (p, _), samples in zip(rendered, outs) for c in samples]
            # micro-batches; with --shared-prefix (the default) rows of one prompt only, whose prompt tokens
            # the forward then computes once for all of them (shared_prefix.py)
            groups = [range(g, g + G) for g in range(0, len(seqs), G)] if args.shared_prefix else [range(len(seqs))]
            micro = [(*pad_batch(seqs[s:min(s + args.micro_batch_size, rows.stop)], pad_id, d.device),
                      adv[s:min(s + args.micro_batch_size, rows.stop)].to(d.device),
                      seqs[s][1] if args.shared_prefix else None)
                     for rows in groups for s in range(rows.start, rows.stop, args.micro_batch_size)]
            t1 = time.time()
            # 4. reference log-probs and, with several passes over the batch, the old policy's (no grad);
            #    with one pass the old log-probs ARE the current ones, detached: no extra forward (as TRL)
            with torch.no_grad():
                with reference():
                    ref_lp = [ref_policy(ids, mask, plen) for ids, mask, _, plen in micro]
                old = [policy(ids, mask, plen) for ids, mask, _, plen in micro] if args.epochs_per_batch > 1 else None
            # 5. loss and update: one optimizer step per pass over the batch
            lr = lr_at(step, args.lr, args.warmup_steps, args.steps, args.min_lr_ratio)
            set_lr(optimizer, lr)
            sums = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio": 0.0, "tokens": 0.0}
            for _ in range(args.epochs_per_batch):
                for k, (ids, mask, a, plen) in enumerate(micro):
                    with training.grad_sync(policy, k == len(micro) - 1):
                        logp = policy(ids, mask, plen)  # (b, T-1)
                        old_k = logp.detach() if old is None else old[k]
                        loss, stats = grpo_loss(logp, old_k, ref_lp[k], a, mask[:, 1:], args.clip_eps, args.beta)
                        (loss * len(a) / len(seqs)).backward()  # the rank's mean over outputs
                    n_tok = float(mask.sum())
                    sums["loss"] += loss.item() * len(a) / len(seqs) / args.epochs_per_batch
                    for name in ("kl", "clip_frac", "ratio"):
                        sums[name] += stats[name] * n_tok
                    sums["tokens"] += n_tok
                grad_norm = clip_grad_norm(policy, args.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            engine.reset_prefix_cache()  # its cached prompt K/V came from the old weights
            t2 = time.time()

            # 6. log (all-reduced) and checkpoint
            n, groups = float(len(seqs)), float(len(seqs) // G)
            m = training.reduce_metrics(d, {
                "loss": (sums["loss"], 1.0), "reward_mean": (float(rewards.sum()), n),
                "frac_reward_zero_std": (frac_zero_std * groups, groups),
                "invalid_rate": (float(sum(not v.valid for v in judged)), n),
                "length": (float(sum(len(c.token_ids) for s in outs for c in s)), n),
                "truncated_rate": (float(sum(c.finish_reason == "length" for s in outs for c in s)), n),
                "kl": (sums["kl"], sums["tokens"]), "clip_frac": (sums["clip_frac"], sums["tokens"]),
                "ratio": (sums["ratio"], sums["tokens"]),
                "time_sample": (t1 - t0, 1.0), "time_update": (t2 - t1, 1.0),
                "gen_tokens": (float(sum(len(c.token_ids) for s in outs for c in s)), 1.0),
                "update_tokens": (float(sum(int(ids.numel()) for ids, *_ in micro)), 1.0)})
            record = {"step": step + 1, **m, "lr": lr, "grad_norm": grad_norm, "outputs": n * d.world,
                      "sample_tok_per_s": m["gen_tokens"] * d.world / max(t1 - t0, 1e-9),
                      "update_tok_per_s": m["update_tokens"] * d.world / max(t2 - t1, 1e-9)}
            flops = train_flops(model, m["update_tokens"] * d.world * args.epochs_per_batch) + train_flops(
                model, m["update_tokens"] * d.world * (1 + (args.epochs_per_batch > 1)), grad=False)  # ref (+ old)
            record["mfu"] = mfu(flops / d.world, t2 - t1, d.device)
            metric = None
            if args.eval_data and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
                with training.full_weights(policy), sampling():  # rank 0 evaluates, the others wait
                    record.update(heldout.grm(engine, tok) if heldout else {})
                    d.barrier()
                if args.keep_best:  # every rank must agree on whether to save: rank 0's number for all
                    metric = d.all_sum([record.get(f"eval/voting@{args.eval_k}", 0.0) if d.main else 0.0])[0]
            if d.main:
                tracker.log(record)
                print(f"step {step + 1}/{args.steps} | loss {m['loss']:+.4f} | reward {m['reward_mean']:+.3f} | "
                      f"zero-std {m['frac_reward_zero_std']:.2f} | invalid {m['invalid_rate']:.2f} | "
                      f"kl {m['kl']:.4f} | clip {m['clip_frac']:.3f} | len {m['length']:.0f} | "
                      f"lr {lr:.2e} | gnorm {grad_norm:.3f} | sample {m['time_sample']:.1f}s "
                      f"update {m['time_update']:.1f}s" + "".join(f" | {k} {v:.3f}" for k, v in record.items()
                                                                  if k.startswith("eval/")), flush=True)
            if resume.checkpoint_step(out, step + 1, args.steps, model, policy, optimizer, d, stop,
                                        save_every=args.save_every, keep_last=args.keep_last,
                                        tokenizer_dir=args.model, extra={"seed": args.seed}, metric=metric):
                break
    tracker.close()
    if args.merge and args.lora_rank and not stop["requested"]:
        path = write_merged(policy, model, out / "merged", args.model, d)
        if path:
            print(f"wrote {path}: the adapters folded into a plain HF folder", flush=True)
    if d.main:
        runs.release(out)
    distributed.shutdown()
    if training.exit_code(stop):
        sys.exit(training.exit_code(stop))


if __name__ == "__main__":
    main()
