"""Checkpoint loading and saving: round trips, transformers interop, and clear errors."""
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import minigrm
from factories import VOCAB, hf_model, save_hf


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("family,classifier", [("llama", False), ("gemma2", False), ("qwen3", True)])
@pytest.mark.parametrize("shard_bytes", [5 * 2**30, 30_000])
def test_save_load_round_trip_is_bit_identical(family, classifier, shard_bytes, tmp_path):
    ours = minigrm.load_model(save_hf(hf_model(family, classifier), tmp_path / "src"))
    out = minigrm.save_model(ours, tmp_path / "out", max_shard_bytes=shard_bytes)
    assert (out / "model.safetensors.index.json").exists() == (shard_bytes < 2**20)
    again = minigrm.load_model(out)
    assert state_equal(ours, again)
    # ... and transformers reads it and computes the same thing.
    auto = (transformers.AutoModelForSequenceClassification if classifier
            else transformers.AutoModelForCausalLM)
    hf = auto.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.randint(3, VOCAB, (2, 16))
    with torch.no_grad():
        ref = hf(ids).logits
        got = minigrm.sequence_rewards(again(ids), ids, 0)[:, None] if classifier else again(ids)
    assert (ref - got).abs().max() < 1e-4


def test_tied_head_saved_once(tmp_path):
    ours = minigrm.load_model(save_hf(hf_model("qwen2"), tmp_path / "src"))
    out = minigrm.save_model(ours, tmp_path / "out")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")


def test_save_bf16_records_dtype_and_copies_tokenizer(tmp_path):
    ours = minigrm.load_model(save_hf(hf_model("llama"), tmp_path / "src"), dtype=torch.bfloat16)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    out = minigrm.save_model(ours, tmp_path / "out", tokenizer_dir=tmp_path / "tok")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").exists()
    assert all(t.dtype == torch.bfloat16 for t in load_file(out / "model.safetensors").values())


# --- bad input: each error names the problem ---------------------------------------------

@pytest.fixture
def llama_dir(tmp_path):
    return save_hf(hf_model("llama"), tmp_path / "llama")


def test_missing_folder_or_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        minigrm.load_model(tmp_path / "nowhere")


def test_missing_weights_file(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        minigrm.load_model(llama_dir)


def test_missing_shard_file(tmp_path):
    hf_model("llama").save_pretrained(tmp_path, max_shard_size="40KB")
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(FileNotFoundError, match="model-00001"):
        minigrm.load_model(tmp_path)


def _rewrite(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        minigrm.load_model(llama_dir)


def test_unexpected_tensor_is_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.layers.9.extra.weight": torch.zeros(2)}))
    with pytest.raises(KeyError, match=r"unexpected \['model.layers.9.extra.weight'\]"):
        minigrm.load_model(llama_dir)


def test_shape_mismatch_is_named(llama_dir):
    _rewrite(llama_dir, lambda t: t.update({"model.norm.weight": torch.zeros(7)}))
    with pytest.raises(ValueError, match=r"shape mismatch for model.norm.weight.*\(7,\).*\(64,\)"):
        minigrm.load_model(llama_dir)


@pytest.mark.parametrize("edit,message", [
    (dict(model_type="mamba"), "unsupported model_type 'mamba'"),
    (dict(hidden_act="relu"), "unsupported hidden_act 'relu'"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
     "unsupported rope_scaling type 'dynamic'"),
])
def test_unsupported_config_is_named(llama_dir, edit, message):
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg.update(edit)
    (llama_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        minigrm.load_model(llama_dir)


def test_legacy_rope_layout_is_read(llama_dir):
    """Folders written by transformers < 5 keep rope_theta / rope_scaling at the top level."""
    cfg = json.loads((llama_dir / "config.json").read_text())
    theta = cfg.pop("rope_parameters")["rope_theta"]
    cfg.update(rope_theta=theta, rope_scaling=None)
    assert minigrm.ModelConfig.from_dict(cfg).rope_theta == theta
    cfg["rope_scaling"] = dict(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=64)
    assert minigrm.ModelConfig.from_dict(cfg).rope_scaling["factor"] == 8.0


def test_loading_skips_work_on_the_meta_skeleton():
    """load_model builds the model on the meta device and overwrites every tensor: building it
    runs no init or arange there, which would import torch._dynamo (~2 s of every script's start)."""
    import os
    import subprocess
    import sys
    code = ("import sys; from minigrm.checkpoint import load_model; load_model('minigrm/demo/grm'); "
            "print('torch._dynamo' in sys.modules)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
