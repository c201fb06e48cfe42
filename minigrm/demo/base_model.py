"""The demo's tiny base model, made from scratch: a BPE tokenizer and a small Llama.

    python -m minigrm.demo.base_model --out out/demo/base --steps 600

1. `train_tokenizer(texts, vocab_size)`: byte-level BPE (Hugging Face `tokenizers`) with the
   ChatML special tokens; the folder gets a plain ChatML chat template, so minigrm and
   transformers render the same conversations.
2. `tiny_llama_config(vocab_size, ...)`: a Llama-shaped `config.json` of a few million
   parameters (tied embeddings, GQA).
3. `pretrain(folder, texts, steps, ...)`: next-token training on the texts packed into rows of
   `seq_len` tokens (each text followed by <|endoftext|>), AdamW with warmup + cosine, then the
   weights are saved in the HF folder format (loadable by transformers as well).

Decision (the demo only): the fixed text of the GRM prompt templates (the paper's ~630-word
preamble, criteria and output-format block, the response markers, the hint) is added to the
vocabulary as whole tokens (`template_pieces`). The model still reads the exact prompt, byte for
byte, but a prompt costs ~60 tokens instead of ~800, so a few-million-parameter model spends its
CPU time on the query and the responses rather than on re-reading the same instructions.
"""
import argparse
import json
import re
import time
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..checkpoint import save_model
from ..config import ModelConfig
from ..model import CausalLM
from ..optim import lr_at, make_optimizer, set_lr
from ..prompts import grm_prompt, hinted, meta_rm_prompt, single_response_prompt

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def template_pieces(max_responses: int = 4) -> list[str]:
    """The fixed text between the variable parts (query, responses) of every GRM prompt variant
    with 1..max_responses responses: render with a sentinel, split on it and on each response
    index, keep the pieces."""
    s = "\x00"
    texts = [single_response_prompt(s, s)]
    for n in range(1, max_responses + 1):
        texts += [grm_prompt(s, [s] * n), meta_rm_prompt(s, [s] * n)]
        texts += [hinted(s, j) for j in range(n)]
    # cut at each response index: "Response 3" keeps its digit as a plain token, which the model
    # copies into its critique (one whole token per index would have to be learned from RFT alone)
    return sorted({q for t in texts for p in t.split(s) for q in re.split(r"(?<=Response )\d+", p) if len(q) > 1})


def train_tokenizer(texts, vocab_size: int, folder) -> Path:
    """Byte-level BPE on `texts` plus the template pieces as whole tokens; writes
    tokenizer.json + tokenizer_config.json to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    # one token per digit (with the space before it): arithmetic a small model can learn digit by digit
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?[0-9]"), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(p, normalized=False) for p in template_pieces()])
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "unk_token": None, "chat_template": CHATML, "model_max_length": 4096,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def tiny_llama_config(vocab_size: int, hidden: int = 256, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                      max_len: int = 1024, eos_token_id: int = 2, pad_token_id: int = 0) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": hidden, "intermediate_size": int(hidden * 8 / 3) // 64 * 64 + 64,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "max_position_embeddings": max_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": None,
            "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}


def packed_rows(token_lists: list[list[int]], seq_len: int, eot: int) -> torch.Tensor:
    """Concatenate texts (each followed by <|endoftext|>) and cut rows of seq_len + 1 tokens."""
    stream = [t for ids in token_lists for t in ids + [eot]]
    n = len(stream) // (seq_len + 1)
    return torch.tensor(stream[:n * (seq_len + 1)]).view(n, seq_len + 1)


def pretrain(folder, texts, steps: int, batch_size: int = 16, seq_len: int = 256, lr: float = 3e-3,
             seed: int = 0, log=print, save_every: int = 200, **config_kw) -> Path:
    """Train a tiny Llama from scratch on `texts` with the tokenizer already in `folder`. Every
    `save_every` steps the model, optimizer, step and batch generator go to
    <folder>/pretrain_state.pt (tensors only, written then renamed), and a call on a folder that
    holds one continues from it: an interrupted pretraining resumes where it stopped."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    eot, eos, pad = (tok.token_to_id(s) for s in ("<|endoftext|>", "<|im_end|>", "<|endoftext|>"))
    raw = tiny_llama_config(tok.get_vocab_size(), eos_token_id=eos, pad_token_id=pad, **config_kw)
    model = CausalLM(ModelConfig.from_dict(raw))
    for name, p in model.named_parameters():  # GPT-2 style init: N(0, 0.02), norms at 1
        if p.ndim > 1:
            torch.nn.init.normal_(p, std=0.02)
    rows = packed_rows([e.ids for e in tok.encode_batch(texts)], seq_len, eot)
    # tokens the corpus never holds (the GRM template pieces, the chat markers) stay out of the
    # softmax: with tied embeddings its gradient would push all of them the same way (cosine
    # 0.998 between pieces after 1,500 steps), and RFT could not tell "Response 3]" from "2]"
    unseen = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    unseen[rows.unique()] = False
    opt = make_optimizer(model, lr, weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    state_path, start = folder / "pretrain_state.pt", 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        start = int(state["step"])
        log(f"pretrain: resuming at step {start}")
    t0 = time.time()
    for step in range(start, steps):
        batch = rows[torch.randint(len(rows), (batch_size,), generator=g)]
        set_lr(opt, lr_at(step, lr, warmup_steps=max(1, steps // 20), total_steps=steps))
        logits = model(batch[:, :-1]).masked_fill(unseen, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"pretrain step {step:5d} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                        "generator": g.get_state()}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
            log(f"pretrain: saved the state at step {step + 1}")
    model.config.raw = raw
    save_model(model.eval(), folder)
    state_path.unlink(missing_ok=True)
    return folder


def main(argv=None):
    from .corpus import pretraining_corpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out/demo/base", help="HF folder to write")
    ap.add_argument("--vocab-size", type=int, default=1024, help="BPE vocabulary size")
    ap.add_argument("--texts", type=int, default=20000, help="pretraining texts to generate")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus, init and batches")
    args = ap.parse_args(argv)
    texts = pretraining_corpus(args.texts, args.seed)
    train_tokenizer(texts, args.vocab_size, args.out)
    pretrain(args.out, texts, args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
