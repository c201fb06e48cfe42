"""Load and save Hugging Face model folders (config.json + safetensors, single file or sharded).

Loading builds the model on the `meta` device (no memory), checks the checkpoint's key set
against the model's before reading a byte of weights, then streams tensor by tensor: each is
read, cast to the requested dtype, moved to the device and assigned in place of its meta
parameter. Peak memory is the model in its final dtype plus one tensor, never two copies.
Finally q/k/v and gate/up weights are moved into one storage each (fused.py): the modules and
names stay the checkpoint's, the decoder runs one matmul for each group.

Routed MoE experts are stacked in memory (moe.py, `experts.gate_up_proj` (E, 2I, C)) but
named one by one in checkpoints (`experts.7.gate_proj.weight`): each is copied into its slice
on loading and split off (a view) on saving, so files keep the released names.

Saving writes what `save_pretrained` writes: config.json, `model.safetensors` or numbered
shards with `model.safetensors.index.json`, and the tokenizer files of a source folder.
"""
import json
from contextlib import contextmanager
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .fused import fuse_projections
from .model import CausalLM
from .moe import checkpoint_names, packed_slot

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json")
# Keys some checkpoints carry that hold nothing we need (RoPE tables are recomputed).
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@contextmanager
def _open(file: Path):
    """safe_open that names the file when it is not a complete safetensors file (a truncated
    download, a partial copy)."""
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            yield _Checked(f, file)
    except SafetensorError as e:
        raise ValueError(f"{file}: not a complete safetensors file ({e})") from None


class _Checked:
    def __init__(self, f, file):
        self.f, self.file = f, file

    def keys(self):
        return self.f.keys()

    def get_tensor(self, key):
        try:
            return self.f.get_tensor(key)
        except SafetensorError as e:
            raise ValueError(f"{self.file}: tensor {key!r} cannot be read ({e})") from None


def weight_files(path: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file that holds it."""
    if (path / INDEX).exists():
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise FileNotFoundError(f"{path / INDEX} names shard(s) that do not exist: {missing}")
        return {k: path / f for k, f in weight_map.items()}
    if (path / SINGLE).exists():
        with _open(path / SINGLE) as f:
            return {k: path / SINGLE for k in f.keys()}
    raise FileNotFoundError(f"no {SINGLE} or {INDEX} in {path}")


def expected_keys(model: CausalLM) -> set[str]:
    keys = set(checkpoint_names(model.state_dict()).keys())
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
        with _open(file) as f:
            for key in keys:
                _assign(model, key, f.get_tensor(key), dtype, device)
    for m in model.modules():  # non-persistent buffers (RoPE tables) live outside the checkpoint
        if hasattr(m, "init_buffers"):
            m.init_buffers(device)
    model.tie_weights()
    return fuse_projections(model).eval()  # q/k/v and gate/up rows in one storage each (fused.py)


def _assign(model: CausalLM, key: str, tensor: torch.Tensor, dtype, device) -> None:
    slot = packed_slot(key)
    if slot is not None:  # one expert's matrix: into its slice of the stacked parameter
        return _assign_packed(model, *slot, tensor, dtype, device)
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


def _assign_packed(model, key: str, expert: int, half, tensor, dtype, device) -> None:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name)
    stacked = getattr(module, name)  # (E, rows, cols)
    if stacked.is_meta:  # the first expert of this tensor: allocate it, every slice gets filled
        stacked = torch.nn.Parameter(torch.empty(stacked.shape, dtype=dtype, device=device),
                                     requires_grad=stacked.requires_grad)
        setattr(module, name, stacked)
    target = stacked.data[expert] if half is None else stacked.data[expert].chunk(2, dim=0)[half]
    if tuple(target.shape) != tuple(tensor.shape):
        raise ValueError(f"shape mismatch for {module_name}.{expert}: checkpoint has {tuple(tensor.shape)}, "
                         f"config implies {tuple(target.shape)}")
    target.copy_(tensor)


class StateOnly:
    """What save_model reads from a model, its config and state_dict, for a state held apart from
    the module (an FSDP2 state gathered to rank 0, LoRA adapters folded into the weights)."""

    def __init__(self, config, state: dict):
        self.config, self._state = config, state

    def state_dict(self) -> dict:
        return self._state


def save_model(model: CausalLM, path, tokenizer_dir=None, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write an HF folder that transformers and minigrm both load (tied head stored once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in checkpoint_names(model.state_dict()).items()
             if k in expected_keys(model)}
    dtype = next(iter(state.values())).dtype
    config = dict(model.config.raw)
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(_own_storage(shards[0]), path / SINGLE, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(_own_storage(shard), path / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (path / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    copy_tokenizer(tokenizer_dir, path)
    return path


def _own_storage(shard: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (fused q/k/v views, the experts' slices):
    copy those, one shard at a time."""
    return {k: _own(t) for k, t in shard.items()}


def _own(t: torch.Tensor) -> torch.Tensor:
    """t in a storage of its own."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


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
