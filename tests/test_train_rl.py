"""train_rl.py end to end on a tiny model with a real tokenizer: logs, checkpoints, Ctrl-C,
exact resume, too-easy filtering, and 2-process DDP / FSDP2 runs equal to one process.

A random tiny model never writes a valid judgment, so most tests swap `grm.judge` for a
deterministic fake (reward from a hash of the sampled text) to get non-zero advantages."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import minigrm
import train_rl
from minigrm.data import read_jsonl
from minigrm.grm import Verdict
from factories import write_items

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(train_rl.__file__).resolve().parent
FAKE_JUDGE = '''
def fake_judge(item, order, text, finish_reason="stop", training=False, baseline=False):
    import zlib
    from minigrm.grm import Verdict
    right = bool(zlib.crc32(text.encode()) % 2)
    return Verdict([1] * len(item.responses), None, right, 1.0 if right else -1.0)
'''
exec(FAKE_JUDGE)  # defines fake_judge here; the subprocess wrapper below execs the same text


def common(tiny_model, data, out, steps=4):
    return ["--model", str(tiny_model), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--prompts-per-step", "2", "--group-size", "4", "--max-tokens", "12", "--micro-batch-size", "3",
            "--lr", "1e-3", "--warmup-steps", "1", "--kv-cache-gb", "0.05", "--device", "cpu", "--seed", "3"]


def two_processes(tmp_path, *args) -> Path:
    """train_rl.py under torchrun with 2 gloo ranks and the fake judge swapped in; -> its --out."""
    wrapper = tmp_path / "run.py"
    wrapper.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport train_rl\n{FAKE_JUDGE}\n"
                       "train_rl.grm.judge = fake_judge\ntrain_rl.main()\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(wrapper), *args]
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    return Path(args[args.index("--out") + 1])


def log(out):
    return list(read_jsonl(Path(out) / "log.jsonl"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("rl") / "items.jsonl")


@pytest.fixture(scope="module")
def full_run(tiny_model, data, tmp_path_factory):
    """4 uninterrupted steps with the fake judge (shared by several tests)."""
    out = tmp_path_factory.mktemp("full")
    mp = pytest.MonkeyPatch()
    mp.setattr(train_rl.grm, "judge", fake_judge)
    torch.set_num_threads(1)
    train_rl.main(common(tiny_model, data, out) + ["--save-every", "2", "--keep-last", "0"])
    mp.undo()
    return out


def test_logs_metrics_and_saves_loadable_checkpoints(full_run, tiny_model):
    records = log(full_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in ("loss", "reward_mean", "frac_reward_zero_std", "kl", "clip_frac", "length", "invalid_rate",
                "lr", "grad_norm", "time_sample", "time_update"):
        assert key in records[0]
    assert all(r["outputs"] == 8 and -1 <= r["reward_mean"] <= 1 for r in records)
    assert 0 < records[0]["grad_norm"] and records[0]["lr"] == pytest.approx(1e-3)
    # first pass over a batch: old log-probs come from the same forward, so rho = 1 exactly
    assert records[0]["ratio"] == 1.0 and records[0]["clip_frac"] == 0.0 and records[0]["kl"] == 0.0
    assert records[-1]["kl"] > 0  # the policy has moved away from the reference
    assert sorted(p.name for p in full_run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (full_run / "latest").read_text().strip() == "checkpoint-4"

    ckpt = full_run / "checkpoint-4"
    ids = torch.randint(0, 49152, (1, 20))
    ours = minigrm.load_model(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
        assert (ours(ids) - minigrm.load_model(tiny_model)(ids)).abs().max() > 1e-3  # it trained


def test_ctrl_c_saves_and_resume_equals_uninterrupted(full_run, tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_rl.grm, "judge", fake_judge)
    real_items_at = train_rl.items_at

    def interrupt_in_step_2(positions, n, seed):
        if positions[0] == 2:  # step 2 covers data positions 2 and 3
            os.kill(os.getpid(), signal.SIGINT)  # the guard lets step 2 finish, then saves
        return real_items_at(positions, n, seed)

    monkeypatch.setattr(train_rl, "items_at", interrupt_in_step_2)
    with pytest.raises(SystemExit) as stopped:
        train_rl.main(common(tiny_model, data, tmp_path) + ["--save-every", "100"])
    assert stopped.value.code == 130  # interrupted runs exit non-zero, as a shell expects
    assert [r["step"] for r in log(tmp_path)] == [1, 2]
    assert training_latest(tmp_path) == "checkpoint-2"

    monkeypatch.setattr(train_rl, "items_at", real_items_at)
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        train_rl.main(common(tiny_model, data, tmp_path))  # a fresh start never overwrites the run
    with pytest.raises(SystemExit, match="seed: this folder has 3, this run has 4"):
        train_rl.main(common(tiny_model, data, tmp_path)[:-1] + ["4", "--resume"])
    train_rl.main(common(tiny_model, data, tmp_path) + ["--resume"])
    resumed, full = log(tmp_path), log(full_run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for key in ("loss", "reward_mean", "kl", "grad_norm", "length", "lr"):
        assert [r[key] for r in resumed] == [r[key] for r in full], key
    a = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    b = load_file(full_run / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def training_latest(out):
    return (Path(out) / "latest").read_text().strip()


def test_real_judge_counts_invalid_and_drops_too_easy(tiny_model, data, tmp_path, monkeypatch):
    # the real parser on a random model: every judgment is invalid, reward -1, no gradient
    train_rl.main(common(tiny_model, data, tmp_path / "real", steps=1))
    r = log(tmp_path / "real")[0]
    assert r["invalid_rate"] == 1.0 and r["reward_mean"] == -1.0 and r["frac_reward_zero_std"] == 1.0
    assert r["grad_norm"] == 0.0

    # an item the (fake) reference judge gets right 3/3 is dropped before training
    seen = []

    def judge(item, order, text, finish_reason="stop", training=False):
        seen.append(item.id)
        return Verdict([1], None, item.id == 2, 1.0 if item.id == 2 else -1.0)
    monkeypatch.setattr(train_rl.grm, "judge", judge)
    train_rl.main(common(tiny_model, data, tmp_path / "easy", steps=1) + ["--drop-too-easy"])
    assert json.loads((tmp_path / "easy" / "too_easy.json").read_text()) == ["2"]
    # filtering: 3 samples of item 2, one of each other item (all() stops at the first miss);
    # training: 2 prompts x 4 samples, never item 2
    assert seen[:6].count(2) == 3 and len(seen) == 6 + 2 * 4 and 2 not in seen[6:]


def test_prompts_longer_than_the_context_are_dropped_and_counted(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_rl.grm, "judge", fake_judge)
    long = {"prompt": " ".join(["word"] * 2500), "chosen": "a", "rejected": "b"}  # > the 2048-token context
    data = write_items(tmp_path / "long.jsonl", [long, {"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    train_rl.main(common(tiny_model, data, tmp_path / "run", steps=1))
    assert "dropped 1 of 2 items with prompts over 2036 tokens" in capsys.readouterr().out  # 2048 - 12


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_equal_one(full_run, tiny_model, data, tmp_path, fsdp):
    """torchrun with 2 gloo ranks: all-reduced metrics and the trained weights equal the
    single-process run (each prompt's samples are seeded by its global index)."""
    out = two_processes(tmp_path, *common(tiny_model, data, tmp_path / "two", steps=2), "--save-every", "2",
                        *(["--fsdp"] if fsdp else []))
    two, one = log(out), log(full_run)[:2]
    for a, b in zip(two, one):
        assert a["outputs"] == b["outputs"] == 8
        for key in ("reward_mean", "frac_reward_zero_std", "length", "invalid_rate", "lr"):
            assert a[key] == b[key], key
        for key in ("loss", "grad_norm", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    a = load_file(out / "checkpoint-2" / "model.safetensors")
    b = load_file(full_run / "checkpoint-2" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.fixture(scope="module")
def deepseek_run(tiny_deepseek, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("deepseek-run")
    mp = pytest.MonkeyPatch()
    mp.setattr(train_rl.grm, "judge", fake_judge)
    torch.set_num_threads(1)
    train_rl.main(common(tiny_deepseek, data, out, steps=2) + ["--grad-checkpointing"])
    mp.undo()
    return out


def test_deepseek_v2_smoke(deepseek_run, tiny_deepseek):
    """GRPO on DeepSeek-V2: rollouts from the latent KV cache, gradients through the experts
    and the router under gradient checkpointing, a checkpoint that transformers loads back."""
    records = log(deepseek_run)
    assert [r["step"] for r in records] == [1, 2] and all(r["outputs"] == 8 for r in records)
    assert records[0]["grad_norm"] > 0 and records[-1]["kl"] > 0
    ckpt = deepseek_run / training_latest(deepseek_run)
    ours, before = minigrm.load_model(ckpt), minigrm.load_model(tiny_deepseek)
    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    ids = torch.randint(0, 49152, (1, 20))
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() < 1e-4
    for name in ("mlp.gate.weight", "mlp.shared_experts.up_proj.weight", "self_attn.kv_b_proj.weight"):
        w, w0 = ours.get_parameter(f"model.layers.1.{name}"), before.get_parameter(f"model.layers.1.{name}")
        assert not torch.equal(w, w0), name  # trained


def test_deepseek_v2_fsdp2_equals_one_process(deepseek_run, tiny_deepseek, data, tmp_path):
    """Experts that no token of a rank picks still get a (zero) gradient, so FSDP2's
    reduce-scatter (and DDP's all-reduce) see the same tensors on every rank."""
    out = two_processes(tmp_path, *common(tiny_deepseek, data, tmp_path / "two", steps=2), "--fsdp")
    assert len(log(out)) == len(log(deepseek_run)) == 2
    for a, b in zip(log(out), log(deepseek_run)):
        assert a["reward_mean"] == b["reward_mean"] and a["length"] == b["length"]
        for key in ("loss", "grad_norm", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key


def test_heldout_evaluation_keep_best_and_curves(tiny_model, data, tmp_path, monkeypatch):
    """--eval-data: greedy and Voting@K on held-out items through infer_scale's code, logged at the
    eval steps; --keep-best keeps the best one (not deleted by --keep-last 1); the log draws."""
    from minigrm import heldout
    calls, values = [], iter([0.25, 0.75, 0.5])

    def fake_grm(self, engine, tok):  # the real one is pinned below; here: known numbers per eval
        calls.append(len(self.items))
        return {"eval/greedy": 0.5, "eval/voting@2": next(values), "eval/invalid": 0.0}
    monkeypatch.setattr(train_rl.grm, "judge", fake_judge)
    monkeypatch.setattr(heldout.HeldOut, "grm", fake_grm)
    out = tmp_path / "run"
    train_rl.main(common(tiny_model, data, out, steps=6) + ["--eval-data", str(data), "--eval-every", "2",
                                                            "--eval-k", "2", "--keep-best", "--keep-last", "1",
                                                            "--save-every", "100"])
    records = log(out)
    assert [r["step"] for r in records if "eval/voting@2" in r] == [2, 4, 6] and calls == [4, 4, 4]
    assert all(r["sample_tok_per_s"] > 0 and r["update_tok_per_s"] > 0 and r["mfu"] is None for r in records)
    best = json.loads((out / "best").read_text())
    assert best == {"checkpoint": "checkpoint-4", "step": 4, "metric": 0.75}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]

    from minigrm.curves import main as curves
    curves([str(out), "--smooth", "2"])
    svg = (out / "curves.svg").read_text()
    for name in ("reward_mean", "kl", "eval/voting@2", "invalid_rate", "length"):
        assert f">{name}<" in svg


def test_the_heldout_grm_evaluation_equals_infer_scale(tiny_model, data, tmp_path):
    """heldout.HeldOut runs infer_scale's own sampling and scoring: same numbers for the same weights."""
    import infer_scale
    from minigrm.data import load_items
    from minigrm.heldout import HeldOut
    items = load_items(data)
    model = minigrm.load_model(tiny_model)
    tok = minigrm.load_tokenizer(tiny_model)
    got = HeldOut(items, k=2, temperature=0.5, max_tokens=12, seed=5).grm(minigrm.Engine(model, tok, progress=False),
                                                                           tok)
    infer_scale.main(["--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "is"), "--k-max", "2",
                      "--max-tokens", "12", "--seed", "5", "--no-meta-rm", "--no-progress", "--device", "cpu",
                      "--n-boot", "1"])
    rows = {r["setting"]: r for r in json.loads((tmp_path / "is" / "results.json").read_text())}
    assert got["eval/greedy"] == rows["Greedy"]["accuracy"]["value"]
    assert got["eval/voting@2"] == rows["Voting@2"]["accuracy"]["value"]


@pytest.fixture(scope="module")
def lora_run(tiny_model, data, tmp_path_factory):
    """4 GRPO steps training LoRA adapters only (fake judge), checkpoint every 2, --merge."""
    out = tmp_path_factory.mktemp("lora")
    mp = pytest.MonkeyPatch()
    mp.setattr(train_rl.grm, "judge", fake_judge)
    train_rl.main(common(tiny_model, data, out) + ["--lora-rank", "4", "--save-every", "2", "--keep-last", "0",
                                                   "--merge"])
    mp.undo()
    return out


def test_lora_grpo_checkpoints_are_peft_adapters_and_merge(lora_run, tiny_model):
    peft = pytest.importorskip("peft")
    records = log(lora_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["kl"] > 0  # the reference is the base
    ckpt = lora_run / "checkpoint-4"
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    ids = torch.randint(0, 49152, (1, 20))
    ours = minigrm.load_model(tiny_model, adapter=ckpt)
    merged = minigrm.load_model(lora_run / "merged")  # --merge: a plain folder
    theirs = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_model), ckpt).eval()
    with torch.no_grad():
        a, b, c = ours(ids), merged(ids), theirs(ids).logits
        assert (a - b).abs().max() < 1e-4 and (a - c).abs().max() < 1e-4
        assert (a - minigrm.load_model(tiny_model)(ids)).abs().max() > 1e-4  # the adapters trained


def test_lora_grpo_resume_equals_uninterrupted(lora_run, tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setattr(train_rl.grm, "judge", fake_judge)
    out = tmp_path / "part"
    train_rl.main(common(tiny_model, data, out, steps=2) + ["--lora-rank", "4", "--save-every", "2", "--keep-last",
                                                            "0", "--merge"])
    train_rl.main(common(tiny_model, data, out) + ["--lora-rank", "4", "--save-every", "2", "--keep-last", "0",
                                                   "--merge", "--resume"])
    for key in ("loss", "reward_mean", "kl", "grad_norm"):
        assert [r[key] for r in log(out)] == [r[key] for r in log(lora_run)], key
    a = load_file(out / "checkpoint-4" / "adapter_model.safetensors")
    b = load_file(lora_run / "checkpoint-4" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shared_prefix_update_equals_per_sequence(full_run, tiny_model, data, tmp_path, monkeypatch):
    """--no-shared-prefix (one forward per sequence) trains to the same losses and weights."""
    monkeypatch.setattr(train_rl.grm, "judge", fake_judge)
    out = tmp_path / "plain"
    train_rl.main(common(tiny_model, data, out, steps=2) + ["--no-shared-prefix"])
    for a, b in zip(log(out), log(full_run)[:2]):
        for key in ("loss", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_lora_fsdp2_two_processes_equal_one(lora_run, tiny_model, data, tmp_path):
    """LoRA under 2-process FSDP2 (gloo): the adapters are sharded with their layers, checkpoints
    hold the adapters only, and the run equals the single-process one (AdamW moves an element whose
    gradient nearly cancels by ~lr whatever its sign, hence atol 1e-5 on the adapters)."""
    out = two_processes(tmp_path, *common(tiny_model, data, tmp_path / "two", steps=2), "--save-every", "2",
                        "--lora-rank", "4", "--fsdp")
    for a, b in zip(log(out), log(lora_run)[:2]):
        assert a["reward_mean"] == b["reward_mean"]
        for key in ("loss", "grad_norm", "kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    a = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    b = load_file(lora_run / "checkpoint-2" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
