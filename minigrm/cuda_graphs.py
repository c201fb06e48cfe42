"""CUDA graphs for decode steps: capture the decoder once per batch-size bucket, replay it.

A decode step of a 0.5B-2B model launches a few hundred small kernels whose launch overhead
exceeds their run time; replaying a captured graph launches them all at once. Graphs need
static shapes and addresses, so each bucket (1, 2, 4, 8, 16, 24, 32, 48, 64, ... up to
max_num_seqs) reads its inputs from fixed tensors: a step of b sequences copies its inputs
into the first b rows, pads the rest of the bucket with a harmless dummy sequence (context
length 1, K/V written nowhere: slot -1) and replays the smallest bucket >= b.

The slow twin is the eager decode step (`ModelRunner.step` with `graphs=None`); a GPU test
checks that both give the same tokens.
"""
import torch

from .runner import PagedAttention


def buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch + 16, 16))
    return sorted({min(s, max_batch) for s in sizes})


class DecodeGraphs:
    def __init__(self, runner, max_num_seqs: int, max_model_len: int):
        self.runner = runner
        model, dev = runner.model, runner.device
        self.max_blocks = -(-max_model_len // runner.block_size)
        n = max(buckets(max_num_seqs))
        self.ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.slots = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.tables = torch.zeros(n, self.max_blocks, dtype=torch.int32, device=dev)
        self.lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.logits = torch.zeros(n, model.config.vocab_size, dtype=runner.dtype, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pool = None
        for b in reversed(buckets(max_num_seqs)):  # largest first, so smaller ones reuse its pool
            self._forward(b)  # warm-up: Triton autotuning and allocator state before capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(b)
            pool = graph.pool()
            self.graphs[b] = graph

    @torch.inference_mode()
    def _forward(self, b: int) -> None:
        r = self.runner
        attn = PagedAttention(r.k_cache, r.v_cache, self.slots[:b], [], self.tables[:b], self.lens[:b])
        h = r.model.model(self.ids[:b][None], self.positions[:b][None], attn)[0]  # (b, C)
        self.logits[:b] = r.model.lm_head(h)

    def fits(self, batch: int, width: int) -> bool:
        return batch <= max(self.graphs) and width <= self.max_blocks

    def replay(self, ids, positions, slots, tables, lens) -> torch.Tensor:
        n = len(ids)
        b = min(s for s in self.graphs if s >= n)
        self.ids[:n] = torch.tensor(ids)
        self.positions[:n] = torch.tensor(positions)
        self.slots[:n] = torch.tensor(slots)
        self.slots[n:b] = -1  # padding rows write no K/V ...
        self.lens[n:b] = 1  # ... and attend to one (garbage) position of block 0
        self.tables[:n, :tables.shape[1]] = tables
        self.lens[:n] = lens
        self.graphs[b].replay()
        return self.logits[:n]
