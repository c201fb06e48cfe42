"""Data: reading benchmark / training items, and writing results incrementally.

Paper: arXiv 2504.02495 §5.1 (RewardBench, PPE, RMB, ReaLMistake); GRM_SPEC.md §7.

Contract:
- `read_jsonl(path, required=())` yields one dict per non-blank line; a malformed line, a line
  that is not a JSON object, a record missing a required field or bytes that are not UTF-8
  raise `ValueError("{path}:{lineno}: ...")` so nothing is silently lost.
- `load_items(paths)` reads a file, a folder (every *.jsonl and *.json in it, recursively, in
  sorted order) or a list of them. A .json file holding a JSON array is read as its records
  (errors name `path[index]`). The shapes:
    pair    {"prompt", "chosen", "rejected"}             -> responses [chosen, rejected], truth [1, 0]
    list    {"prompt", "responses": [...], "best": i}    -> truth one-hot at best (0-based i)
    single  {"prompt", "response", "label": 0|1}         -> responses [response], truth [label]
    ties    {"prompt", "responses": [...], "correct": [0|1, ...]} with two or more 1s
            (several correct responses, RewardBench 2's Ties; evaluation only)
  plus the native RMB and RewardBench 2 records (benchmarks.from_native). Every record may carry
  "id", "subset" and "benchmark"; other fields are kept in `extra`. `prompt` is a string or a
  list of {"role", "content"} messages whose last turn is the user's (prompts.render_context).
  The id is the record's "id", else its line number (with several files: "<file>:<line>").
  Two records with the same id (compared as strings: 1 and "1" are the same id) are an error
  naming both places: results are keyed by id, so they would mix.
- `write_jsonl` / `write_json` replace a whole file atomically; `append_jsonl` appends one record as one
  line in one write and flushes it, so a crash loses at most that record.
- `read_results(path)` reads an append-only results file of ours: a last line that a crash
  left torn (no newline, or not JSON) is dropped with a warning and cut from the file, so the
  next append starts on a fresh line and that record is simply produced again.

Open choice: "best" is a 0-based index (the hint and the prompts number responses from 1).
"""
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .benchmarks import benchmark_of, from_native
from .prompts import render_context

SHAPES = ('pairs {"prompt", "chosen", "rejected"}, lists {"prompt", "responses", "best"}, '
          'singles {"prompt", "response", "label"}, ties {"prompt", "responses", "correct"}, '
          'or native RMB / RewardBench 2 records')


@dataclass
class Item:
    id: int | str
    prompt: str | list[dict]
    responses: list[str]
    truth: list[int]          # ground-truth rewards; Eq. 10's labelled best is its unique max
    kind: str                 # "pair" | "list" | "single" | "ties"
    subset: str | None = None
    extra: dict = field(default_factory=dict)
    benchmark: str | None = None


