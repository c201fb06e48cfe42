"""What the three scripts share on the command line: argparse types that refuse a bad value
before anything is loaded or sampled, and the settings a run folder records.

Every numeric flag goes through one of these types, so `--k-max 0`, `--limit -1`,
`--temperature nan`, `--dtype foo` or `--device cuda` on a machine without CUDA stop at once
with argparse's usual "argument --x: ..." message instead of after an hour of sampling.
"""
import argparse
import math
from pathlib import Path

import torch

from . import runs

DTYPES = ("float32", "bfloat16", "float16")


def _number(kind, low, low_ok: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (value == low and not low_ok):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    return parse


positive_int = _number(int, 1, True, ">= 1")
nonneg_int = _number(int, 0, True, ">= 0")
positive_float = _number(float, 0.0, False, "> 0")
nonneg_float = _number(float, 0.0, True, ">= 0")


def fraction(text: str) -> float:
    value = nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and 1")
    return value


def dtype_name(text: str) -> str:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(DTYPES)}")
    return text


def device_name(text: str) -> str:
    if text != "cpu" and not text.startswith("cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:<index>")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device (torch {torch.__version__})")
    return text


def existing_folder(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder")
    return text


def recorded_settings(args, paths: tuple[str, ...], ignore: tuple[str, ...]) -> dict:
    """The run's settings for runs.claim: every flag but `ignore` (values that may change between
    runs without mixing results), plus a content fingerprint of each path flag in `paths`."""
    out = {k: v for k, v in sorted(vars(args).items()) if k not in ignore}
    for name in paths:
        value = getattr(args, name)
        if value is not None:
            values = value if isinstance(value, list) else [value]
            out[name] = [str(Path(v).resolve()) for v in values]
            out[name + "_hash"] = [runs.fingerprint(v) for v in values]
    return out


def add_training_args(ap: argparse.ArgumentParser, lr: float | None, lr_help: str) -> None:
    """The flags train_rft.py and train_rl.py share: optimizer and schedule, checkpoints and
    resume, held-out evaluation, curves, devices. One definition, so both scripts agree."""
    ap.add_argument("--lr", type=positive_float, default=lr, help=lr_help)
    ap.add_argument("--min-lr-ratio", type=fraction, default=0.1, help="cosine decay ends at lr x this")
    ap.add_argument("--warmup-steps", type=nonneg_int, default=10, help="linear warmup steps")
    ap.add_argument("--weight-decay", type=nonneg_float, default=0.0, help="AdamW weight decay (matrices only)")
    ap.add_argument("--grad-clip", type=positive_float, default=1.0, help="clip the global gradient norm to this")
    ap.add_argument("--save-every", type=positive_int, default=100, help="checkpoint every N steps (and at the end)")
    ap.add_argument("--keep-last", type=nonneg_int, default=2, help="keep only the last N checkpoints (0: all)")
    ap.add_argument("--resume", nargs="?", const="latest", default=None,
                    help="continue the run in --out (no value: <out>/latest) or from the given checkpoint folder")
    ap.add_argument("--eval-data", nargs="+", default=None, help="held-out items evaluated during training")
    ap.add_argument("--eval-every", type=positive_int, default=50, help="evaluate every N steps (and at the end)")
    ap.add_argument("--eval-k", type=positive_int, default=4, help="held-out Voting@K (and greedy)")
    ap.add_argument("--eval-limit", type=positive_int, default=200, help="held-out items used (the first N)")
    ap.add_argument("--keep-best", action="store_true",
                    help="keep the checkpoint with the best held-out metric (<out>/best names it)")
    ap.add_argument("--tensorboard", action="store_true", help="also log to <out>/tensorboard (needs tensorboard)")
    ap.add_argument("--wandb-project", default=None, help="also log to this wandb project (needs wandb)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data order, shuffles and samples")
    ap.add_argument("--dtype", default="float32", type=dtype_name,
                    help="weight dtype: float32 (default; bf16 autocast on CUDA) or bfloat16 (pure bf16)")
    ap.add_argument("--device", default=None, type=device_name, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--kv-cache-gb", type=positive_float, default=2.0, help="KV cache of the sampling engine, per rank")
    ap.add_argument("--grad-checkpointing", action="store_true", help="recompute each layer in the backward")
    ap.add_argument("--fsdp", action="store_true", help="shard weights, grads and optimizer (FSDP2) over ranks")
    add_engine_args(ap)
    ap.add_argument("--chat-template", default=None,
                    help="chat template family for a folder whose template is not recognised (e.g. chatml)")
    ap.add_argument("--lora-rank", type=nonneg_int, default=0, help="train LoRA adapters of this rank (0: all weights)")
    ap.add_argument("--lora-alpha", type=positive_float, default=32.0, help="LoRA scaling alpha (scale = alpha / rank)")
    ap.add_argument("--lora-dropout", type=fraction, default=0.0, help="dropout on the adapters' input")
    ap.add_argument("--lora-targets", default=None,
                    help="comma-separated HF module names (default: attention and MLP projections, lora.DEFAULT_TARGETS)")
    ap.add_argument("--merge", action="store_true", help="LoRA: also write <out>/merged, a plain HF folder")


def lora_kwargs(args) -> dict:
    """adapter.for_training's LoRA arguments from the flags."""
    return {"lora_rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "seed": args.seed,
            "targets": args.lora_targets.split(",") if args.lora_targets else None}


# flags that may change when a training run is resumed (runs.take compares the others)
def add_engine_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                    help="eager decode steps (on CUDA, decode steps replay CUDA graphs by default)")


def engine_kwargs(args) -> dict:
    """Engine(...) options from add_engine_args' flags: graphs where they apply, or none."""
    return {"cuda_graphs": None if args.cuda_graphs else False}


TRAINING_VOLATILE = ("resume", "save_every", "keep_last", "device", "kv_cache_gb", "cuda_graphs", "eval_every", "eval_k",
                     "eval_limit", "eval_data", "keep_best", "tensorboard", "wandb_project", "merge")
