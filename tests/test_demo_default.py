"""The shipped demo: `python infer_scale.py` with no arguments runs on the GRM and meta RM in
minigrm/demo (here on a slice, with k up to 4), and the shipped files are what the card says."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import infer_scale
import minigrm
from minigrm.data import load_items
from minigrm.demo import reproduce

DEMO = Path(infer_scale.__file__).resolve().parent / "minigrm" / "demo"


def test_shipped_checkpoints_are_small_and_load():
    sizes = sum(f.stat().st_size for d in ("grm", "meta_rm") for f in (DEMO / d).iterdir())
    assert sizes < 60e6, sizes  # the budget: GRM + meta RM at most 60 MB
    grm, meta = minigrm.load_model(DEMO / "grm"), minigrm.load_model(DEMO / "meta_rm")
    assert not grm.config.is_classifier and meta.config.num_labels == 1
    items = load_items(DEMO / "data" / "test.jsonl")
    assert Counter(it.kind for it in items) == reproduce.FULL["ship_items"]  # the slice the card describes


def test_default_run_on_a_slice(tmp_path):
    # the defaults (demo GRM + meta RM + held-out split) with a reduced k and item count
    infer_scale.main(["--out", str(tmp_path), "--k-max", "4", "--limit", "24", "--no-progress"])
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["setting"] for r in rows] == ["Greedy", "Voting@1", "Voting@2", "Voting@4", "MetaRM@2", "MetaRM@4"]
    greedy = rows[0]
    assert greedy["invalid_rate"] < 0.2  # the shipped GRM writes the paper's format
    assert greedy["accuracy"]["lo"] <= greedy["accuracy"]["value"] <= greedy["accuracy"]["hi"]
    assert 0.3 < greedy["chance"] < 0.5 and set(greedy["subsets"]) == {"add", "mul", "sub"}
    assert (tmp_path / "scaling.svg").read_text().startswith("<svg")


def test_no_argument_command_starts(tmp_path):
    # the README's first command, as a process, from another working directory (k and items cut by
    # argument only because the full default takes ~a minute; every default path is used)
    r = subprocess.run([sys.executable, str(Path(infer_scale.__file__)), "--out", str(tmp_path / "o"), "--k-max",
                        "1", "--limit", "3", "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Greedy" in r.stdout and "Voting@1" in r.stdout
