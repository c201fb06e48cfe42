"""Training and scoring batches of token sequences: length-grouped, right-padded.

Contract:
    length_grouped(lengths, max_tokens) -> [[index, ...], ...]   longest first, rows x longest <= max_tokens
    right_pad(rows, pad, dtype=torch.long) -> (B, T) tensor      lists padded on the right (ids or masks)

Why length grouping instead of packing: the decoder attends plain-causally over a whole row
and has no block-diagonal mask, so packing two sequences into a row would let the second attend
to the first. Grouping similar lengths keeps the padding small; right padding keeps every real
token's position and causal context exactly as in an unpadded forward (a real token never sees
the pads after it), which is why the results equal per-sequence forwards (pinned by tests).
"""
import torch


def length_grouped(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Group indices, longest first, so that len(group) * longest <= max_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable among equal lengths
    groups: list[list[int]] = []
    for i in order:
        if lengths[i] > max_tokens:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the batch budget of "
                             f"{max_tokens}; truncate or drop it before batching")
        # the group's first example is its longest, so the padded size is count * that length
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def right_pad(rows: list[list], pad, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Rows of ids (or of mask flags) -> (B, T) tensor, each row padded on the right with `pad`."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), pad, dtype=dtype)  # (B, T)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.as_tensor(r, dtype=dtype)
    return out
