"""Per-sequence decode state in persistent tensors: one row per decoding sequence.

A decode step needs, for every decoding sequence, its block table, its length, the token it
feeds (the last one sampled), and its sampling parameters, seed and step counter. Rebuilding
those from Python lists every step costs time proportional to batch x sequence length (the
padded block table alone is batch x blocks). Here they live in fixed device tensors of
`max_rows` rows; rows [0, num_rows) are the live sequences, and each step only *changes* them:

    the step itself     tokens[r] = sampled token; lens[r] += 1; steps[r] += 1   (device ops)
    a new block         tables[r, col] = block                      (a few ints, batched H2D)
    a new sequence      its whole row                                (when its prompt is done)
    a finished one      its row is freed; at the next `flush` the last live rows move into
                        the holes, so live rows stay contiguous (one gather per tensor)

Host-to-device writes are batched per step into pinned buffers and copied without blocking.
The slow twin is rebuilding everything from the sequences (the engine before this file),
which tests/test_engine.py pins through the outputs.

Row layout (R = max_rows, W = max blocks per sequence):
    tables (R, W) int32   lens (R,) int32: tokens incl. the one fed next (its position + 1)
    tokens (R,) int64     seeds, steps (R,) int64   temperature, top_p (R,) fp32   top_k (R,) int32
"""
import numpy as np
import torch


