"""minigrm.training: the log-prob forward, atomic checkpoints that transformers and minigrm
load, optimizer/RNG resume, metric reduction and the Ctrl-C guard."""
import os
import signal

import pytest
import torch
import transformers

import minigrm
from minigrm import logprob, resume, training
from minigrm.distributed import Dist
from minigrm.logprob import sequence_logprobs
from minigrm.optim import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logprob_forward_equals_sequence_logprobs(tiny_model):
    model = minigrm.load_model(tiny_model)
    ids = torch.randint(0, 49152, (2, 12))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 5:], mask[1, 8:11] = True, True
    got = training.LogprobForward(model)(ids, mask)
    want = sequence_logprobs(model, ids, mask)
    assert got.shape == (2, 11) and torch.equal(got, want)
    assert (got[0, 4:] < 0).all() and (got[0, :4] == 0).all()


def test_checkpoint_loads_everywhere_and_restores_optimizer(tiny_model, tmp_path):
    d = Dist()
    model = minigrm.load_model(tiny_model).train()
    policy = training.LogprobForward(model)
    opt = make_optimizer(policy, 1e-3)
    ids = torch.randint(0, 49152, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    (-policy(ids, mask).sum()).backward()
    opt.step()
    torch.manual_seed(123)
    for step in (1, 2, 3):
        path = resume.save_checkpoint(tmp_path, step, model, policy, opt, d, tiny_model, {"pos": step},
                                        keep_last=2)
    assert path == tmp_path / "checkpoint-3" and resume.latest_checkpoint(tmp_path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3", "latest"]  # no tmp left
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-3"

    # transformers and minigrm both load the weights, with the same logits as the live model
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    again = minigrm.load_model(path)
    with torch.no_grad():
        live = model(ids)
        assert (hf(ids).logits - live).abs().max() < 1e-4
        assert torch.equal(again(ids), live)
    assert minigrm.load_tokenizer(path).apply_chat_template([{"role": "user", "content": "hi"}])

    # the optimizer state and the RNG come back exactly
    expected_rand = torch.rand(3)
    opt2 = make_optimizer(training.LogprobForward(again), 1e-3)
    state = resume.load_checkpoint(path, training.LogprobForward(again), opt2, d)
    assert state["step"] == 3 and state["extra"] == {"pos": 3}
    assert torch.equal(torch.rand(3), expected_rand)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert resume.resolve_resume("latest", tmp_path) == path
    assert resume.resolve_resume(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="trainer_state"):
        resume.resolve_resume(str(tmp_path), tmp_path)

    # keep-last rotates only this run's checkpoints: a later step left by an older run stays,
    # and the checkpoint just saved is never the one deleted
    (tmp_path / "checkpoint-100").mkdir()
    path = resume.save_checkpoint(tmp_path, 4, model, policy, opt, d, tiny_model, {}, keep_last=1)
    assert path.exists() and (tmp_path / "checkpoint-100").exists() and not (tmp_path / "checkpoint-3").exists()
    assert resume.latest_checkpoint(tmp_path) == path
    # a pointer to a missing folder, or to anything but a checkpoint of this folder, is an error
    for name in ("checkpoint-7", "../elsewhere", str(tmp_path / "checkpoint-4"), "checkpoint-4/../../x"):
        (tmp_path / "latest").write_text(name + "\n")
        with pytest.raises((FileNotFoundError, ValueError)):
            resume.resolve_resume("latest", tmp_path)


def test_a_crafted_checkpoint_cannot_run_code(tiny_model, tmp_path):
    """Checkpoints are read with weights_only=True: a pickle that would run code is refused."""
    d = Dist()
    model = minigrm.load_model(tiny_model).train()
    policy = training.LogprobForward(model)
    opt = make_optimizer(policy, 1e-3)
    path = resume.save_checkpoint(tmp_path, 1, model, policy, opt, d, tiny_model, {})
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    for name in ("optimizer.pt", "rng-rank0.pt"):
        good = (path / name).read_bytes()
        torch.save({"state": Evil()}, path / name)
        with pytest.raises(Exception):
            resume.load_checkpoint(path, policy, make_optimizer(policy, 1e-3), d)
        assert not marker.exists()
        (path / name).write_bytes(good)
    assert resume.load_checkpoint(path, policy, make_optimizer(policy, 1e-3), d)["step"] == 1


def test_reduce_metrics_divides_sums_by_counts():
    m = training.reduce_metrics(Dist(), {"a": (6.0, 3.0), "b": (1.0, 0.0)})
    assert m == {"a": 2.0, "b": 0.0}


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_guard_defers_the_first_ctrl_c_or_sigterm(sig, code):
    before = signal.getsignal(sig)
    with training.interrupt_guard() as stop:
        assert training.exit_code(stop) == 0
        os.kill(os.getpid(), sig)
        assert stop["requested"] and training.stop_requested(Dist(), stop)
        assert training.exit_code(stop) == code
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before


def test_autocast_is_a_no_op_on_cpu():
    with logprob.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
