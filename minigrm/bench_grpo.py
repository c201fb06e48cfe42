"""A GRPO step of train_rl.py against TRL's GRPOTrainer on the same workload, in one run.

    python -m minigrm.bench_grpo                    # demo GRM, 8 prompts x G = 4, 64 new tokens, 4 timed steps
    python -m minigrm.bench_grpo --steps 8 --model path/to/grm --data items.jsonl

The workload (issue "Training as users expect it", point 5): the same policy (default: the shipped
demo GRM), the same GRM prompts (the paper's template over the demo's held-out items, responses
shown in grm.order), G = 4 judgments per prompt, 8 prompts per step, at most 64 new tokens, the
±1 rule reward of Eq. 10 / 11, beta = 0.08, one optimizer pass per batch, the same learning rate
and threads. Both run `--steps` timed steps after one warm-up step; the figure is generated
tokens per second of whole steps (sampling + reward + update), and the ratio minigrm / TRL.
train_rl.py runs as a user runs it (a subprocess; its log gives the per-step times and lengths);
TRL runs in this process (its log gives step_time and the mean completion length). TRL generates
with transformers' generate (no vLLM on a CPU); needs `trl` installed (a test extra).
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import grm
from .data import load_items, read_results

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "minigrm" / "demo"


def minigrm_steps(model: str, data: str, steps: int, lr: float, out: Path, extra: list[str]) -> tuple[float, float]:
    """-> (generated tokens, seconds) over the timed steps of train_rl.py."""
    subprocess.run([sys.executable, str(ROOT / "train_rl.py"), "--model", model, "--data", data, "--out", str(out),
                    "--steps", str(steps + 1), "--prompts-per-step", "8", "--group-size", "4", "--max-tokens", "64",
                    "--beta", "0.08", "--lr", str(lr), "--warmup-steps", "0", "--save-every", "1000",
                    "--device", "cpu", *extra], check=True, stdout=subprocess.DEVNULL)
    log = read_results(out / "log.jsonl")[1:]  # the first step warms up
    return (sum(r["length"] * r["outputs"] for r in log), sum(r["time_sample"] + r["time_update"] for r in log))


def trl_steps(model: str, data: str, steps: int, lr: float, out: Path) -> tuple[float, float]:
    """-> (generated tokens, seconds) over the timed steps of TRL's GRPOTrainer."""
    import datasets
    import trl
    items = {str(it.id): it for it in load_items(data) if it.kind != "single"}
    rows = []
    for it in items.values():
        order = grm.order(it, 0, 0)
        rows.append({"prompt": grm.messages(it, order, training=True), "item": str(it.id), "order": json.dumps(order)})

    def rule_reward(prompts, completions, item, order, **kw):  # Eq. 10 / 11 through grm.judge
        return [grm.judge(items[i], json.loads(o), c[0]["content"] if isinstance(c, list) else c, "stop",
                          training=True).reward for c, i, o in zip(completions, item, order)]
    args = trl.GRPOConfig(output_dir=str(out), per_device_train_batch_size=32, num_generations=4,
                          max_completion_length=64, beta=0.08, learning_rate=lr, max_steps=steps + 1, logging_steps=1,
                          report_to=[], use_cpu=True, save_strategy="no", temperature=1.0, lr_scheduler_type="constant")
    trainer = trl.GRPOTrainer(model=model, reward_funcs=rule_reward, args=args,
                              train_dataset=datasets.Dataset.from_list(rows))
    trainer.train()
    log = [h for h in trainer.state.log_history if "step_time" in h][1:]
    return (sum(h["completions/mean_length"] * 32 for h in log), sum(h["step_time"] for h in log))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEMO / "grm"), help="the policy (default: the demo GRM)")
    ap.add_argument("--data", default=str(DEMO / "data" / "test.jsonl"), help="items whose GRM prompts are used")
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    ap.add_argument("--lr", type=float, default=1e-6, help="learning rate of both")
    ap.add_argument("--minigrm-args", default="", help="extra train_rl.py flags (e.g. '--lora-rank 8')")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ours = minigrm_steps(args.model, args.data, args.steps, args.lr, Path(tmp) / "minigrm",
                             args.minigrm_args.split())
        theirs = trl_steps(args.model, args.data, args.steps, args.lr, Path(tmp) / "trl")
    a, b = ours[0] / ours[1], theirs[0] / theirs[1]
    print(f"train_rl.py: {ours[0]:.0f} tokens in {ours[1]:.1f} s = {a:.0f} generated tokens/s")
    print(f"TRL GRPOTrainer: {theirs[0]:.0f} tokens in {theirs[1]:.1f} s = {b:.0f} generated tokens/s")
    print(f"ratio minigrm / TRL: {a / b:.2f}x")


if __name__ == "__main__":
    main()
