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
