"""Every stage of the demo pipeline runs with the project's own scripts (tiny sizes), writes the
results and pictures from its own outputs, ships them, and a rerun skips every finished stage."""
import json
import xml.etree.ElementTree as ET

import pytest

from minigrm.data import load_items, read_jsonl
from minigrm.demo import findings, reproduce
from minigrm.resume import latest_checkpoint


def test_quick_pipeline_runs_every_stage(tmp_path, capfd):
    out, ship = tmp_path / "demo", tmp_path / "ship"
    reproduce.main(["--out", str(out), "--quick", "--ship", str(ship)])
    for stage in ("rft_small", "rl_small", "rft_large", "meta_rm", "ablation_no_rejection", "rft_small_seed1",
                  "ablation_no_rejection_seed1"):  # every RFT recipe once per training seed
        assert latest_checkpoint(out / stage) is not None, stage
    for f in ("teacher.jsonl", "teacher_no_hinted.jsonl", "teacher_hinted_only.jsonl", "teacher_no_principles.jsonl",
              "base_small/tokenizer.json", "base_large/model.safetensors", "meta_samples/judgments.jsonl"):
        assert (out / f).exists(), f
    rows = json.loads((out / "eval_rl_small" / "results.json").read_text())
    assert [r["setting"] for r in rows] == ["Greedy", "Voting@1", "Voting@2", "MetaRM@2"]
    for row in rows:  # findings' per-item recomputation scores every setting exactly as infer_scale.py did
        got = findings.item_correct(out, "rl_small", row["setting"])
        assert sum(got.values()) / len(got) == pytest.approx(row["accuracy"]["value"]), row["setting"]
    assert findings.paired_delta(out, "rl_small", "rl_small", "Voting@2")["value"] == 0
    rejection = json.loads((out / "ablation_no_rejection" / "rejection.json").read_text())
    assert rejection["accepted"] == rejection["trajectories"]  # --no-rejection keeps every trajectory
    full = json.loads((out / "rft_small" / "rejection.json").read_text())
    assert full["accepted"] < full["trajectories"] and full["items"] == rejection["items"]  # every training item
    for stage in ("rft_small", "ablation_no_rejection", "ablation_no_rejection_seed1"):  # the full recipe's steps
        assert len(list(read_jsonl(out / stage / "log.jsonl"))) == reproduce.QUICK["rft_steps"], stage
    meta = json.loads((out / "meta_rm" / "meta_data.json").read_text())
    assert meta["examples"] > 0 and meta["skipped"] > 0  # greedy / hinted judgments are left out
    md = (out / "results.md").read_text()
    for heading in ("## 1. SPCT stages", "## 2-3. Inference-time scaling", "## 4. Inference-time scaling vs model "
                    "size", "## 5. RFT ablations", "w/o rejective sampling", "MetaRM@k - Voting@k", "The meta RM",
                    "findings at a glance", "Wall time per stage", "66.1", "72.8", "Greedy per seed",
                    "Training noise: seed 1 minus seed 0", "mean of 2 seeds"):
        assert heading in md, heading
    assert "| small (" in md and "| large (RFT) | " in md and "| GRPO - RFT |" in md
    for svg in ("scaling.svg", "stages.svg"):
        ET.fromstring((out / svg).read_text())  # well-formed pictures
    assert "larger GRM (RFT) greedy" in (out / "scaling.svg").read_text()
    timings = json.loads((out / "timings.json").read_text())
    assert {"base_small", "base_large", "rft_small", "rft_large", "meta_rm", "eval_rl_small"} <= set(timings)
    for name in ("grm", "meta_rm"):  # shipped: what infer_scale.py runs on by default, no optimizer state
        assert sorted(p.name for p in (ship / name).iterdir()) == [
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    shipped, held_out = load_items(ship / "data" / "test.jsonl"), load_items(out / "data" / "test.jsonl")
    for kind, n in reproduce.QUICK["ship_items"].items():  # the first held-out items of each kind
        assert [it.id for it in shipped if it.kind == kind] == [it.id for it in held_out if it.kind == kind][:n]
    assert len(shipped) == sum(reproduce.QUICK["ship_items"].values())
    assert (ship / "results.md").read_text() == md
    capfd.readouterr()
    reproduce.main(["--out", str(out), "--quick"])  # a rerun skips every finished stage
    skipped = {line.split(":")[0].removeprefix("== ") for line in capfd.readouterr().out.splitlines()
               if "done already" in line}  # (base_small is asked for by two parts)
    assert skipped == set(timings)
