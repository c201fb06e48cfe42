"""train_rft.py on a tiny model with a real tokenizer: rejection accounting, resumable
sampling, SFT on non-hinted prompts, exact resume, and the meta-RM mode's checkpoint.

A random tiny model never writes a valid judgment, so tests swap `train_rft.judge` for a rule
that decides correctness from (item, sample) to control what is accepted."""
import json
import os
import signal
import zlib
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import minigrm
import train_rft
from minigrm.data import load_items, read_jsonl
from minigrm.grm import Verdict
from minigrm.meta_rm import MetaRM, load_meta_rm
from minigrm.tokenizer import load_tokenizer
from factories import write_items

pytestmark = pytest.mark.usefixtures("one_thread")


def common(tiny_model, data, out):
    return ["--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-tokens", "12",
            "--kv-cache-gb", "0.05", "--device", "cpu", "--hinted-share", "1.0", "--seed", "1",
            "--lr", "1e-3", "--warmup-steps", "1"]


def fake_judge(item, order, text, finish_reason="stop", training=False, baseline=False):
    """Items 1 and 2 (pairs): judged right on about half their samples (a hash of the text)."""
    right = item.id in (1, 2) and zlib.crc32(text.encode()) % 2 == 1
    return Verdict([1] * len(item.responses), None, right, 1.0 if right else -1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("rft") / "items.jsonl")


