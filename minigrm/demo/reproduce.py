"""The whole SPCT pipeline on the demo task, from nothing, with the project's own scripts.

    python -m minigrm.demo.reproduce --out out/demo            # the full run (CPU: hours)
    python -m minigrm.demo.reproduce --out out/smoke --quick   # every stage for a few steps

Stages (each writes under --out and is skipped when its result already exists, so an
interrupted run resumes stage by stage):
  data      minigrm.demo.task.write_splits: train.jsonl, test.jsonl (held-out questions)
  teacher   the cold-start corpus: GRM prompts (responses shuffled) + the teacher's judgments
  base      BPE tokenizer + tiny Llama pretrained on the task's plain language (base_model.py)
  rft       train_rft.py: rejective sampling from the base model (non-hinted and hinted), plus
            the teacher corpus as SFT data (the base model cannot write the format yet)
  rl        train_rl.py: GRPO with the ±1 rule reward, from the RFT checkpoint
  meta_rm   train_rft.py --meta-rm: a scalar head on the RFT backbone, trained on judgments
            sampled from the RL model, labelled by Eq. 10
  eval      infer_scale.py on test.jsonl for the base, RFT and RL models (greedy) and the RL
            model with the meta RM (Voting@k, MetaRM@k); <out>/results.md collects the tables
"""
import argparse
import json
import random
from pathlib import Path

import infer_scale
import train_rft
import train_rl

from ..data import load_items, write_jsonl
from ..prompts import grm_prompt
from ..training import latest_checkpoint
from ..voting import permute, shuffled_order
from . import task
from .base_model import pretrain, train_tokenizer

FULL = dict(n_train=3000, n_test=300, texts=30000, vocab=2048, pretrain_steps=1500, rft_epochs=2, rl_steps=200,
            rl_prompts=8, k_max=16, max_tokens=128)
QUICK = dict(n_train=24, n_test=6, texts=600, vocab=400, pretrain_steps=4, rft_epochs=1, rl_steps=1,
             rl_prompts=2, k_max=2, max_tokens=16)


def teacher_corpus(items, seed: int) -> list[dict]:
    """Chat records {"messages": [user: GRM prompt, assistant: teacher judgment]}."""
    rng = random.Random(seed)
    out = []
    for it in items:
        order = shuffled_order(len(it.responses), rng.randrange(2**31))
        shown = permute(it.responses, order)
        out.append({"messages": [{"role": "user", "content": grm_prompt(it.prompt, shown)},
                                 {"role": "assistant", "content": task.teacher_judgment(it.prompt, shown)}]})
    return out


def stage(name: str, done: Path) -> bool:
    if done.exists():
        print(f"== {name}: done already ({done})", flush=True)
        return False
    print(f"== {name}", flush=True)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="where every stage writes")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every stage runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init, sampling and batches")
    args = ap.parse_args(argv)
    c = QUICK if args.quick else FULL
    out, seed = Path(args.out), str(args.seed)
    common = ["--seed", seed, "--device", "cpu"] if args.quick else ["--seed", seed]

    train, test = out / "data" / "train.jsonl", out / "data" / "test.jsonl"
    if stage("data", test):
        task.write_splits(out / "data", n_train=c["n_train"], n_test=c["n_test"], seed=args.seed)
    if stage("teacher", out / "teacher.jsonl"):
        write_jsonl(out / "teacher.jsonl", teacher_corpus(load_items(train), args.seed))
    base = out / "base"
    if stage("base", base / "model.safetensors"):
        texts = task.pretraining_corpus(c["texts"], args.seed)
        chats = [m["content"] for r in teacher_corpus(load_items(train), args.seed) for m in r["messages"]]
        train_tokenizer(texts + chats, c["vocab"], base)
        pretrain(base, texts, c["pretrain_steps"], seed=args.seed)

    if stage("rft", out / "rft" / "latest"):
        train_rft.main(["--model", str(base), "--data", str(train), "--sft-data", str(out / "teacher.jsonl"),
                        "--out", str(out / "rft"), "--epochs", str(c["rft_epochs"]), "--lr", "1e-3",
                        "--max-tokens", str(c["max_tokens"]), *common])
    rft = latest_checkpoint(out / "rft")
    if stage("rl", out / "rl" / "latest"):
        train_rl.main(["--model", str(rft), "--data", str(train), "--out", str(out / "rl"),
                       "--steps", str(c["rl_steps"]), "--prompts-per-step", str(c["rl_prompts"]),
                       "--lr", "1e-5", "--beta", "0.02", "--max-tokens", str(c["max_tokens"]),
                       "--save-every", "50", *common])
    rl = latest_checkpoint(out / "rl")
    if stage("meta_rm", out / "meta_rm" / "latest"):
        train_rft.main(["--meta-rm", "--model", str(rft), "--sampler", str(rl), "--data", str(train),
                        "--out", str(out / "meta_rm"), "--lr", "1e-4", "--max-tokens", str(c["max_tokens"]),
                        *common])
    meta = latest_checkpoint(out / "meta_rm")

    tables = []
    for name, model, k_max, extra in [("base", base, 1, ["--no-meta-rm"]), ("rft", rft, 1, ["--no-meta-rm"]),
                                      ("rl", rl, c["k_max"], ["--meta-rm", str(meta)])]:
        eval_out = out / f"eval_{name}"
        infer_scale.main(["--model", str(model), "--data", str(test), "--out", str(eval_out), "--k-max",
                          str(k_max), "--max-tokens", str(c["max_tokens"]), "--seed", seed, "--no-progress",
                          *extra, *(["--device", "cpu"] if args.quick else [])])
        rows = json.loads((eval_out / "results.json").read_text())
        tables.append((name, rows))
    lines = ["| model | setting | accuracy | strict | invalid |", "|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for name, rows in tables:
        for r in rows:
            lines.append(f"| {name} | {r['setting']} | {pct(r['accuracy'])} | {pct(r['accuracy_strict'])} | "
                         f"{pct(r['invalid_rate'])} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
