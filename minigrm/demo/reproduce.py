"""The whole SPCT pipeline on the demo task, from nothing, with the project's own scripts.

    python -m minigrm.demo.reproduce --out out/demo            # the full run (~75 min on 2 CPU cores)
    python -m minigrm.demo.reproduce --out out/smoke --quick   # every stage for a few steps
    python -m minigrm.demo.reproduce --out out/demo --ship minigrm/demo   # and ship the result

Stages (each writes under --out and is skipped when its result already exists, so an
interrupted run resumes stage by stage):
  data      minigrm.demo.task.write_splits: train.jsonl, test.jsonl (held-out questions)
  teacher   the cold-start corpus: GRM prompts (responses shuffled) + the teacher's judgments
  base      BPE tokenizer + tiny Llama pretrained on the task's plain language mixed with the
            teacher corpus (base_model.py): like the paper's pretrained bases, it can already
            write judgments in the format, with the arithmetic a few million parameters manage
  rft       train_rft.py: rejective sampling from the base model itself (non-hinted and hinted),
            fine-tuning on the accepted trajectories
  rl        train_rl.py: GRPO with the ±1 rule reward, from the RFT checkpoint
  meta_rm   train_rft.py --meta-rm: a scalar head on the RFT backbone, trained on judgments
            sampled from the RL model, labelled by Eq. 10
  eval      infer_scale.py on test.jsonl for the base, RFT and RL models (greedy) and the RL
            model with the meta RM (Voting@k, MetaRM@k); <out>/results.md collects the tables
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from .. import grm
from ..data import load_items, read_jsonl, write_jsonl
from ..report import markdown_table
from ..tokenizer import load_tokenizer
from ..resume import latest_checkpoint
from ..voting import permute
from . import task
from .base_model import pretrain, train_tokenizer

FULL = dict(n_train=3000, n_test=300, texts=30000, vocab=2048, pretrain_steps=1500, rft_epochs=2, rft_lr="3e-4",
            rl_steps=250, rl_prompts=32, rl_lr="1e-4", k_max=16, max_tokens=128)
QUICK = dict(n_train=24, n_test=6, texts=600, vocab=400, pretrain_steps=4, rft_epochs=1, rft_lr="3e-4",
             rl_steps=1, rl_prompts=2, rl_lr="5e-5", k_max=2, max_tokens=16)


def teacher_corpus(items, seed: int) -> list[dict]:
    """Chat records {"messages": [user: GRM prompt, assistant: teacher judgment]}, responses in
    grm.order; a single also gets the 0/1 prompt that training uses for singles."""
    out = []
    for it in items:
        order = grm.order(it, "teacher", seed)
        shown = permute(it.responses, order)
        out.append({"messages": grm.messages(it, order) + [
            {"role": "assistant", "content": task.teacher_judgment(it.prompt, shown)}]})
        if it.kind == "single":
            out.append({"messages": grm.messages(it, order, training=True) + [
                {"role": "assistant", "content": task.teacher_judgment_binary(it.prompt, shown[0])}]})
    return out


ROOT = Path(__file__).resolve().parents[2]  # the checkout holding the three scripts


def script(name: str, args: list[str]) -> None:
    """Run one of the repository's scripts (train_rft.py, train_rl.py, infer_scale.py) as a user
    would, in its own process; the library never imports them."""
    path = ROOT / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the demo from a checkout of the repository")
    subprocess.run([sys.executable, str(path), *map(str, args)], check=True)


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
    ap.add_argument("--ship", default=None, help="copy the final GRM, meta RM and test split here (minigrm/demo)")
    args = ap.parse_args(argv)
    c = QUICK if args.quick else FULL
    out, seed = Path(args.out), str(args.seed)
    common = ["--seed", seed, "--device", "cpu"] if args.quick else ["--seed", seed]
    common += ["--resume"]  # a stage interrupted half-way continues where it stopped

    train, test = out / "data" / "train.jsonl", out / "data" / "test.jsonl"
    if stage("data", test):
        task.write_splits(out / "data", n_train=c["n_train"], n_test=c["n_test"], seed=args.seed)
    if stage("teacher", out / "teacher.jsonl"):
        write_jsonl(out / "teacher.jsonl", teacher_corpus(load_items(train), args.seed))
    base = out / "base"
    if stage("base", base / "model.safetensors"):
        texts = task.pretraining_corpus(c["texts"], args.seed)
        chats = [r["messages"] for r in read_jsonl(out / "teacher.jsonl")]
        train_tokenizer(texts + [m["content"] for msgs in chats for m in msgs], c["vocab"], base)
        tok = load_tokenizer(base)
        chats = [tok.apply_chat_template(msgs, add_generation_prompt=False) for msgs in chats]
        pretrain(base, texts + chats, c["pretrain_steps"], seed=args.seed)

    if stage("rft", out / "rft" / "latest"):
        # --quick: 4 pretraining steps cannot write the format, so the teacher corpus stands in
        sft = ["--sft-data", str(out / "teacher.jsonl")] if args.quick else []
        script("train_rft.py", ["--model", str(base), "--data", str(train), *sft,
                        "--out", str(out / "rft"), "--epochs", str(c["rft_epochs"]), "--lr", c["rft_lr"],
                        "--max-tokens", str(c["max_tokens"]), *common])
    rft = latest_checkpoint(out / "rft")
    if stage("rl", out / "rl" / "latest"):
        script("train_rl.py", ["--model", str(rft), "--data", str(train), "--out", str(out / "rl"),
                       "--steps", str(c["rl_steps"]), "--prompts-per-step", str(c["rl_prompts"]),
                       "--lr", c["rl_lr"], "--beta", "0.02", "--max-tokens", str(c["max_tokens"]),
                       "--save-every", "50", *common])
    rl = latest_checkpoint(out / "rl")
    if stage("meta_rm", out / "meta_rm" / "latest"):
        script("train_rft.py", ["--meta-rm", "--model", str(rft), "--sampler", str(rl), "--data", str(train),
                        "--out", str(out / "meta_rm"), "--lr", "1e-4", "--max-tokens", str(c["max_tokens"]),
                        *common])
    meta = latest_checkpoint(out / "meta_rm")

    tables = []
    for name, model, k_max, extra in [("base", base, 1, ["--no-meta-rm"]), ("rft", rft, 1, ["--no-meta-rm"]),
                                      ("rl", rl, c["k_max"], ["--meta-rm", str(meta)])]:
        eval_out = out / f"eval_{name}"
        script("infer_scale.py", ["--model", str(model), "--data", str(test), "--out", str(eval_out), "--k-max",
                          str(k_max), "--max-tokens", str(c["max_tokens"]), "--seed", seed, "--no-progress",
                          *extra, *(["--device", "cpu"] if args.quick else [])])
        rows = json.loads((eval_out / "results.json").read_text())
        tables.append((name, rows))
    lines = markdown_table(tables)
    lines += ["", "RFT rejective sampling (from the base model): "
              + json.dumps(json.loads((out / "rft" / "rejection.json").read_text())), "", *rl_curve(out / "rl" / "log.jsonl")]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.ship:
        ship(rl, meta, test, out / "results.md", Path(args.ship))


def rl_curve(log: Path, window: int = 20) -> list[str]:
    """GRPO's learning curve as a table: means of the logged metrics over windows of steps."""
    rows = list(read_jsonl(log))
    lines = ["| GRPO steps | reward mean | invalid | frac_reward_zero_std | KL | length |", "|---|---|---|---|---|---|"]
    for i in range(0, len(rows), window):
        w = rows[i:i + window]
        m = {k: sum(r[k] for r in w) / len(w) for k in ("reward_mean", "invalid_rate", "frac_reward_zero_std",
                                                        "kl", "length")}
        lines.append(f"| {w[0]['step']}-{w[-1]['step']} | {m['reward_mean']:+.3f} | {100 * m['invalid_rate']:.1f}% | "
                     f"{m['frac_reward_zero_std']:.2f} | {m['kl']:.4f} | {m['length']:.1f} |")
    return lines


def ship(grm: Path, meta: Path, test: Path, results: Path, dest: Path) -> None:
    """Copy what `python infer_scale.py` runs on by default: the final GRM and meta RM (weights,
    config, tokenizer; no optimizer state), the held-out split and the results table."""
    for src, name in ((grm, "grm"), (meta, "meta_rm")):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / f, dest / name / f)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(test, dest / "data" / "test.jsonl")
    shutil.copy2(results, dest / "results.md")
    print(f"shipped the GRM, the meta RM and the held-out split to {dest}")


if __name__ == "__main__":
    main()