class DecodeState:
    def __init__(self, max_rows: int, max_blocks: int, device):
        self.device, self.max_rows, self.max_blocks = torch.device(device), max_rows, max_blocks
        z = lambda dtype, *shape: torch.zeros(max_rows, *shape, dtype=dtype, device=device)  # noqa: E731
        self.tables = z(torch.int32, max_blocks)
        self.lens = torch.ones(max_rows, dtype=torch.int32, device=device)
        self.tokens, self.seeds, self.steps = z(torch.int64), z(torch.int64), z(torch.int64)
        self.temperature, self.top_p, self.top_k = z(torch.float32), z(torch.float32), z(torch.int32)
        self.num_rows_t = torch.zeros((), dtype=torch.int64, device=device)  # live rows, for graphs
        self.seqs: list = []  # row -> Sequence (None: a hole until the next flush)
        self.holes: list[int] = []
        self.synced: dict = {}  # Sequence -> how many of its block-table entries the tensor holds
        self.width = 1  # max blocks any live row uses (torch paths crop the table to it)
        self.grown: list[int] = []  # rows that got a block at the last flush
        self.dirty = True  # rows changed since the cascade groups were built
        self._kinds: dict = {}  # (first row, end, vocab) -> the rows' sampling kinds, while rows stand

    @property
    def num_rows(self) -> int:
        return len(self.seqs) - len(self.holes)

    def _h2d(self, data, dtype):
        t = torch.tensor(data, dtype=dtype, pin_memory=self.device.type == "cuda")
        return t.to(self.device, non_blocking=True)

    def sampling_kinds(self, rows: slice, vocab: int) -> tuple[bool, bool, bool] | None:
        """(every row greedy, some row greedy, some row truncates by top-k / top-p) of `rows`, from
        the sequences' parameters (kernels.sampler.sampling_kinds without reading the device);
        None when a row holds no sequence (a CUDA-graph bucket's padding, a hole)."""
        key = (rows.start, rows.stop, vocab)
        if key not in self._kinds:
            seqs = self.seqs[rows]
            if len(seqs) != rows.stop - rows.start or None in seqs:
                return None
            ps = [s.params for s in seqs]  # compared as the fp32 rows hold them (1e-50 is 0 there)
            greedy = [np.float32(p.temperature) <= 0 for p in ps]
            truncated = any(0 < p.top_k < vocab or np.float32(p.top_p) < 1 for p in ps)
            self._kinds[key] = (all(greedy), any(greedy), truncated)
        return self._kinds[key]

    def remove(self, seq) -> None:
        """Free seq's row (finished or preempted)."""
        if seq.row < 0:
            return
        self._kinds.clear()
        self.seqs[seq.row] = None
        self.holes.append(seq.row)
        del self.synced[seq]
        seq.row = -1
        self.dirty = True

    def flush(self, decode: list) -> int:
        """Before a step: make live rows contiguous and write the blocks the scheduler appended
        to the decoding sequences. -> the number of live rows (== len(decode))."""
        if self.holes:
            self._compact()
        rows, cols, blocks = [], [], []
        synced = self.synced
        for seq in decode:
            n = len(seq.block_table)
            have = synced[seq]
            if n != have:
                for c in range(have, n):
                    rows.append(seq.row)
                    cols.append(c)
                    blocks.append(seq.block_table[c])
                synced[seq] = n
                if n > self.width:
                    self.width = n
        self.grown = rows
        if rows:
            idx = self._h2d([rows, cols, blocks], torch.int64)  # (3, n) one copy
            self.tables[idx[0], idx[1]] = idx[2].to(torch.int32)
        assert self.num_rows == len(decode), "decode batch and live rows disagree"
        self.num_rows_t.fill_(self.num_rows)
        return self.num_rows

    def _compact(self) -> None:
        n = self.num_rows
        holes = sorted(h for h in self.holes if h < n)
        movers = [r for r in range(n, len(self.seqs)) if self.seqs[r] is not None]
        if holes:
            src, dst = self._h2d(movers, torch.int64), self._h2d(holes, torch.int64)
            for t in (self.tables, self.lens, self.tokens, self.seeds, self.steps, self.temperature,
                      self.top_p, self.top_k):
                t[dst] = t[src]
            for r, h in zip(movers, holes):
                self.seqs[h] = self.seqs[r]
                self.seqs[h].row = h
        del self.seqs[n:]
        self.holes.clear()
        self._kinds.clear()
        self.width = max((len(s.block_table) for s in self.seqs), default=1)

    def add(self, seqs: list) -> None:
        """Give each sequence (its prompt done this step) the next row, after the live ones."""
        if not seqs:
            return
        first = len(self.seqs)
        if first + len(seqs) > self.max_rows:
            raise RuntimeError(f"more than {self.max_rows} decoding sequences")
        W = max(len(s.block_table) for s in seqs)  # columns past it are never read for these rows
        table = [s.block_table + [0] * (W - len(s.block_table)) for s in seqs]
        ints = [[len(s), s.seed, len(s.output_ids), s.params.top_k] for s in seqs]
        floats = [[s.params.temperature, s.params.top_p] for s in seqs]
        rows = slice(first, first + len(seqs))
        self.tables[rows, :W] = self._h2d(table, torch.int32)
        ints, floats = self._h2d(ints, torch.int64), self._h2d(floats, torch.float32)
        self.lens[rows], self.seeds[rows], self.steps[rows] = ints[:, 0].to(torch.int32), ints[:, 1], ints[:, 2]
        self.top_k[rows] = ints[:, 3].to(torch.int32)
        self.temperature[rows], self.top_p[rows] = floats[:, 0], floats[:, 1]
        self._kinds.clear()
        for i, s in enumerate(seqs):
            s.row = first + i
            self.seqs.append(s)
            self.synced[s] = len(s.block_table)
            self.width = max(self.width, len(s.block_table))
        self.dirty = True

    def commit(self, rows: slice, tokens, valid=None) -> None:
        """After sampling rows: the sampled token is fed next; one more token and step each.
        `valid` (bool per row) masks the padding rows of a CUDA-graph bucket."""
        if valid is None:
            self.tokens[rows] = tokens
            self.lens[rows] += 1
            self.steps[rows] += 1
        else:
            self.tokens[rows] = torch.where(valid, tokens, self.tokens[rows])
            self.lens[rows] += valid.to(torch.int32)
            self.steps[rows] += valid.to(torch.int64)
