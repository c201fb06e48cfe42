"""Every stage of the demo pipeline runs with the project's own scripts (tiny sizes)."""
import json

from minigrm.demo import reproduce
from minigrm.resume import latest_checkpoint


def test_quick_pipeline_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    reproduce.main(["--out", str(out), "--quick", "--ship", str(tmp_path / "ship")])
    for stage in ("rft", "rl", "meta_rm"):
        assert latest_checkpoint(out / stage) is not None, stage
    assert (out / "base" / "tokenizer.json").exists() and (out / "teacher.jsonl").exists()
    rows = json.loads((out / "eval_rl" / "results.json").read_text())
    assert [r["setting"] for r in rows] == ["Greedy", "Voting@1", "Voting@2", "MetaRM@2"]
    table = (out / "results.md").read_text()
    assert table.count("| base |") == 2 and table.count("| rl |") == 4
    assert "| 1-1 |" in table and '"acceptance_rate"' in table  # the GRPO curve, the RFT rejection stats
    for name in ("grm", "meta_rm"):  # shipped: what infer_scale.py runs on by default, no optimizer state
        assert sorted(p.name for p in (tmp_path / "ship" / name).iterdir()) == [
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "ship" / "data" / "test.jsonl").read_text() == (out / "data" / "test.jsonl").read_text()
    reproduce.main(["--out", str(out), "--quick"])  # a rerun skips every finished stage
    assert capsys.readouterr().out.count("done already") == 6
