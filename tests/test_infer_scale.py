"""infer_scale.py end to end on the real SmolLM2 (a weak judge, but a real one), and its
evaluation on constructed judgments."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import infer_scale
import minigrm
from minigrm.data import load_items, read_jsonl
from minigrm.judgments import settings_rows
from minigrm.meta_rm import load_meta_rm

ONE_OF_EACH = [  # a pair (with a subset), a list, a single
    {"prompt": "What is 2 + 3?", "chosen": "2 + 3 = 5.", "rejected": "2 + 3 = 6.", "subset": "math-prm"},
    {"prompt": [{"role": "user", "content": "Give a synonym of 'happy'."}], "responses": ["sad", "joyful", "angry"],
     "best": 1},
    {"prompt": "Is water dry?", "response": "Yes, water is dry.", "label": 0},
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "items.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in ONE_OF_EACH))
    return path


@pytest.fixture(scope="module")
def meta_rm_path(smollm2_path, tmp_path_factory):
    """SmolLM2 with a freshly initialised scalar head, saved by transformers (as a user would)."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(smollm2_path, num_labels=1)
    out = tmp_path_factory.mktemp("meta_rm")
    hf.save_pretrained(out)
    minigrm.load_tokenizer(smollm2_path)  # the folder's tokenizer files travel with it
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (out / f).write_bytes((smollm2_path / f).read_bytes())
    return out


def run(args):
    infer_scale.main([str(a) for a in args])


def test_end_to_end_with_meta_rm_and_resume(smollm2_path, meta_rm_path, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", smollm2_path, "--meta-rm", meta_rm_path, "--data", data, "--out", out,
            "--k-max", 2, "--max-tokens", 12, "--no-progress"]
    run(args)
    table = capsys.readouterr().out
    for setting in ("Greedy", "Voting@1", "Voting@2", "MetaRM@2"):
        assert setting in table
    records = list(read_jsonl(out / "judgments.jsonl"))
    assert len(records) == 3 * (1 + 2)
    assert {(r["item"], r["sample"]) for r in records} == {(i, s) for i in "123" for s in ["greedy", 0, 1]}
    assert len(list(read_jsonl(out / "meta.jsonl"))) == 3 * 2
    rows = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in rows] == ["Greedy", "Voting@1", "Voting@2", "MetaRM@2"]
    assert (out / "results.csv").read_text().startswith("setting,k,scope,metric,value,lo,hi,n")
    assert rows[0]["accuracy"]["n"] == 2 and "roc_auc" not in rows[0]  # one single: no AUC
    assert rows[0]["benchmarks"]["RewardBench"]["sections"].keys() == {"Reasoning"}
    rb = json.loads((out / "rewardbench" / "Voting_at_2.json").read_text())
    assert rb["model_type"] == "Generative RM" and set(rb) >= {"model", "math-prm"}

    # An interrupted run: the last judgments never reached the disk. Rerunning samples exactly
    # those again, with the same seeds, so they come back identical.
    lines = (out / "judgments.jsonl").read_text().splitlines(keepends=True)
    (out / "judgments.jsonl").write_text("".join(lines[:5]))
    run(args)
    assert "5 judgments on disk, 4 to sample" in capsys.readouterr().out
    again = list(read_jsonl(out / "judgments.jsonl"))
    key = lambda r: (r["item"], str(r["sample"]))  # noqa: E731
    assert sorted(again, key=key) == sorted(records, key=key)
    assert json.loads((out / "results.json").read_text()) == rows


def test_meta_rm_equals_transformers_sequence_classifier(meta_rm_path):
    meta = load_meta_rm(meta_rm_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(meta_rm_path).eval()
    seqs = [meta.encode("What is 2 + 3?", ["5", "6"], "Scores: \\boxed{9, 2}"),
            meta.encode("Hi", ["Hello!"], "Analysis: polite.\nScores: \\boxed{8}")]
    got = meta.score_ids(seqs)
    with torch.no_grad():
        ref = [hf(torch.tensor([s])).logits.item() for s in seqs]
    assert max(abs(a - b) for a, b in zip(got, ref)) < 1e-4


def test_voting_and_meta_rm_on_constructed_judgments(tmp_path):
    """A judge right on half its samples: voting ties, the meta RM (which knows which judgments
    are right) makes MetaRM@k always correct."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    items = load_items(path)
    rec = lambda sample, scores: {"item": "1", "sample": sample, "scores": scores, "finish_reason": "stop"}  # noqa: E731
    judgments, metas = [rec("greedy", [3, 7])], []
    for j in range(4):
        right = j % 2 == 1
        judgments.append(rec(j, [8, 2] if right else [2, 8]))  # original order: chosen first
        metas.append({"item": "1", "sample": j, "meta": 5.0 if right else -5.0})
    rows = {r["setting"]: r for r in settings_rows(items, judgments, metas, k_max=4, seed=0, n_boot=20)}
    assert rows["Greedy"]["accuracy"]["value"] == 0.0
    assert rows["MetaRM@2"]["accuracy"]["value"] == 1.0 and rows["MetaRM@4"]["accuracy"]["value"] == 1.0
    assert rows["Voting@4"]["accuracy_strict"]["value"] == 0.0  # 2 right + 2 wrong: a tie
    assert rows["Voting@4"]["accuracy_rb"]["value"] == 0.5


@pytest.mark.slow
def test_two_process_run_equals_one_process(smollm2_path, data, tmp_path):
    common = ["--model", str(smollm2_path), "--data", str(data), "--k-max", "2", "--max-tokens", "8",
              "--no-progress", "--device", "cpu", "--no-meta-rm"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "infer_scale.py", "--out", str(tmp_path / "one"), *common],
                   check=True, env=env, cwd=Path(infer_scale.__file__).parent)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "infer_scale.py",
                    "--out", str(tmp_path / "two"), *common], check=True, env=env,
                   cwd=Path(infer_scale.__file__).parent)
    assert sorted((tmp_path / "two").glob("judgments*")) == [tmp_path / "two" / "judgments.rank0.jsonl",
                                                           tmp_path / "two" / "judgments.rank1.jsonl"]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one == two
