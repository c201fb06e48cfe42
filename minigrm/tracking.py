"""Where a training run's metrics go: <out>/log.jsonl always, TensorBoard and Weights & Biases when
asked for and installed (neither is a dependency; each is imported only here, only when asked).

    tracker = Tracker(out, tensorboard=args.tensorboard, wandb_project=args.wandb_project, config=vars(args))
    tracker.log(record)        # {"step": n, "loss": ..., "eval/greedy": ...}; log.jsonl gets it as is
    tracker.close()

log.jsonl is the record of truth (resume truncates it to the checkpoint's step, `python -m
minigrm.curves <out>` draws it); TensorBoard gets one scalar per numeric field under its name
(`train/loss`, `eval/greedy`), wandb the same dict. Only the main process (rank 0) tracks.
"""
from pathlib import Path

from .data import append_jsonl


class Tracker:
    def __init__(self, out, tensorboard: bool = False, wandb_project: str | None = None, config: dict | None = None,
                 enabled: bool = True):
        self.path, self.enabled = Path(out) / "log.jsonl", enabled
        self.tb = self.wandb = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise SystemExit(f"--tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
            self.tb = SummaryWriter(str(Path(out) / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise SystemExit("--wandb-project needs the wandb package (pip install wandb)") from None
            self.wandb = wandb.init(project=wandb_project, dir=str(out), config=config or {})

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k if "/" in k else f"train/{k}", v, record["step"])
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
