"""minigrm: DeepSeek-GRM and SPCT (arXiv 2504.02495) in small, readable PyTorch.

    model = minigrm.load_model(path, dtype=torch.float32, device="cpu")
    logits = model(input_ids)                       # (B, T) -> (B, T, V)
    tok = minigrm.load_tokenizer(path)
    engine = minigrm.Engine(model, tok)
    outs = engine.generate(prompts, minigrm.SamplingParams(n=8, temperature=0.5, max_tokens=1024, seed=0))
    judgment = minigrm.parse_judgment(outs[0][0].text, 2)     # 2 responses
    minigrm.is_correct(judgment.scores, truth=[1, 0])
    model = minigrm.load_model(base, adapter=lora_folder, merge=False)   # + a PEFT LoRA adapter (lora.py)
    # the whole GRM step on a data item (order, prompt, parse, un-shuffle, Eq. 10 / 11): minigrm.grm
"""
from . import grm, lora
from .adapter import load_adapter, save_adapter
from .checkpoint import load_model, save_model
from .config import ModelConfig
from .engine import Engine
from .meta_rm import MetaRM, load_meta_rm
from .model import CausalLM, greedy_generate, sequence_rewards
from .parser import Judgment, parse_judgment
from .prompts import grm_messages, grm_prompt, meta_rm_messages, single_response_prompt
from .rewards import is_correct, rule_reward
from .sampling import Completion, SamplingParams
from .tokenizer import Tokenizer, load_tokenizer
from .voting import meta_rm_filter, predict_best, shuffled_order, unshuffle, vote, voting_at_k

__all__ = [
    "CausalLM", "Completion", "Engine", "Judgment", "MetaRM", "ModelConfig", "SamplingParams", "Tokenizer",
    "greedy_generate", "grm", "grm_messages", "grm_prompt", "is_correct", "load_adapter", "load_meta_rm", "load_model",
    "load_tokenizer", "lora", "meta_rm_filter", "meta_rm_messages", "parse_judgment", "predict_best",
    "rule_reward", "save_adapter", "save_model", "sequence_rewards", "shuffled_order", "single_response_prompt",
    "unshuffle", "vote", "voting_at_k",
]
