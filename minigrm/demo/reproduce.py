"""The whole SPCT pipeline on the demo task, from nothing, with the project's own scripts.

    python -m minigrm.demo.reproduce --out out/demo                       # the full run
    python -m minigrm.demo.reproduce --out out/demo --ship minigrm/demo   # and ship the result
    python -m minigrm.demo.reproduce --out out/smoke --quick              # every stage, tiny sizes

Stages (each writes under --out and is skipped when its result exists; the scripts get --resume,
pretraining keeps a state file, infer_scale.py resumes by itself: an interrupted run continues):
  data        task.write_splits: train.jsonl and the held-out test.jsonl (disjoint questions)
  teacher     the RFT trajectories of the teacher program (teacher.py): N_RFT = 3 non-hinted
              samples per item and one hinted sample for half of the pairs and lists, plus the
              ablations' variants (no hinted / hinted only / no principles)
  base_*      one BPE tokenizer, then a small and a large Llama pretrained on plain arithmetic
              text (corpus.py; never the GRM format)
  rft_*       train_rft.py --trajectories (the teacher's judgments, rejective sampling, SFT)
  rl_*        train_rl.py: GRPO with the +-1 rule reward from the RFT checkpoint
  meta_rm     infer_scale.py samples judgments of the small RL GRM on training items, then
              train_rft.py --meta-rm: BCE on Eq. 10 labels of the teacher's non-hinted
              trajectories plus those samples (paper §4)
  ablation_*  the paper's Table 4 RFT ablations on the small model (reduced setting: RFT only)
  eval_*      infer_scale.py on test.jsonl: every stage greedy + Voting@1, the small RL GRM up
              to Voting@32 / MetaRM@32; findings.py writes <out>/results.md and the pictures
`<out>/timings.json` holds each stage's wall time.
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..data import load_items, read_jsonl, write_jsonl
from ..resume import latest_checkpoint
from . import findings, task, teacher
from .base_model import pretrain, train_tokenizer
from .corpus import pretraining_corpus

SIZES = {"small": dict(hidden=128, layers=4, heads=4, kv_heads=2),
         "large": dict(hidden=256, layers=6, heads=8, kv_heads=4)}
FULL = dict(train=dict(pair=2500, list=2500, single=1000), test=dict(pair=500, list=500, single=300),
            texts=80000, vocab=512, pretrain_steps=dict(small=1500, large=1500), pretrain_batch=16,
            rft_epochs=2, rft_lr="1e-3", rl_steps=dict(small=100, large=100), rl_prompts=32, rl_lr="2e-4",
            meta_items=800, meta_teacher_items=1000, meta_k=8, meta_lr="2e-4", k_max=32, max_tokens=160, sizes=SIZES,
            ablations=("no_hinted", "no_non_hinted", "no_rejection", "no_principles"), large_evals=("base", "rft", "rl"))
QUICK = dict(train=dict(pair=8, list=8, single=4), test=dict(pair=3, list=3, single=2),
             texts=400, vocab=400, pretrain_steps=dict(small=3, large=3), pretrain_batch=4,
             rft_epochs=1, rft_lr="1e-3", rl_steps=dict(small=1, large=1), rl_prompts=2, rl_lr="1e-4",
             meta_items=4, meta_teacher_items=4, meta_k=2, meta_lr="1e-4", k_max=2, max_tokens=12,
             sizes={name: dict(hidden=32, layers=1, heads=2, kv_heads=1) for name in SIZES},
             ablations=("no_rejection",), large_evals=("rl",))  # fewer processes: each one imports torch
# name -> (teacher file, extra train_rft.py flags): the paper's Table 4 rows, plus "w/o principles"
ABLATIONS = {"no_hinted": ("teacher_no_hinted.jsonl", []), "no_non_hinted": ("teacher_hinted_only.jsonl", []),
             "no_rejection": ("teacher.jsonl", ["--no-rejection"]),
             "no_principles": ("teacher_no_principles.jsonl", [])}
ROOT = Path(__file__).resolve().parents[2]  # the checkout holding the three scripts


def script(name: str, args: list) -> None:
    """Run one of the repository's scripts (train_rft.py, train_rl.py, infer_scale.py) as a user
    would, in its own process; the library never imports them."""
    path = ROOT / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the demo from a checkout of the repository")
    subprocess.run([sys.executable, str(path), *map(str, args)], check=True)


class Stages:
    """Skip a stage whose result exists; time the others into <out>/timings.json."""

    def __init__(self, out: Path):
        self.path = out / "timings.json"
        self.times = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, done: Path, fn) -> None:
        if done.exists():
            print(f"== {name}: done already ({done})", flush=True)
            return
        print(f"== {name}", flush=True)
        t0 = time.time()
        fn()
        self.times[name] = round(self.times.get(name, 0) + time.time() - t0, 1)
        self.path.write_text(json.dumps(self.times, indent=2) + "\n")


def teacher_files(out: Path, train: Path, seed: int) -> None:
    """The full RFT data and the ablations' variants, all from the same teacher program."""
    items = load_items(train)
    full = teacher.trajectories(items, seed)
    write_jsonl(out / "teacher_no_hinted.jsonl", [r for r in full if not r["hinted"]])
    write_jsonl(out / "teacher_hinted_only.jsonl", teacher.trajectories(items, seed, hinted_share=1.0,
                                                                       non_hinted=False))
    write_jsonl(out / "teacher_no_principles.jsonl", teacher.trajectories(items, seed, principles=False))
    write_jsonl(out / "teacher.jsonl", full)  # last: its presence marks the stage done


