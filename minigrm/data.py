"""JSONL data: reading benchmark / training items and writing results incrementally.

Paper: arXiv 2504.02495 §5.1 (RewardBench, PPE, RMB, ReaLMistake); GRM_SPEC.md §7.

Contract:
- `read_jsonl(path, required=())` yields one dict per non-blank line; a malformed line, a
  line that is not a JSON object, or a record missing a required field raises
  `ValueError("{path}:{lineno}: ...")` so nothing is silently lost.
- `load_items(path)` normalises the three accepted shapes to `Item`s:
    pair    {"prompt", "chosen", "rejected", "subset"?}   -> responses [chosen, rejected], truth [1, 0]
    list    {"prompt", "responses": [...], "best": i}     -> truth one-hot at best (0-based i)
    single  {"prompt", "response", "label": 0|1}          -> responses [response], truth [label]
  `prompt` is a string or a list of {"role", "content"} messages whose last turn is the
  user's (checked with prompts.render_context). `id` is the record's "id" when given, else
  its 1-based line number; `subset` is "subset" when given, else None. Other fields are kept
  in `extra` (e.g. a benchmark's category).
- `write_jsonl` writes a whole file; `append_jsonl` appends one record as one line and
  flushes (for long runs that write results as they go); `completed_ids` reads the ids
  already written so a run can resume.

Open choice: "best" is a 0-based index (the hint and the prompts number responses from 1).
"""
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .prompts import render_context

SHAPES = ('pairs {"prompt", "chosen", "rejected"}, lists {"prompt", "responses", "best"} '
          'or singles {"prompt", "response", "label"}')


@dataclass
class Item:
    id: int | str
    prompt: str | list[dict]
    responses: list[str]
    truth: list[int]          # ground-truth rewards; Eq. 10's labelled best is its unique max
    kind: str                 # "pair" | "list" | "single"
    subset: str | None = None
    extra: dict = field(default_factory=dict)


def item_key(item: Item) -> int:
    """A stable integer per item id (seeds its shuffles and samples); unlike hash(), the same
    in every process and run."""
    return zlib.crc32(str(item.id).encode())


def _numbered_records(path):
    """Yield (lineno, dict) for each non-blank line; malformed lines raise with `path:lineno`."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path, required=()):
    """Yield the records of a JSONL file; errors name `path:lineno`."""
    for lineno, record in _numbered_records(path):
        missing = [k for k in required if k not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}")
        yield record


def _item(record: dict, lineno: int) -> Item:
    """One record -> Item; raises ValueError (without the location, added by the caller)."""
    if "prompt" not in record:
        raise ValueError(f"missing field 'prompt'; expected {SHAPES}")
    prompt = record["prompt"]
    render_context(prompt)  # validates the prompt's shape and its last turn
    if "chosen" in record or "rejected" in record:
        if "chosen" not in record or "rejected" not in record:
            raise ValueError("a pair needs both 'chosen' and 'rejected'")
        kind, responses, truth = "pair", [record.get("chosen"), record.get("rejected")], [1, 0]
        fields = ("chosen", "rejected")
    elif "responses" in record:
        kind, responses, fields = "list", record["responses"], ("responses", "best")
        best = record.get("best")
        if not isinstance(responses, list) or not responses:
            raise ValueError("'responses' must be a non-empty list of strings")
        if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < len(responses):
            raise ValueError(f"'best' must be a 0-based index into {len(responses)} responses, got {best!r}")
        truth = [int(i == best) for i in range(len(responses))]
    elif "response" in record:
        kind, responses, fields = "single", [record["response"]], ("response", "label")
        label = record.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"'label' must be 0 or 1, got {label!r}")
        truth = [label]
    else:
        raise ValueError(f"unknown record shape with fields {sorted(record)}; expected {SHAPES}")
    if not all(isinstance(r, str) for r in responses):
        raise ValueError(f"every response must be a string ({', '.join(fields)})")
    used = {"prompt", "id", "subset", *fields}
    extra = {k: v for k, v in record.items() if k not in used}
    return Item(record.get("id", lineno), prompt, list(responses), truth, kind, record.get("subset"), extra)


def load_items(path) -> list[Item]:
    """All items of a JSONL file (see the module docstring for the accepted shapes)."""
    items = []
    for lineno, record in _numbered_records(path):
        try:
            items.append(_item(record, lineno))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return items


def write_jsonl(path, records) -> None:
    """Write all records (one JSON object per line), replacing the file atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def append_jsonl(path, record: dict) -> None:
    """Append one record as one line and flush it, so a crash loses at most this record."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


def completed_ids(path, key: str = "id") -> set:
    """Ids already present in a results file (empty when the file does not exist yet)."""
    if not Path(path).exists():
        return set()
    return {r[key] for r in read_jsonl(path, required=(key,))}
