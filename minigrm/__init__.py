"""minigrm: DeepSeek-GRM and SPCT (arXiv 2504.02495) in small, readable PyTorch.

    model = minigrm.load_model(path, dtype=torch.float32, device="cpu")
    logits = model(input_ids)              # (B, T) -> (B, T, V)
    tok = minigrm.load_tokenizer(path)
"""
from .checkpoint import load_model, save_model
from .config import ModelConfig
from .model import CausalLM, greedy_generate, sequence_rewards
from .tokenizer import Tokenizer, load_tokenizer

__all__ = ["CausalLM", "ModelConfig", "Tokenizer", "greedy_generate", "load_model", "load_tokenizer",
           "save_model", "sequence_rewards"]