def base_models(out: Path, c: dict, seed: int) -> None:
    texts = pretraining_corpus(c["texts"], seed)
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        judged = [r["text"] for r in teacher.trajectories(load_items(out / "data" / "train.jsonl")[:500], seed)]
        train_tokenizer(texts + judged, c["vocab"], tok_dir)
    for size, shape in c["sizes"].items():
        folder = out / f"base_{size}"
        if (folder / "model.safetensors").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(tok_dir / f, folder / f)
        pretrain(folder, texts, c["pretrain_steps"][size], batch_size=c["pretrain_batch"], seed=seed, max_len=512,
                 **shape)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="where every stage writes")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every stage runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init, sampling and batches")
    ap.add_argument("--ship", default=None, help="copy the final GRM, meta RM and test split here (minigrm/demo)")
    args = ap.parse_args(argv)
    c = QUICK if args.quick else FULL
    out, seed = Path(args.out), args.seed
    device = ["--device", "cpu"] if args.quick else []
    common = ["--seed", seed, "--resume", *device]
    data, st = out / "data", Stages(out)
    train, test = data / "train.jsonl", data / "test.jsonl"
    st.run("data", test, lambda: task.write_splits(data, c["train"], c["test"], seed))
    st.run("teacher", out / "teacher.jsonl", lambda: teacher_files(out, train, seed))
    st.run("base", out / f"base_{list(c['sizes'])[-1]}" / "model.safetensors", lambda: base_models(out, c, seed))

    def rft(name, base, teacher_file, flags=()):
        st.run(name, out / name / "latest", lambda: script("train_rft.py", [
            "--model", base, "--data", train, "--trajectories", out / teacher_file, "--out", out / name,
            "--epochs", c["rft_epochs"], "--lr", c["rft_lr"], *flags, *common]))
        return latest_checkpoint(out / name)

    def evaluate(name, model, k_max=1, meta=None):
        extra = ["--meta-rm", meta] if meta else ["--no-meta-rm"]
        st.run(f"eval_{name}", out / f"eval_{name}" / "results.json", lambda: script("infer_scale.py", [
            "--model", model, "--data", test, "--out", out / f"eval_{name}", "--k-max", k_max, "--max-tokens",
            c["max_tokens"], "--seed", seed, "--no-progress", *extra, *device]))

    grms = {}
    for size in c["sizes"]:
        base = out / f"base_{size}"
        rft_ckpt = rft(f"rft_{size}", base, "teacher.jsonl")
        st.run(f"rl_{size}", out / f"rl_{size}" / "latest", lambda: script("train_rl.py", [
            "--model", rft_ckpt, "--data", train, "--out", out / f"rl_{size}", "--steps", c["rl_steps"][size],
            "--prompts-per-step", c["rl_prompts"], "--lr", c["rl_lr"], "--beta", "0.02",
            "--max-tokens", c["max_tokens"], "--save-every", 25, *common]))
        grms[size] = (base, rft_ckpt, latest_checkpoint(out / f"rl_{size}"))

    # the meta RM: judgments of the GRM it guides on training items (pairs and lists), plus the
    # teacher's non-hinted RFT trajectories of other training items
    meta_data, meta_teacher = data / "meta_rm_items.jsonl", out / "meta_rm_teacher.jsonl"
    if not meta_teacher.exists():
        pairs_lists = [r for r in read_jsonl(train) if "label" not in r]
        write_jsonl(meta_data, pairs_lists[:c["meta_items"]])
        taken = {r["id"] for r in pairs_lists[c["meta_items"]:c["meta_items"] + c["meta_teacher_items"]]}
        write_jsonl(meta_teacher, [r for r in read_jsonl(out / "teacher.jsonl") if r["item"] in taken
                                   and not r["hinted"]])
    small_rl = grms["small"][2]
    st.run("meta_samples", out / "meta_samples" / "results.json", lambda: script("infer_scale.py", [
        "--model", small_rl, "--data", meta_data, "--out", out / "meta_samples", "--k-max", c["meta_k"],
        "--max-tokens", c["max_tokens"], "--seed", seed, "--no-meta-rm", "--no-progress", *device]))
    st.run("meta_rm", out / "meta_rm" / "latest", lambda: script("train_rft.py", [
        "--meta-rm", "--model", small_rl, "--data", train, "--trajectories", meta_teacher,
        "--extra-trajectories", out / "meta_samples" / "judgments.jsonl", "--out", out / "meta_rm",
        "--lr", c["meta_lr"], *common]))
    meta = latest_checkpoint(out / "meta_rm")

    for name in c["ablations"]:
        teacher_file, flags = ABLATIONS[name]
        evaluate(f"ablation_{name}", rft(f"ablation_{name}", out / "base_small", teacher_file, flags))
    for size, (base, rft_ckpt, rl) in grms.items():
        for stage, model in (("base", base), ("rft", rft_ckpt), ("rl", rl)):
            if size == "small" or stage in c["large_evals"]:
                evaluate(f"{stage}_{size}", model, *((c["k_max"], meta) if (size, stage) == ("small", "rl") else ()))
    findings.write(out, c, c["ablations"])
    if args.ship:
        ship(small_rl, meta, test, out, Path(args.ship))


def ship(grm: Path, meta: Path, test: Path, out: Path, dest: Path) -> None:
    """Copy what `python infer_scale.py` runs on by default: the final GRM and meta RM (weights,
    config, tokenizer; no optimizer state), the held-out split, results.md and its pictures."""
    for src, name in ((grm, "grm"), (meta, "meta_rm")):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / f, dest / name / f)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy2(test, dest / "data" / "test.jsonl")
    for f in findings.FILES:
        shutil.copy2(out / f, dest / f)
    print(f"shipped the GRM, the meta RM, the held-out split and the results to {dest}")


if __name__ == "__main__":
    main()
