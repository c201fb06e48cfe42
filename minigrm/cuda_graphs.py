"""CUDA graphs for the decode pass: captured once per batch-size bucket, replayed every step.

A decode step of a 0.5B-2B model launches a few hundred small kernels whose launch overhead
exceeds their run time; replaying a captured graph launches them all at once. The captured
body is the whole decode pass of `ModelRunner.decode`: inputs read from the persistent row
state (decode_state.py), the decoder, the sampler and the state update, so a step is: write
the row count, replay, copy the tokens back.

Buckets are 1, 2, 4, 8, 16, 32, 48, ... max_num_seqs; a step of n rows replays the smallest
bucket >= n. Rows [n, bucket) are padding: the body masks them (`valid`), so they write no
K/V, attend one position and leave their state alone. Cascade attention runs inside the
graph from static group buffers (sized for the worst case; unused groups are empty), copied
in when the rows change.

Graphs bake in tensor addresses: weights, KV cache, state. `capture()` runs at the start of a
`generate` call whenever the weights' addresses differ from the captured ones (first call,
or e.g. FSDP gathering them anew for a rollout); in-place weight updates (RL) need nothing.
Graph memory is counted in the KV sizing (memory.py). The slow twin is the eager decode pass
(`cuda_graphs=False`); a GPU test checks that both give the same tokens.
"""
import torch

from .cascade import CascadeGroups, kernel_group_rows


def buckets(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch + 16, 16))
    return sorted({min(s, max_batch) for s in sizes})


class DecodeGraphs:
    def __init__(self, runner, max_num_seqs: int):
        self.runner = runner
        self.sizes = buckets(max_num_seqs)
        R, dev = max(self.sizes), runner.device
        self.max_rows = kernel_group_rows(runner.model.config)  # rows per group tile
        W = runner.state.max_blocks
        rows = torch.full((R, self.max_rows), -1, dtype=torch.int32, device=dev)  # at most R groups
        self.groups = CascadeGroups(rows, torch.zeros(R, W, dtype=torch.int32, device=dev),
                                    torch.zeros(R, dtype=torch.int32, device=dev),
                                    torch.zeros(R, dtype=torch.int32, device=dev), None, None)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.fingerprint = None
        self.num_captures = 0

    def _fingerprint(self):
        r = self.runner
        return (r.cascade_on,) + tuple(t.data_ptr() for t in r.model.parameters())

    def ensure_captured(self) -> None:
        """(Re)capture when the weights moved (or never captured). No sequence may be running."""
        fp = self._fingerprint()
        if fp != self.fingerprint:
            self.capture()
            self.fingerprint = fp

    @torch.inference_mode()
    def capture(self) -> None:
        st = self.runner.state
        self.graphs.clear()
        self.outputs.clear()
        st.num_rows_t.zero_()  # capture with every row invalid: nothing is written
        self.set_groups(None, 0)  # no stale group may name a row past a small bucket
        st.dirty = True  # ... so the next step copies the live groups back in
        pool = None
        for b in reversed(self.sizes):  # largest first, so smaller ones reuse its pool
            self.body(b)  # warm-up: Triton compilation and allocator state before capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self.body(b)
            pool = graph.pool()
            self.graphs[b] = graph
        self.num_captures += 1

    def body(self, b: int) -> torch.Tensor:
        """What bucket b's graph holds: the decode pass over b rows, those past the live row
        count (read on the device) masked as padding. -> (2, b) [tokens; logprobs]."""
        r = self.runner
        valid = torch.arange(b, device=r.device) < r.state.num_rows_t
        return r.decode(b, valid, self.groups if r.cascade_on else None, capture=True)

    def fits(self, n: int) -> bool:
        return bool(self.graphs) and n <= self.sizes[-1]

    def set_groups(self, groups: CascadeGroups | None, n: int) -> None:
        """Copy the current rows' groups into the static buffers (empty groups elsewhere)."""
        g = self.groups
        g.prefix_len.zero_()
        g.start.zero_()
        if groups is None:
            return
        NG, MAXR = groups.rows.shape
        NB = groups.prefix_blocks.shape[1]
        g.rows[:NG].fill_(-1)
        g.rows[:NG, :MAXR] = groups.rows
        g.prefix_blocks[:NG, :NB] = groups.prefix_blocks
        g.prefix_len[:NG] = groups.prefix_len
        g.start[:n] = groups.start

    def replay(self, n: int) -> torch.Tensor:
        b = next(s for s in self.sizes if s >= n)
        self.graphs[b].replay()
        return self.outputs[b][:, :n]  # (2, n) [tokens; logprobs], valid until the next replay
