"""One node, many processes: `torchrun --nproc_per_node=N script.py ...`.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), starts the process group
(NCCL on CUDA, gloo on CPU, so the multi-process paths are tested on a laptop) and returns
this process's rank, the world size and its device. Without torchrun it is a no-op: rank 0
of a world of 1. Data are split by rank (`shard`), results are merged by rank 0 or reduced.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum a list of numbers over all ranks (metrics, counts)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]


def init(device: str | None = None) -> Dist:
    """-> Dist for this process; `device` "cpu"/"cuda" (default: cuda when available)."""
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(device=torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
