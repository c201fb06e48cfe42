"""Run folders (`--out`): one run per folder, its settings recorded, one process writing at a time.

Contract (main process / rank 0 only):
    with runs.claim(out, settings) as out: ...          # infer_scale.py: for the whole run
    runs.take(out, settings, fresh_ok=bool(args.resume), has_run=...); ...; runs.release(out)
- `settings` are the values that shape what the run writes (model, data and their content
  hashes, seed, temperature, ...). The first run writes them to <out>/settings.json; a later run
  on the same folder must pass the same values, else it stops before doing anything with a
  message that lists each difference: results of two different runs never mix in one folder.
  Values that may change between runs without mixing anything (k_max, --limit, progress bars)
  are left out of `settings` by the caller.
- `fresh_ok=False` (a training script started without --resume): a folder that already holds a
  run is refused instead of silently overwriting its log ("pass --resume, or another --out").
- A lock file <out>/.lock holds the PID of the process using the folder; a second process on the
  same folder stops with a clear error. A lock left by a process that no longer exists (kill -9)
  is taken over with a warning.
- `fingerprint(path)` is a short content hash of a file or a folder's files (weights, data), so a
  changed file under an unchanged name is caught too. Files are hashed by size and content of
  their first and last MiB (fast for multi-GB weights; a change elsewhere with the same size is
  not seen, a trade-off stated here).
"""
import atexit
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

SETTINGS = "settings.json"
LOCK = ".lock"
_EDGE = 1 << 20


def fingerprint(path) -> str:
    """A short content hash of a file, or of every file in a folder (names, sizes, edges)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}\n".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_EDGE))
            if size > 2 * _EDGE:
                fh.seek(size - _EDGE)
                h.update(fh.read(_EDGE))
    return h.hexdigest()[:16]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _take_lock(out: Path) -> Path:
    lock = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                raise SystemExit(f"{out} is in use by another run (process {pid}); wait for it to finish or "
                                 f"use another --out (delete {lock} only if that process is gone)")
            if pid != os.getpid():  # (our own: an earlier run in this process, e.g. a test)
                print(f"warning: {lock} was left by process {pid or '?'}, which is gone; taking it over",
                      file=sys.stderr)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise SystemExit(f"could not take the lock {lock}")


def _differences(old: dict, new: dict) -> list[str]:
    return [f"  {k}: this folder has {old.get(k)!r}, this run has {new.get(k)!r}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def take(out, settings: dict, fresh_ok: bool = True, has_run=None) -> Path:
    """Lock `out` and check `settings` against the folder's (module docstring); the lock is
    released by `release(out)` or at the latest when the process exits. `has_run`: a callable
    telling whether the folder already holds this script's results (for fresh_ok)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = _take_lock(out)
    atexit.register(lock.unlink, missing_ok=True)
    try:
        path = out / SETTINGS
        settings = json.loads(json.dumps(settings))  # as it reads back (tuples -> lists)
        if path.exists():
            diff = _differences(json.loads(path.read_text()), settings)
            if diff:
                raise SystemExit(f"{out} holds a run with other settings; use another --out, or the same "
                                 f"settings to resume it:\n" + "\n".join(diff))
            if not fresh_ok:
                raise SystemExit(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        elif not fresh_ok and has_run is not None and has_run(out):
            raise SystemExit(f"{out} already holds a run (from before settings were recorded); pass --resume to "
                             "continue it, or choose another --out")
        tmp = out / (SETTINGS + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return out


def release(out) -> None:
    (Path(out) / LOCK).unlink(missing_ok=True)


@contextmanager
def claim(out, settings: dict, fresh_ok: bool = True, has_run=None):
    """`take` for the length of a with-block."""
    try:
        yield take(out, settings, fresh_ok, has_run)
    finally:
        release(out)
