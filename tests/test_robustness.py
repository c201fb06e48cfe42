"""What survives what: changed settings, torn lines, a second run on the same folder, bad flags,
over-long inputs and broken files each get a clear outcome, never a mixed or lost result.
(Checkpoint safety, keep-last and signals: tests/test_training.py; fresh-start refusal and
resume rules of the training scripts: tests/test_train_rl.py / test_train_rft.py.)"""
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch

import infer_scale
import minigrm
from minigrm import runs
from minigrm.data import read_results
from minigrm.meta_rm import MetaRM
from minigrm.sampling import SamplingParams

PAIRS = [{"id": f"q{i}", "prompt": f"Question {i}?", "chosen": "right", "rejected": "wrong"} for i in range(6)]
TIE = lambda n: ", ".join(["8"] * n)  # noqa: E731


def test_a_rerun_with_other_settings_is_refused(scripted, tmp_path):
    scripted(tmp_path, PAIRS, TIE, k_max=2)
    with pytest.raises(SystemExit, match=r"seed: this folder has 0, this run has 1"):
        scripted(tmp_path, PAIRS, TIE, k_max=2, seed=1)
    with pytest.raises(SystemExit, match=r"temperature: this folder has 0.5, this run has 0.7"):
        scripted(tmp_path, PAIRS, TIE, k_max=2, extra=["--temperature", "0.7"])
    with pytest.raises(SystemExit, match="data_hash"):  # same file name, other content
        scripted(tmp_path, PAIRS[:3], TIE, k_max=2)
    rows = scripted(tmp_path, PAIRS, TIE, k_max=4)  # more samples for the same run: fine
    assert "Voting@4" in rows


def test_a_torn_judgment_line_is_sampled_again(scripted, tmp_path, capsys):
    first = scripted(tmp_path, PAIRS, TIE, k_max=2)
    path = tmp_path / "out-run" / "judgments.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole[:-25])  # a crash in the middle of the last record
    again = scripted(tmp_path, PAIRS, TIE, k_max=2)
    assert "torn last line" in capsys.readouterr().err
    assert path.read_bytes().count(b"\n") == whole.count(b"\n") and again == first


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / runs.LOCK).write_text(f"{holder.pid}\n")
        with pytest.raises(SystemExit, match=f"in use by another run \\(process {holder.pid}\\)"):
            runs.take(tmp_path, {"a": 1})
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    runs.take(tmp_path, {"a": 1})  # the holder is gone: its lock is taken over, with a warning
    assert "taking it over" in capsys.readouterr().err
    runs.release(tmp_path)
    assert not (tmp_path / runs.LOCK).exists()


@pytest.mark.parametrize("flags, message", [
    (["--k-max", "0"], "--k-max"), (["--limit", "-1"], "--limit"), (["--chunk", "0"], "--chunk"),
    (["--dtype", "foo"], "--dtype"), (["--temperature", "nan"], "--temperature"),
    (["--max-tokens", "1.5"], "--max-tokens"), (["--device", "cuda"], "no CUDA device"),
    (["--data", "nope.jsonl"], "not found"), (["--meta-rm", "minigrm/demo/grm"], "not a .*ForSequenceClassification"),
])
def test_bad_flags_stop_before_anything_runs(flags, message, capsys):
    if "--device" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as e:
        infer_scale.parse_args(flags)
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize("kw", [dict(n=2.0), dict(max_tokens=1.5), dict(temperature=float("nan")),
                                dict(n=True), dict(top_p="1")])
def test_sampling_params_refuse_wrong_types(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_a_prompt_the_engine_refuses_is_an_invalid_judgment_with_its_reason(scripted, tmp_path, capsys):
    items = PAIRS[:2] + [{"id": "long", "prompt": "REFUSE this", "chosen": "a", "rejected": "b"}]
    rows = scripted(tmp_path, items, TIE, k_max=2)
    records = read_results(tmp_path / "out-run" / "judgments.jsonl")
    refused = [r for r in records if r["item"] == "long"]
    assert len(refused) == 3 and all(r["reason"] == "error" and "no room" in r["error"] for r in refused)
    assert "judgments refused by the engine" in capsys.readouterr().out
    assert rows["Voting@2"]["invalid_rate"] == pytest.approx(1 / 3)


def test_the_meta_rm_skips_inputs_longer_than_its_context():
    model = minigrm.load_model("minigrm/demo/meta_rm")
    meta = MetaRM(model, minigrm.load_tokenizer("minigrm/demo/meta_rm"))
    short = meta.encode("What is 1 + 1?", ["2", "3"], "Scores: \\boxed{9, 2}")
    too_long = short * (meta.max_len // len(short) + 1)
    got = meta.score_ids([short, too_long, short])
    assert got[1] is None and got[0] == pytest.approx(got[2]) and isinstance(got[0], float)


def test_broken_files_name_themselves(tmp_path):
    good = tmp_path / "good"
    shutil.copytree("minigrm/demo/grm", good)
    for name, content, message in [
        ("config.json", b"{not json", "config.json: not valid JSON"),
        ("config.json", json.dumps({"model_type": "llama"}).encode(), "config.json: missing field"),
        ("tokenizer.json", b"garbage", "tokenizer.json: not a tokenizers file"),
        ("tokenizer_config.json", b"[1, 2", "tokenizer_config.json: not valid JSON"),
    ]:
        broken = tmp_path / f"broken-{name}-{len(content)}"
        shutil.copytree(good, broken)
        (broken / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            (minigrm.load_tokenizer if name.startswith("tokenizer") else minigrm.load_model)(broken)
    missing = tmp_path / "no-tokenizer"
    shutil.copytree(good, missing)
    (missing / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        minigrm.load_tokenizer(missing)
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: not a complete safetensors file"):
        minigrm.load_model(good)


def test_a_results_record_without_its_key_names_file_and_line(tmp_path):
    path = tmp_path / "judgments.jsonl"
    path.write_text('{"item": "1", "sample": 0}\n{"item": "1"}\n')
    with pytest.raises(ValueError, match=r"judgments\.jsonl:2: missing field\(s\) \['sample'\]"):
        read_results(path, required=("item", "sample"))
