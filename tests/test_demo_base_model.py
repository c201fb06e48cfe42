"""The demo's tokenizer and tiny base model, made from scratch, load in minigrm and transformers;
pretraining resumes where it stopped."""
import random

import torch
import transformers

import minigrm
from minigrm.demo.base_model import pretrain, train_tokenizer


def corpus(n=400, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        out.append(rng.choice([f"{a} + {b} = {a + b}", f"Q: What is {a} + {b}? A: {a + b}"]))
    return out


def test_tokenizer_and_base_model_from_scratch(tmp_path):
    texts = corpus()
    folder = train_tokenizer(texts, vocab_size=300, folder=tmp_path / "base")
    losses = []
    pretrain(folder, texts, steps=30, batch_size=8, seq_len=64, lr=3e-3, hidden=64, layers=2, heads=4,
             kv_heads=2, log=lambda line: losses.append(float(line.split("loss ")[1].split()[0])))
    assert losses[-1] < losses[0] - 0.5  # it learns
    tok = minigrm.load_tokenizer(folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": "What is 12 + 30?"}]
    text = tok.apply_chat_template(msgs)
    assert text == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)
    ours = minigrm.load_model(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-4
    assert tok.eos_token_id == ours.config.eos_token_id  # generation stops at <|im_end|>
    # the template pieces, never in the corpus, keep distinct embeddings (the softmax over them
    # would collapse them all onto one direction: RFT could not tell the prompts apart)
    from minigrm.demo.base_model import template_pieces
    e = torch.nn.functional.normalize(ours.model.embed_tokens.weight[[tok.token_to_id(p) for p in
                                                                     template_pieces()]], dim=-1)
    cos = (e @ e.T)[~torch.eye(len(e), dtype=torch.bool)]
    assert cos.abs().max() < 0.5, cos.abs().max()


def test_template_pieces_are_whole_tokens_and_round_trip(tmp_path):
    from minigrm.demo.base_model import template_pieces
    from minigrm.prompts import grm_messages, meta_rm_messages, single_response_messages

    folder = train_tokenizer(corpus(), vocab_size=300, folder=tmp_path / "base")
    tok = minigrm.load_tokenizer(folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    q, rs = "What is 12 + 30?", ["42", "12 + 30 = 41.", "The answer is 43.", "It is 32"]
    for msgs in (grm_messages(q, rs), grm_messages(q, rs[:2], best_index=1), single_response_messages(q, rs[0]),
                 meta_rm_messages(q, rs[:3], "Scores: \\boxed{9, 2, 1}")):
        text = tok.apply_chat_template(msgs, add_generation_prompt=msgs[-1]["role"] == "user")
        ids = tok.encode(text)
        assert tok.decode(ids) == text and ids == hf_tok.encode(text, add_special_tokens=False)
        # the ~630 words of fixed instructions cost one token each piece; the rest is the query and responses
        assert len(ids) < 100, len(ids)
    pieces = template_pieces()
    assert all(len(tok.encode(p)) == 1 for p in pieces) and len(pieces) == 12  # 12 pieces: cut at each response index
    assert len(tok.encode(grm_messages(q, rs)[0]["content"].replace("scoring", "scorinG"))) > 300  # not a lookup of the whole prompt


def test_digits_are_single_tokens(tmp_path):
    folder = train_tokenizer(corpus(), vocab_size=300, folder=tmp_path / "base")
    tok = minigrm.load_tokenizer(folder)
    text = "473 + 296: 3+6+0=9, 7+9+0=16, so 769."
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    assert "".join(pieces) == text
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(p.strip().isdigit() and len(p.strip()) == 1 for p in digits)  # never two digits in one token
    assert "".join(digits).replace(" ", "") == "".join(c for c in text if c.isdigit())


def test_pretraining_resumes_where_it_stopped(tmp_path):
    texts = corpus()
    kw = dict(batch_size=4, seq_len=32, lr=3e-3, hidden=32, layers=1, heads=2, kv_heads=1, save_every=3)
    straight = train_tokenizer(texts, vocab_size=300, folder=tmp_path / "straight")
    pretrain(straight, texts, steps=7, log=lambda line: None, **kw)
    cut = train_tokenizer(texts, vocab_size=300, folder=tmp_path / "cut")

    def stop(line):
        if "saved" in line and "step 6" in line:
            raise KeyboardInterrupt
    try:
        pretrain(cut, texts, steps=7, log=stop, **kw)
    except KeyboardInterrupt:
        pass
    assert (cut / "pretrain_state.pt").exists() and not (cut / "model.safetensors").exists()
    lines = []
    pretrain(cut, texts, steps=7, log=lines.append, **kw)
    assert "resuming at step 6" in lines[0] and not (cut / "pretrain_state.pt").exists()
    a, b = minigrm.load_model(straight), minigrm.load_model(cut)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
