"""`python -m minigrm.gpu_check`: its CPU dry run end to end, and the isolation of its parts
(a part that fails or runs out of time leaves the others' figures in the report)."""
import torch

from minigrm import gpu_check
from minigrm.gpu_report import write_report


def test_dry_run_writes_every_figure(tmp_path):
    out, threads = tmp_path / "report.md", torch.get_num_threads()
    try:
        results = gpu_check.main(["--dry-run", "--out", str(out), "--skip", "tests"])  # tests: see test_gpu.py
    finally:
        torch.set_grad_enabled(True)
        torch.set_num_threads(threads)
    assert not [k for k, r in results.items() if "error" in r]
    variants = results["minigrm:tiny"]["variants"]
    assert set(variants) == {"graphs + cascade", "no cascade", "no graphs"}
    assert all(v["tokens_per_s"] > 0 and v["decode_ms"] > 0 for v in variants.values())
    assert results["hf:tiny"]["seconds"] > 0 and results["overhead"]["ms_per_step"] > 0
    text = out.read_text()
    assert [r["batch"] for r in results["deepseek"]["rows"]] == [1, 4]
    assert all(r["tokens_per_s"] > 0 and r["bytes_per_step"] > 0 for r in results["deepseek"]["rows"])
    for heading in ("## GRM workload", "## Batch-1 decode", "## Engine overhead", "## DeepSeek-V2-Lite decode",
                    "## Failed or skipped parts"):
        assert heading in text
    assert "| tiny | transformers generate |" in text and "| tiny | minigrm, no graphs |" in text


def test_a_failing_or_hanging_part_leaves_the_others(tmp_path, monkeypatch):
    def broken(cfg, out):
        out["half"] = 1.0  # figures saved before the failure are kept
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setitem(gpu_check.PARTS, "hf", broken)
    r = gpu_check.run_part("hf", {}, str(tmp_path / "hf.json"), isolate=False, timeout=None)
    assert "illegal memory access" in r["error"] and r["half"] == 1.0
    # a child process past its time box is killed; the run goes on
    slow = gpu_check.run_part("tests", {"dry_run": True}, str(tmp_path / "t.json"), isolate=True, timeout=1)
    assert "timed out" in slow["error"]
    results = {"env": {"device": "X"}, "hf:a": r, "tests": slow,
               "minigrm:a": {"variants": {"graphs + cascade": dict(seconds=2.0, tokens_per_s=10.0, decode_ms=1.0, graphs=True,
                                                                   decode_tok_s=5.0, roofline_plain=0.5, roofline_shared=0.2)}}}
    write_report(tmp_path / "r.md", results, dict(dry_run=False, workload=gpu_check.WORKLOAD, dtype="bfloat16",
                                                 device="cuda"), 1.0)
    text = (tmp_path / "r.md").read_text()
    assert "| a | minigrm, graphs + cascade | yes | 2.0 | 10 |" in text and "50%" in text
    assert "**hf:a**" in text and "**tests**" in text and "timed out" in text