def test_rft_end_to_end(tiny_model, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    out = tmp_path / "run"
    train_rft.main(common(tiny_model, data, out) + ["--sft-data", str(chat), "--max-tokens-per-batch", "1500"])
    records = list(read_jsonl(out / "trajectories.jsonl"))
    # 3 non-hinted samples per item, one hinted sample for each of the 3 multi-response items
    assert len(records) == 4 * 3 + 3 and sum(r["hinted"] for r in records) == 3
    assert all(r["tokens"] <= 12 and r["order"] and r["training"] for r in records)
    items = {str(it.id): it for it in load_items(data)}
    expected, _ = train_rft.select([dict(r, correct=fake_judge(items[r["item"]], r["order"], r["text"]).correct)
                                    for r in records])
    stats = json.loads((out / "rejection.json").read_text())
    assert stats["accepted"] == len(expected) > 0 and stats["sft_data_examples"] == 1
    log = list(read_jsonl(out / "log.jsonl"))
    assert len(log) >= 1 and all(r["loss"] > 0 for r in log)
    ckpt = out / f"checkpoint-{log[-1]['step']}"
    ids = torch.randint(0, 49152, (1, 16))
    with torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
        ours = minigrm.load_model(ckpt)
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
        assert (ours(ids) - minigrm.load_model(tiny_model)(ids)).abs().max() > 1e-3

    # hinted trajectories are trained on the prompt WITHOUT the hint, in the order they were sampled
    tok = load_tokenizer(tiny_model)
    hinted = [r for r in records if r["hinted"]][:1]
    (prompt_and_output, mask), = train_rft.rft_examples(hinted, items, tok)
    text = tok.decode(prompt_and_output)
    assert "The best response is" not in text
    target = tok.decode([t for t, m in zip(prompt_and_output, mask) if m])
    assert target == hinted[0]["text"] + "<|im_end|>\n"  # the judgment's text and the template's end of turn
    assert "The best response is" in tok.decode(train_rft.prompt_ids(tok, items[hinted[0]["item"]],
                                                                     hinted[0]["order"], hint=True))

    # stage A resumes: a lost tail is sampled again, identically, and nothing else
    lines = (out / "trajectories.jsonl").read_text().splitlines(keepends=True)
    (out / "trajectories.jsonl").write_text("".join(lines[:10]))
    capsys.readouterr()
    train_rft.main(common(tiny_model, data, out) + ["--sft-data", str(chat), "--max-tokens-per-batch", "1500",
                                                    "--resume"])
    assert "10 trajectories on disk, 5 to sample" in capsys.readouterr().out
    key = lambda r: (r["item"], r["sample"])  # noqa: E731
    assert sorted(read_jsonl(out / "trajectories.jsonl"), key=key) == sorted(records, key=key)


def test_sft_resume_equals_uninterrupted(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    args = ["--max-tokens-per-batch", "1200", "--epochs", "2", "--save-every", "100"]
    full = tmp_path / "full"
    train_rft.main(common(tiny_model, data, full) + args)
    n = len(list(read_jsonl(full / "log.jsonl")))
    assert n >= 3

    part = tmp_path / "part"
    real_lr_at = train_rft.lr_at

    def interrupt_at_step_2(step, *a):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_lr_at(step, *a)

    monkeypatch.setattr(train_rft, "lr_at", interrupt_at_step_2)
    with pytest.raises(SystemExit) as stopped:
        train_rft.main(common(tiny_model, data, part) + args)
    assert stopped.value.code == 130
    assert (part / "latest").read_text().strip() == "checkpoint-2"
    monkeypatch.setattr(train_rft, "lr_at", real_lr_at)
    train_rft.main(common(tiny_model, data, part) + args + ["--resume"])
    a, b = list(read_jsonl(full / "log.jsonl")), list(read_jsonl(part / "log.jsonl"))
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["lr"] for r in a] == [r["lr"] for r in b]
    wa, wb = load_file(full / f"checkpoint-{n}" / "model.safetensors"), load_file(part / f"checkpoint-{n}" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # --steps: as many steps as the epochs made is the same run; more steps go on into another epoch
    steps = ["--max-tokens-per-batch", "1200", "--save-every", "100", "--steps"]
    train_rft.main(common(tiny_model, data, tmp_path / "steps") + steps + [str(n)])
    assert [r["loss"] for r in read_jsonl(tmp_path / "steps" / "log.jsonl")] == [r["loss"] for r in a]
    train_rft.main(common(tiny_model, data, tmp_path / "more") + steps + [str(n + 1)])
    log = list(read_jsonl(tmp_path / "more" / "log.jsonl"))
    assert len(log) == n + 1 and log[-1]["epoch"] == 2


def test_meta_rm_mode(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    out = tmp_path / "meta"
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"item": "1", "sample": 0, "order": [0, 1], "text": "Scores: \\boxed{9, 2}"}) + "\n"
                     + json.dumps({"item": "1", "sample": "greedy", "order": [0, 1], "text": "x"}) + "\n")
    train_rft.main(common(tiny_model, data, out) + ["--meta-rm", "--extra-trajectories", str(extra),
                                                    "--max-tokens-per-batch", "600", "--epochs", "3"])
    records = list(read_jsonl(out / "trajectories.jsonl"))
    assert not any(r["hinted"] for r in records) and len(records) == 12  # meta RM data: non-hinted only
    stats = json.loads((out / "meta_data.json").read_text())
    assert stats["examples"] == 13 and stats["skipped"] == 1 and 0 < stats["positive_rate"] < 1  # greedy left out
    log = list(read_jsonl(out / "log.jsonl"))
    assert log[-1]["loss"] < log[0]["loss"]  # BCE goes down on its own training data
    ckpt = out / f"checkpoint-{log[-1]['step']}"
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]

    meta = load_meta_rm(ckpt)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(ckpt).eval()
    seqs = [meta.encode("What is 2 + 3?", ["2 + 3 = 5.", "2 + 3 = 6."], "Scores: \\boxed{9, 2}"),
            meta.encode("Capital of France?", ["Rome.", "Paris."], "Analysis: ...\nScores: \\boxed{3, 8}")]
    got = meta.score_ids(seqs)
    with torch.no_grad():
        want = [hf(torch.tensor([s])).logits.item() for s in seqs]
    assert max(abs(x - y) for x, y in zip(got, want)) < 1e-4
    assert abs(got[0] - got[1]) > 1e-6


def test_rft_on_deepseek_v2(tiny_deepseek, data, tmp_path, monkeypatch):
    """Rejective sampling from the latent KV cache and SFT through MLA and the experts."""
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    torch.set_num_threads(1)
    out = tmp_path / "ds"
    train_rft.main(common(tiny_deepseek, data, out) + ["--max-tokens-per-batch", "1500"])
    assert json.loads((out / "rejection.json").read_text())["accepted"] > 0
    log = list(read_jsonl(out / "log.jsonl"))
    ckpt = out / f"checkpoint-{log[-1]['step']}"
    ours, before = minigrm.load_model(ckpt), minigrm.load_model(tiny_deepseek)
    ids = torch.randint(0, 49152, (1, 16))
    with torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
    for name in ("self_attn.kv_a_proj_with_mqa.weight", "mlp.shared_experts.down_proj.weight"):
        assert not torch.equal(ours.get_parameter(f"model.layers.1.{name}"),
                               before.get_parameter(f"model.layers.1.{name}")), name


