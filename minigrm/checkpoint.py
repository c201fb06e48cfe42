"""Load and save Hugging Face model folders (config.json + safetensors, single file or sharded).

Loading builds the model on the `meta` device (no memory), checks the checkpoint's key set
against the model's before reading a byte of weights, then streams tensor by tensor: each is
read, cast to the requested dtype, moved to the device and assigned in place of its meta
parameter. Peak memory is the model in its final dtype plus one tensor, never two copies.

Saving writes what `save_pretrained` writes: config.json, `model.safetensors` or numbered
shards with `model.safetensors.index.json`, and the tokenizer files of a source folder.
"""
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .model import CausalLM

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")
# Keys some checkpoints carry that hold nothing we need (RoPE tables are recomputed).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


def weight_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    if (path / INDEX).exists():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise FileNotFoundError(f"{path / INDEX} names shard(s) that do not exist: {missing}")
        return {k: path / f for k, f in weight_map.items()}
    if (path / SINGLE).exists():
        with safe_open(path / SINGLE, framework="pt") as f:
            return {k: path / SINGLE for k in f.keys()}
    raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {path}")


def expected_keys(model: CausalLM) -> set[str]:
    keys = set(model.state_dict().keys())
    if model.config.tie_word_embeddings and not model.config.is_classifier:
        keys.discard("lm_head.weight")  # tied to model.embed_tokens.weight
    return keys


def load_model(path, dtype: torch.dtype = torch.float32, device="cpu", adapter=None, merge: bool = False) -> CausalLM:
    """An HF folder -> CausalLM in `dtype` on `device`, streaming one tensor at a time. With
    `adapter` (a PEFT LoRA folder), the base plus that adapter; `merge` folds it in (adapter.py)."""
    if adapter is not None:
        from .adapter import load_model as load_with_adapter  # late import: adapter.py imports this file
        return load_with_adapter(path, adapter, merge, dtype, device)
    path = Path(path)
    config = ModelConfig.from_pretrained(path)
    with torch.device("meta"):
        model = CausalLM(config)
    files = weight_files(path)
    wanted = expected_keys(model)
    tied_head = config.tie_word_embeddings and not config.is_classifier
    present = {k for k in files if not k.endswith(IGNORED_SUFFIXES) and not (tied_head and k == "lm_head.weight")}
    missing, unexpected = sorted(wanted - present), sorted(present - wanted)
    if missing or unexpected:
        raise KeyError(f"checkpoint {path} does not match {config.model_type} "
                       f"(num_labels={config.num_labels}): missing {missing[:8]}{'...' if len(missing) > 8 else ''}"
                       f" ({len(missing)} total), unexpected {unexpected[:8]}"
                       f"{'...' if len(unexpected) > 8 else ''} ({len(unexpected)} total)")
    by_file: dict[Path, list[str]] = {}
    for k in sorted(present):
        by_file.setdefault(files[k], []).append(k)
    for file, keys in by_file.items():
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in keys:
                _assign(model, key, f.get_tensor(key), dtype, device)
    for m in model.modules():  # non-persistent buffers (RoPE tables) live outside the checkpoint
        if hasattr(m, "init_buffers"):
            m.init_buffers(device)
    model.tie_weights()
    return model.eval()


def _assign(model: CausalLM, key: str, tensor: torch.Tensor, dtype, device) -> None:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, name)
    if tuple(current.shape) != tuple(tensor.shape):
        raise ValueError(f"shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                         f"config implies {tuple(current.shape)}")
    value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    if isinstance(current, torch.nn.Parameter):
        setattr(module, name, torch.nn.Parameter(value, requires_grad=current.requires_grad))
    else:
        setattr(module, name, value)


def save_model(model: CausalLM, path, tokenizer_dir=None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write an HF folder that transformers and minigrm both load (tied head stored once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if k in expected_keys(model)}
    dtype = next(iter(state.values())).dtype
    config = dict(model.config.raw)
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (path / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    copy_tokenizer(tokenizer_dir, path)
    return path


def copy_tokenizer(src, dst) -> None:
    """Copy the tokenizer files of folder `src` (if any; None: nothing) into `dst`."""
    if src is None:
        return
    for name in TOKENIZER_FILES:
        if (Path(src) / name).exists():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards, size = [{}], 0
    for k, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += n
    return shards
