"""The whole SPCT pipeline on the demo task, from nothing, with the project's own scripts.

    python -m minigrm.demo.reproduce --out out/demo                       # the full run
    python -m minigrm.demo.reproduce --out out/demo --ship minigrm/demo   # and ship the result
    python -m minigrm.demo.reproduce --out out/smoke --quick              # every stage, tiny sizes
    python -m minigrm.demo.reproduce --out out/demo --part small --threads 1   # one part by hand

The full run is prepare, the small base, then the parts small / ablations / large in their own
processes, --jobs (2) at a time on one thread each (cores // jobs), then report.

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
  ablation_*  the paper's Table 4 RFT ablations on the small base (RFT only, rft_small's steps);
              every recipe, the full one too, once per training seed in rft_seeds (*_seed1: --seed 1)
  eval_*      infer_scale.py on test.jsonl: every stage greedy + Voting@1, the small RL GRM up
              to Voting@32 / MetaRM@32; findings.py writes <out>/results.md and the pictures
`<out>/timings.json` holds each stage's wall time.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..data import load_items, read_jsonl, write_jsonl
from ..resume import latest_checkpoint
from . import findings, task, teacher
from .base_model import pretrain, train_tokenizer
from .corpus import pretraining_corpus

SIZES = {"small": dict(hidden=128, layers=4, heads=4, kv_heads=2),
         "large": dict(hidden=192, layers=6, heads=6, kv_heads=3)}
FULL = dict(train=task.TRAIN, test=task.TEST,
            texts=80000, vocab=512, pretrain_steps=dict(small=1500, large=1500), pretrain_batch=8,
            rft_steps=432, rft_lr="1e-3", rl_steps=100, rl_prompts=32, rl_lr="5e-5",
            meta_items=800, meta_teacher_items=1000, meta_k=8, meta_lr="2e-4", k_max=32, max_tokens=320, sizes=SIZES,
            ablations=("no_hinted", "no_non_hinted", "no_rejection", "no_principles"), rft_seeds=(0, 1),
            ship_items=dict(pair=60, list=60))
QUICK = dict(train=dict(pair=8, list=8, single=4), test=dict(pair=3, list=3, single=2),
             texts=400, vocab=400, pretrain_steps=dict(small=3, large=3), pretrain_batch=4,
             rft_steps=2, rft_lr="1e-3", rl_steps=1, rl_prompts=2, rl_lr="1e-4",
             meta_items=4, meta_teacher_items=4, meta_k=2, meta_lr="1e-4", k_max=2, max_tokens=12,
             sizes={name: dict(hidden=32, layers=1, heads=2, kv_heads=1) for name in SIZES},
             ablations=("no_rejection",), rft_seeds=(0, 1),  # fewer processes: each one imports torch
             ship_items=dict(pair=2, list=3, single=1))
# recipe -> (teacher file, extra train_rft.py flags): the full RFT recipe (rft_small), the paper's
# Table 4 rows and "w/o principles". Each recipe trains once per seed of rft_seeds (the seed orders
# the batches): one run's accuracy moves with the batch order alone, by more than the paper's
# Table 4 gaps, so the ablations compare means over seeds (the bootstrap intervals cover the
# held-out items, not training).
RECIPES = {"full": ("teacher.jsonl", []), "no_hinted": ("teacher_no_hinted.jsonl", []),
           "no_non_hinted": ("teacher_hinted_only.jsonl", []), "no_rejection": ("teacher.jsonl", ["--no-rejection"]),
           "no_principles": ("teacher_no_principles.jsonl", [])}
PARTS = ("prepare", "small", "large", "ablations", "report")
ROOT = Path(__file__).resolve().parents[2]  # the checkout holding the three scripts


def script(name: str, args: list, threads: int | None = None) -> None:
    """Run one of the repository's scripts (train_rft.py, train_rl.py, infer_scale.py) as a user
    would, in its own process; the library never imports them."""
    path = ROOT / name
    if not path.exists():
        raise SystemExit(f"{path} not found: run the demo from a checkout of the repository")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    subprocess.run([sys.executable, str(path), *map(str, args)], check=True, env=env)


class Stages:
    """Skip a stage whose result exists; time the others into <out>/timings.json (re-read before
    each write, so parts running in parallel processes keep each other's times)."""

    def __init__(self, out: Path):
        self.path = out / "timings.json"

    def run(self, name: str, done: Path, fn) -> None:
        if done.exists():
            print(f"== {name}: done already ({done})", flush=True)
            return
        print(f"== {name}", flush=True)
        t0 = time.time()
        fn()
        times = json.loads(self.path.read_text()) if self.path.exists() else {}
        times[name] = round(times.get(name, 0) + time.time() - t0, 1)  # an interrupted stage adds up
        self.path.write_text(json.dumps(times, indent=2) + "\n")


def teacher_files(out: Path, train: Path, seed: int) -> None:
    """The full RFT data and the ablations' variants, all from the same teacher program."""
    items = load_items(train)
    full = teacher.trajectories(items, seed)
    write_jsonl(out / "teacher_no_hinted.jsonl", [r for r in full if not r["hinted"]])
    write_jsonl(out / "teacher_hinted_only.jsonl", teacher.trajectories(items, seed, hinted_share=1.0,
                                                                       non_hinted=False))
    write_jsonl(out / "teacher_no_principles.jsonl", teacher.trajectories(items, seed, principles=False))
    write_jsonl(out / "teacher.jsonl", full)  # last: the stage's done marker


def tokenizer(out: Path, c: dict, seed: int) -> None:
    judged = [r["text"] for r in teacher.trajectories(load_items(out / "data" / "train.jsonl")[:500], seed)]
    train_tokenizer(pretraining_corpus(c["texts"], seed) + judged, c["vocab"], out / "tokenizer")


def base_model(out: Path, size: str, c: dict, seed: int) -> None:
    folder = out / f"base_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(out / "tokenizer" / f, folder / f)
    pretrain(folder, pretraining_corpus(c["texts"], seed), c["pretrain_steps"][size], batch_size=c["pretrain_batch"],
             seed=seed, max_len=512, **c["sizes"][size])


class Pipeline:
    """The stages of one --out folder; each part is a method, `all` runs them in order."""

    def __init__(self, out: Path, c: dict, seed: int, quick: bool, threads: int | None):
        self.out, self.c, self.seed, self.threads, self.st = out, c, seed, threads, Stages(out)
        self.device = ["--device", "cpu"] if quick else []
        self.common = ["--seed", seed, "--resume", *self.device]
        self.train, self.test = out / "data" / "train.jsonl", out / "data" / "test.jsonl"

    def script(self, name, args):
        script(name, args, self.threads)

    def prepare(self):
        out, c, seed = self.out, self.c, self.seed
        self.st.run("data", self.test, lambda: task.write_splits(out / "data", c["train"], c["test"], seed))
        self.st.run("teacher", out / "teacher.jsonl", lambda: teacher_files(out, self.train, seed))
        self.st.run("tokenizer", out / "tokenizer" / "tokenizer.json", lambda: tokenizer(out, c, seed))

    def base(self, size):
        self.st.run(f"base_{size}", self.out / f"base_{size}" / "model.safetensors",
                    lambda: base_model(self.out, size, self.c, self.seed))
        return self.out / f"base_{size}"

    def rft(self, name, base, trajectories, flags=()):
        out = self.out
        self.st.run(name, out / name / "latest", lambda: self.script("train_rft.py", [
            "--model", base, "--data", self.train, "--trajectories", trajectories, "--out", out / name,
            "--steps", self.c["rft_steps"], "--lr", self.c["rft_lr"], *self.common, *flags]))  # flags win
        return latest_checkpoint(out / name)

    def evaluate(self, name, model, k_max=1, meta=None):
        out, c = self.out, self.c
        extra = ["--meta-rm", meta] if meta else ["--no-meta-rm"]
        self.st.run(f"eval_{name}", out / f"eval_{name}" / "results.json", lambda: self.script("infer_scale.py", [
            "--model", model, "--data", self.test, "--out", out / f"eval_{name}", "--k-max", k_max, "--max-tokens",
            c["max_tokens"], "--seed", self.seed, "--no-progress", *extra, *self.device]))

    def small(self):
        """The small GRM's whole SPCT: base, RFT, GRPO, the meta RM, every evaluation."""
        out, c = self.out, self.c
        base = self.base("small")
        rft = self.rft("rft_small", base, out / "teacher.jsonl")
        self.evaluate("rft_small", rft)
        self.evaluate("base_small", base)
        self.st.run("rl_small", out / "rl_small" / "latest", lambda: self.script("train_rl.py", [
            "--model", rft, "--data", self.train, "--out", out / "rl_small", "--steps", c["rl_steps"],
            "--prompts-per-step", c["rl_prompts"], "--lr", c["rl_lr"], "--beta", "0.02",
            "--max-tokens", c["max_tokens"], "--save-every", 25, *self.common]))
        rl = latest_checkpoint(out / "rl_small")
        meta = self.meta_rm(rl)
        self.evaluate("rl_small", rl, c["k_max"], meta)

    def meta_rm(self, grm_folder):
        """Judgments of the GRM it guides on training pairs and lists, plus the teacher's
        non-hinted RFT trajectories of other training items (paper §4), BCE on Eq. 10 labels."""
        out, c = self.out, self.c
        meta_data, meta_teacher = out / "data" / "meta_rm_items.jsonl", out / "meta_rm_teacher.jsonl"
        if not meta_teacher.exists():
            pairs_lists = [r for r in read_jsonl(self.train) if "label" not in r]
            write_jsonl(meta_data, pairs_lists[:c["meta_items"]])
            taken = {r["id"] for r in pairs_lists[c["meta_items"]:c["meta_items"] + c["meta_teacher_items"]]}
            write_jsonl(meta_teacher, [r for r in read_jsonl(out / "teacher.jsonl") if r["item"] in taken
                                       and not r["hinted"]])
        self.st.run("meta_samples", out / "meta_samples" / "results.json", lambda: self.script("infer_scale.py", [
            "--model", grm_folder, "--data", meta_data, "--out", out / "meta_samples", "--k-max", c["meta_k"],
            "--max-tokens", c["max_tokens"], "--seed", self.seed, "--no-meta-rm", "--no-progress", *self.device]))
        self.st.run("meta_rm", out / "meta_rm" / "latest", lambda: self.script("train_rft.py", [
            "--meta-rm", "--model", grm_folder, "--data", self.train, "--trajectories", meta_teacher,
            "--extra-trajectories", out / "meta_samples" / "judgments.jsonl", "--out", out / "meta_rm",
            "--lr", c["meta_lr"], *self.common]))
        return latest_checkpoint(out / "meta_rm")

    def large(self):
        """The larger GRM (reduced setting, for time: base and RFT with the small one's recipe, no
        GRPO): the greedy line of finding 4 and a second base < RFT."""
        base = self.base("large")
        rft = self.rft("rft_large", base, self.out / "teacher.jsonl")
        self.evaluate("rft_large", rft)
        self.evaluate("base_large", base)

    def ablations(self):
        """The paper's Table 4 on the small base, RFT only (reduced setting: no GRPO after it): each
        variant of the teacher's data on every training item for the same optimizer steps and lr as
        rft_small, the full recipe they are compared with (the paper trains a fixed 900 steps), and
        every recipe again for each further seed (seed 0 of the full recipe is the small part's)."""
        base = self.base("small")
        for seed in self.c["rft_seeds"]:
            for recipe in ("full", *self.c["ablations"]):
                if recipe == "full" and seed == 0:
                    continue
                teacher_file, flags = RECIPES[recipe]
                run = findings.recipe_run(recipe, seed)
                seeded = ["--seed", seed] if seed else []
                self.evaluate(run, self.rft(run, base, self.out / teacher_file, [*flags, *seeded]))

    def report(self, ship: Path | None):
        findings.write(self.out, self.c, self.c["ablations"], self.c["rft_seeds"])
        if ship:
            ship_to(latest_checkpoint(self.out / "rl_small"), latest_checkpoint(self.out / "meta_rm"), self.test,
                    self.out, ship, self.c["ship_items"])


def run_parts(argv: list, parts, jobs: int) -> None:
    """Run parts in their own processes, `jobs` at a time, each on cores // jobs threads (two
    one-thread processes get more out of two cores than one two-thread process at these sizes)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def one(part):
        cmd = [sys.executable, "-m", "minigrm.demo.reproduce", *argv, "--part", part, "--threads", str(threads)]
        subprocess.run(cmd, check=True, env=env)
    with ThreadPoolExecutor(jobs) as pool:
        for done in [pool.submit(one, part) for part in parts]:
            done.result()  # a failed part raises here, after the others have finished


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo", help="where every stage writes")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every stage runs")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, init, sampling and batches")
    ap.add_argument("--part", default="all", choices=("all", *PARTS),
                    help="one part only (after prepare, small / large / ablations can run in parallel processes)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (e.g. 1 with two parts)")
    ap.add_argument("--jobs", type=int, default=2, help="all: parts small / ablations / large run this many at "
                    "once, each in its own process (after prepare and the small base, which two of them share)")
    ap.add_argument("--ship", default=None, help="copy the final GRM, meta RM and test split here (minigrm/demo)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    c = QUICK if args.quick else FULL
    p = Pipeline(Path(args.out), c, args.seed, args.quick, args.threads)
    ship = Path(args.ship) if args.ship else None
    if args.part != "all":
        print(f"=== part {args.part}", flush=True)
        return p.report(ship) if args.part == "report" else getattr(p, args.part)()
    print("=== part prepare", flush=True)
    p.prepare()
    p.base("small")
    run_parts(["--out", args.out, "--seed", str(args.seed), *(["--quick"] if args.quick else [])],
              ("small", "ablations", "large"), args.jobs)
    print("=== part report", flush=True)
    p.report(ship)


def ship_to(grm: Path, meta: Path, test: Path, out: Path, dest: Path, counts: dict) -> None:
    """Copy what `python infer_scale.py` runs on by default: the final GRM and meta RM (weights,
    config, tokenizer; no optimizer state), the first `counts` held-out items of each kind (a
    slice that runs in under 3 minutes on 2 cores; results.md has the whole held-out set; the
    full run ships pairs and lists only: the findings are theirs), results.md and its pictures."""
    for src, name in ((grm, "grm"), (meta, "meta_rm")):
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / f, dest / name / f)
    (dest / "data").mkdir(parents=True, exist_ok=True)
    kept, seen = [], {}
    for r, it in zip(read_jsonl(test), load_items(test), strict=True):
        seen[it.kind] = seen.get(it.kind, 0) + 1
        if seen[it.kind] <= counts.get(it.kind, 0):
            kept.append(r)
    write_jsonl(dest / "data" / "test.jsonl", kept)
    for f in findings.FILES:
        shutil.copy2(out / f, dest / f)
    print(f"shipped the GRM, the meta RM, {len(kept)} held-out items and the results to {dest}")


if __name__ == "__main__":
    main()
