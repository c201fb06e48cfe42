"""Which decode rows share which prefix: the groups of cascade attention (cascade.py).

    decode_groups(block_tables, lens, block_size, ...)  -> (groups, start)          the GPU kernels
    nested_groups(block_tables, lens, block_size, ...)  -> (outer, inner, start)   the CPU torch path

Pure host work on the block tables (the prefix cache makes identical token prefixes identical
block ids), run when the decode rows change, not every step.

The GRM workload shapes it: the k samples of a prompt share all of it, and the k shuffled prompts
of one query share the template and the query but not the responses' order. So rows are grouped
by their longest shared prefix when that reads fewer blocks per step (`_grouping`). The torch path
takes two levels (`nested_groups`): one group over what all of a query's prompts share, and in it
subgroups over each order's part, so every shared block is read once per step.
"""


def decode_groups(block_tables: list[list[int]], lens: list[int], block_size: int, min_blocks: int = 1,
                  max_rows: int | None = None):
    """One level, for the GPU kernels: group decode rows by shared leading blocks. -> [(rows,
    n_shared_blocks)] for groups of >= 2 rows that share >= min_blocks blocks (split into chunks
    of <= max_rows rows), and each row's first private position. Rows are split into groups
    sharing more when that reads fewer blocks per step (`_grouping`): the k shuffled GRM prompts
    of one query share the template and the query, and each order's samples share the whole
    prompt."""
    limit, min_blocks = _limits(lens, block_size), max(min_blocks, 1)
    groups = [g for rows in _by_first(block_tables) for g in _grouping(block_tables, rows, limit, min_blocks)[1]]
    start = _starts(len(block_tables), groups, block_size)
    if max_rows:
        groups = [(rows[i:i + max_rows], n) for rows, n in groups for i in range(0, len(rows), max_rows)]
    return groups, start


def nested_groups(block_tables: list[list[int]], lens: list[int], block_size: int, min_blocks: int = 1):
    """Two levels of groups, for the torch path: rows that share their first block and >= min_blocks
    blocks form one outer group over all they share (the template and the query of the k shuffled GRM
    prompts), and inside it `_grouping` finds inner groups over what their rows share past that (each
    order's part); every block shared by several rows is then read once per step. When any inner group
    exists, every other row of an outer group with >= min_blocks full blocks past its prefix is an inner
    group of one over them (no long suffix: the torch path pads every row's suffix to the longest).
    Rows outside outer groups are grouped as `decode_groups` groups them, and once some group exists
    every row left alone with a full block is an outer group of one over its full blocks: no row
    leaves a long suffix, whose width every row of the padded torch suffix would pay.
    -> (outer [(rows, n_blocks)], inner [(rows, first_block, end_block)], each row's first private position)"""
    limit, min_blocks = _limits(lens, block_size), max(min_blocks, 1)
    outer, inner, alone = [], [], []
    rest: dict[int, int] = {}  # row -> its outer prefix's blocks, for rows in no inner group
    for rows in _by_first(block_tables):
        n = _common(block_tables, rows, limit)
        if len(rows) < 2 or n < min_blocks:
            g, a = _grouping(block_tables, rows, limit, min_blocks)[1:]  # one level, as decode_groups
            outer += g
            alone += a
            continue
        outer.append((rows, n))
        shifted, left = {r: block_tables[r][n:] for r in rows}, {r: limit[r] - n for r in rows}
        g, a = _grouping(shifted, rows, left, min_blocks)[1:]
        inner += [(rs, n, n + m) for rs, m in g]
        rest.update((r, n) for r in a)
    start = _starts(len(block_tables), outer + [(rows, end) for rows, _, end in inner], block_size)  # inner last
    if inner:
        inner += _singletons(rest, rest, limit, min_blocks, start, block_size)
    if outer:
        outer += [(r, end) for r, _, end in _singletons(alone, [0] * len(lens), limit, 1, start, block_size)]
    return outer, inner, start


def _limits(lens, block_size):
    return [(n - 1) // block_size for n in lens]  # never share the block a query sits in


def _starts(B, groups, block_size):
    """Each row's first private position: the end of the last of `groups` [(rows, end_block)] it is in."""
    start = [0] * B
    for rows, end in groups:
        for r in rows:
            start[r] = end * block_size
    return start


def _by_first(tables):
    """Rows by their first block (only these can share a prefix)."""
    by_first: dict[int, list[int]] = {}
    for r, t in enumerate(tables):
        by_first.setdefault(t[0], []).append(r)
    return by_first.values()


def _singletons(rows, base, limit, min_blocks, start, block_size):
    """Groups of one over each row's own full blocks past base[r], at least min_blocks of them:
    [([row], base[r], end)]; the rows' start moves to the end."""
    out = [([r], base[r], limit[r]) for r in sorted(rows) if limit[r] - base[r] >= min_blocks]
    for (r,), _, end in out:
        start[r] = end * block_size
    return out


def _common(tables, rows, limit):
    """Blocks the rows all share, at most the least of their limits."""
    n, first = min(limit[r] for r in rows), tables[rows[0]]
    for r in rows[1:]:
        t = tables[r]
        if t[:n] != first[:n]:  # bisect the common prefix: t[:lo] == first[:lo], t[:hi] != first[:hi]
            lo, hi = 0, n
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if t[:mid] == first[:mid] else (lo, mid)
            n = lo
    return n


def _grouping(tables, rows, limit, min_blocks):
    """The cheapest grouping of rows that share their first block, by blocks read per step (a
    group reads its prefix once, each row its blocks past it; a row alone reads all its blocks).
    -> (cost, [(rows, n_shared)], rows left alone). Either all rows form one group over the
    blocks they all share, or they split by their first unshared block into subgroups that share
    more (recursively), the rest grouped over the common blocks or left alone."""
    if len(rows) < 2:
        return sum(limit[r] for r in rows), [], list(rows)
    n = _common(tables, rows, limit)

    def together(rs):  # rows sharing n blocks as one group (or alone, under min_blocks or single)
        if len(rs) >= 2 and n >= min_blocks:
            return n + sum(limit[r] - n for r in rs), [(rs, n)], []
        return sum(limit[r] for r in rs), [], list(rs)

    best = together(rows)
    by_next: dict[int, list[int]] = {}
    rest = []
    for r in rows:
        if limit[r] > n:
            by_next.setdefault(tables[r][n], []).append(r)
        else:
            rest.append(r)
    parts = [p for p in by_next.values() if len(p) >= 2]
    if parts and len(parts[0]) < len(rows):  # a split exists
        rest += [r for p in by_next.values() if len(p) < 2 for r in p]
        cost, groups, alone = together(rest)
        for p in parts:
            c, g, a = _grouping(tables, p, limit, min_blocks)
            cost, groups, alone = cost + c, groups + g, alone + a
        if cost < best[0]:
            best = (cost, groups, alone)
    return best
