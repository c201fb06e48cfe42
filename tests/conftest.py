"""Shared fixtures: the real SmolLM2-135M-Instruct checkpoint; GPU tests skip without CUDA."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides interpreted vs compiled when a kernel module is imported: without a GPU,
    # every kernel a test forces (set_backend("triton")) must run in the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from minigrm.fixtures import smollm2_path as _smollm2_path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_path():
    return _smollm2_path()


@pytest.fixture(scope="session")
def tiny_model(smollm2_path, tmp_path_factory):
    """factories.make_tiny_model: a tiny random Llama with SmolLM2's tokenizer and template."""
    from factories import make_tiny_model
    return make_tiny_model(smollm2_path, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_deepseek(smollm2_path, tmp_path_factory):
    """factories.make_tiny_deepseek: MLA + YaRN + sharply routed experts, SmolLM2's tokenizer."""
    from factories import make_tiny_deepseek
    return make_tiny_deepseek(smollm2_path, tmp_path_factory.mktemp("deepseek") / "model")


@pytest.fixture
def one_thread():
    """Two busy cores run tiny models far faster on one thread than on two; modules that want
    it say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def scripted(monkeypatch):
    """run(tmp_path, items, answer, seed=0, k_max=8, name="run") -> {setting: row}: infer_scale.py
    end to end (orders, prompts, seeds, parsing, voting, scoring, files) with the engine replaced by
    factories.ScriptedEngine, so thousands of items take seconds."""
    import json

    import infer_scale
    from factories import ScriptedEngine
    monkeypatch.setattr(infer_scale, "Engine", ScriptedEngine)
    monkeypatch.setattr(infer_scale.minigrm, "load_model", lambda *a, **kw: None)

    def run(tmp_path, items, answer, seed=0, k_max=8, name="run", extra=()):
        ScriptedEngine.answer = answer
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(it) + "\n" for it in items))
        out = tmp_path / f"out-{name}"
        infer_scale.main(["--data", str(data), "--out", str(out), "--k-max", str(k_max), "--seed", str(seed),
                          "--no-meta-rm", "--no-progress", "--n-boot", "50", *extra])
        return {r["setting"]: r for r in json.loads((out / "results.json").read_text())}
    return run