def _json_line(path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _lines(path):
    """(lineno, text) of every line; bytes that are not UTF-8 raise with the line number."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _numbered_records(path):
    """Yield (place, dict): place is "path:lineno" for JSONL, "path[i]" for a JSON array file."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if text.lstrip().startswith("["):
            try:
                array = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            for i, record in enumerate(array):
                if not isinstance(record, dict):
                    raise ValueError(f"{path}[{i}]: expected a JSON object, got {type(record).__name__}")
                yield f"{path}[{i}]", i + 1, record
            return
    for lineno, line in _lines(path):
        if line.strip():
            yield f"{path}:{lineno}", lineno, _json_line(path, lineno, line)


def read_jsonl(path, required=()):
    """Yield the records of a JSONL file; errors name `path:lineno`."""
    for place, _, record in _numbered_records(path):
        missing = [k for k in required if k not in record]
        if missing:
            raise ValueError(f"{place}: missing field(s) {missing}")
        yield record


def _strings(responses, fields) -> list[str]:
    if not all(isinstance(r, str) for r in responses):
        raise ValueError(f"every response must be a string ({', '.join(fields)})")
    return list(responses)


def _item(record: dict, default_id) -> Item:
    """One record -> Item; raises ValueError (the caller adds the place)."""
    record = from_native(record) or record
    if "prompt" not in record:
        raise ValueError(f"missing field 'prompt'; expected {SHAPES}")
    render_context(record["prompt"])  # validates the prompt's shape and its last turn
    if "chosen" in record or "rejected" in record:
        if "chosen" not in record or "rejected" not in record:
            raise ValueError("a pair needs both 'chosen' and 'rejected'")
        fields = ("chosen", "rejected")
        kind, responses, truth = "pair", _strings([record["chosen"], record["rejected"]], fields), [1, 0]
    elif "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not responses:
            raise ValueError("'responses' must be a non-empty list of strings")
        if "correct" in record:
            fields, correct = ("responses", "correct"), record["correct"]
            if (not isinstance(correct, list) or len(correct) != len(responses)
                    or any(c not in (0, 1) or isinstance(c, bool) for c in correct) or not 0 < sum(correct) < len(correct)):
                raise ValueError(f"'correct' must be a 0/1 list over the {len(responses)} responses with both values")
            kind, truth = ("ties" if sum(correct) > 1 else "list"), list(correct)
        else:
            fields, best = ("responses", "best"), record.get("best")
            if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < len(responses):
                raise ValueError(f"'best' must be a 0-based index into {len(responses)} responses, got {best!r}")
            kind, truth = "list", [int(i == best) for i in range(len(responses))]
        if len(responses) < 2:
            raise ValueError("a list needs at least two responses (use {\"response\", \"label\"} for one)")
        responses = _strings(responses, fields)
    elif "response" in record:
        fields, label = ("response", "label"), record.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"'label' must be 0 or 1, got {label!r}")
        kind, responses, truth = "single", _strings([record["response"]], fields), [label]
    else:
        raise ValueError(f"unknown record shape with fields {sorted(record)}; expected {SHAPES}")
    subset = record.get("subset")
    if subset is not None and not isinstance(subset, str):
        raise ValueError(f"'subset' must be a string, got {subset!r}")
    item_id = record.get("id", default_id)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise ValueError(f"'id' must be a string or an integer, got {item_id!r}")
    texts = [record["prompt"]] if isinstance(record["prompt"], str) else [m["content"] for m in record["prompt"]]
    for text in texts + responses:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text holds a lone surrogate ({text[e.start]!r} at character {e.start}): "
                             "not valid Unicode") from None
    used = {"prompt", "id", "subset", "benchmark", *fields}
    extra = {k: v for k, v in record.items() if k not in used}
    return Item(item_id, record["prompt"], responses, truth, kind, subset, extra,
                benchmark_of(subset, record.get("benchmark")))


def _files(paths) -> list[Path]:
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".jsonl", ".json") and f.is_file())
            if not found:
                raise ValueError(f"{p}: no .jsonl or .json files in this folder")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"data file not found: {p}")
    return out


def load_items(paths) -> list[Item]:
    """All items of one or more files or folders (see the module docstring)."""
    files = _files(paths)
    items, seen = [], {}
    for path in files:
        for place, lineno, record in _numbered_records(path):
            default_id = lineno if len(files) == 1 else f"{path.name}:{lineno}"
            try:
                item = _item(record, default_id)
            except ValueError as e:
                raise ValueError(f"{place}: {e}") from None
            if str(item.id) in seen:
                raise ValueError(f"{place}: duplicate item id {item.id!r} (first at {seen[str(item.id)]}); "
                                 "give every record a unique 'id'")
            seen[str(item.id)] = place
            items.append(item)
    return items


def write_jsonl(path, records) -> None:
    """Write all records (one JSON object per line), replacing the file atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_json(path, value) -> None:
    """Write one JSON value, replacing the file atomically (a crash leaves the old one or the new one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json_list(path) -> list | None:
    """A cached JSON list, or None when it is missing or damaged (then it is computed again)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        print(f"warning: {path} is damaged (an interrupted write?); computing it again", file=sys.stderr)
        return None
    return value if isinstance(value, list) else None


def append_jsonl(path, record: dict) -> None:
    """Append one record as one line in one write and flush it (a crash loses at most this record)."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_results(path, required=()) -> list[dict]:
    """The records of one of our append-only results files ([] when it does not exist yet);
    a torn last line is dropped with a warning and cut from the file (module docstring); a record
    without a `required` field is an error naming its file and line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    body, _, tail = data.rpartition(b"\n")
    keep = len(body) + 1 if body or data.startswith(b"\n") else 0
    if tail.strip():  # the last line never got its newline
        _cut(path, keep, tail)
    elif body:
        last_start = body.rfind(b"\n") + 1
        try:
            json.loads(body[last_start:].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            _cut(path, last_start, body[last_start:])
    return list(read_jsonl(path, required))


def _cut(path: Path, size: int, dropped: bytes) -> None:
    print(f"warning: {path}: dropping a torn last line left by an interrupted run "
          f"({len(dropped)} bytes: {dropped[:60]!r}...); it will be produced again", file=sys.stderr)
    with open(path, "r+b") as f:
        f.truncate(size)