def test_a_sampler_with_another_vocabulary_gives_text_targets(tiny_model, data, tmp_path, monkeypatch):
    """GRM_SPEC §4 samples RFT data from a stronger model: here the demo GRM (a 2k BPE vocabulary)
    samples for the SmolLM2-vocabulary student; the SFT targets are its TEXT in the student's tokens."""
    calls = []

    def every_other(item, order, text, finish_reason="stop", training=False):
        calls.append(text)
        return Verdict([1] * len(item.responses), None, len(calls) % 2 == 0, 0.0)
    monkeypatch.setattr(train_rft.grm, "judge", every_other)
    sampler = Path(train_rft.__file__).resolve().parent / "minigrm" / "demo" / "grm"
    out = tmp_path / "cross"
    train_rft.main(common(tiny_model, data, out) + ["--sampler", str(sampler), "--max-tokens-per-batch", "1500"])
    records = list(read_jsonl(out / "trajectories.jsonl"))
    accepted, _ = train_rft.select(records)
    tok = load_tokenizer(tiny_model)
    items = {str(it.id): it for it in load_items(data)}
    for (ids, mask), r in zip(train_rft.rft_examples(accepted, items, tok), accepted):
        assert max(ids) < 49152
        assert tok.decode([t for t, m in zip(ids, mask) if m]) == r["text"] + "<|im_end|>\n"
    assert all(r["loss"] > 0 for r in read_jsonl(out / "log.jsonl"))


def test_heldout_evaluation_in_both_modes(tiny_model, data, tmp_path, monkeypatch):
    """GRM mode logs held-out greedy / Voting@K; meta-RM mode logs the meta RM's ROC-AUC on held-out
    judgments sampled once by --sampler and labelled by Eq. 10."""
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    grm_out = tmp_path / "grm"
    train_rft.main(common(tiny_model, data, grm_out) + ["--max-tokens-per-batch", "1500", "--eval-data", str(data),
                                                        "--eval-k", "2"])
    last = list(read_jsonl(grm_out / "log.jsonl"))[-1]
    assert {"eval/greedy", "eval/voting@2", "eval/invalid"} <= set(last)
    meta_out = tmp_path / "meta"
    train_rft.main(common(tiny_model, data, meta_out) + ["--meta-rm", "--max-tokens-per-batch", "600",
                                                         "--eval-data", str(data), "--eval-k", "4"])
    last = list(read_jsonl(meta_out / "log.jsonl"))[-1]
    assert 0 <= last["eval/meta_auc"] <= 1 and 0 < last["eval/meta_positive"] < 1
    assert len(list(read_jsonl(meta_out / "eval_judgments.jsonl"))) == 4 * 4


def test_lora_meta_rm_with_merge(tiny_model, data, tmp_path, monkeypatch):
    """--meta-rm --lora-rank: adapters on the backbone plus the score head (PEFT's SEQ_CLS); --merge
    writes a plain classifier folder that infer_scale.py's --meta-rm loads."""
    monkeypatch.setattr(train_rft.grm, "judge", fake_judge)
    out = tmp_path / "meta-lora"
    train_rft.main(common(tiny_model, data, out) + ["--meta-rm", "--lora-rank", "4", "--merge",
                                                    "--max-tokens-per-batch", "600", "--epochs", "2"])
    ckpt = out / f"checkpoint-{list(read_jsonl(out / 'log.jsonl'))[-1]['step']}"
    assert json.loads((ckpt / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    seqs = [[5, 6, 7, 8, 9], [11, 12, 13]]
    merged = load_meta_rm(out / "merged").score_ids(seqs)
    adapted = MetaRM(minigrm.load_model(tiny_model, adapter=ckpt), load_tokenizer(tiny_model)).score_ids(seqs)
    assert max(abs(a - b) for a, b in zip(merged, adapted)) < 1e-4
