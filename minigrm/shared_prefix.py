"""Prefix-shared forward for GRPO: one prompt and its G completions, the prompt computed once.

The G judgments GRPO samples for a GRM prompt share the whole prompt (~900 tokens with the
paper's template, against ~300 generated). Instead of G forwards and backwards over
[prompt ; completion_g], run the decoder twice:

    pass 1  the prompt (1, P), every attention layer keeping its K/V           (with grad)
    pass 2  the completions (G, Tc) at positions P .. P+Tc-1, every attention layer attending
            causally over [the prompt's K/V expanded to G ; the completion's own K/V]

and return the (G, P + Tc, C) hidden states the per-sequence forward returns (the prompt's rows,
equal for every g, are one row block expanded). Gradients reach the prompt's computation through
its last hidden state (which predicts every completion's first token) and through its K/V, which
all G completions read; autograd sums the G contributions. Linear layers and MLPs then see
P + G * Tc tokens instead of G * (P + Tc): 2100 instead of 4800 for P = 900, G = 4, Tc = 300.

Contract:
    shared_prefix_hidden(decoder, input_ids (G, T), prompt_len P) -> (G, T, C)
        == decoder(input_ids), values and gradients, when every row starts with the same P tokens
        (rows may be right-padded after their completion). Pinned to the per-sequence forward by
        tests/test_shared_prefix.py for Llama, Qwen2 (biases), Qwen3 (q/k norms), Gemma-2
        (softcaps, sliding window) and DeepSeek-V2 (MLA: the latent [c_kv, k_pe] is what is
        shared; kv_b_proj up-projects it per completion, as the per-sequence forward does).
    logprob.sequence_logprobs(..., prompt_len=P) and training.LogprobForward(ids, mask, prompt_len=P)
        take this path.

It works through the decoder's attention-backend hook (`attn.attend` / `attn.attend_latent`, the
one the engine's paged KV cache uses), so the layers' code is shared with every other path, and
under gradient checkpointing a recomputed layer reads the same stored prefix K/V.

Speed and memory against the per-sequence forward: `python -m minigrm.bench_update`.
"""
import torch

from .layers import causal_attention


class RecordPrefix:
    """Pass 1's backend: ordinary causal attention, keeping each layer's K/V (or MLA latent)."""
    fused_rope = False  # the model applies RoPE (only the engine's GPU backends do it in a kernel)

    def __init__(self):
        self.kv = {}  # layer index -> (k, v) (1, P, Hkv, D) each, or MLA's (c_kv (1, P, R), k_pe (1, P, 1, Dr))

    def attend(self, module, q, k, v):
        self.kv[module.layer_idx] = (k, v)
        return causal_attention(q, k, v, module.scale, module.softcap, module.window)

    def attend_latent(self, module, q_nope, q_pe, c_kv, k_pe):
        self.kv[module.layer_idx] = (c_kv, k_pe)
        return module.attend_expanded(q_nope, q_pe, c_kv, k_pe)


class AttendToPrefix:
    """Pass 2's backend: the G completions' queries are the last Tc of P + Tc positions."""
    fused_rope = False

    def __init__(self, prefix: RecordPrefix, G: int):
        self.kv, self.G = prefix.kv, G

    def _with_prefix(self, layer, k, v):
        pk, pv = self.kv[layer]
        expand = lambda t: t.expand(self.G, *t.shape[1:])  # noqa: E731 (a view: no copy of the prompt)
        return torch.cat([expand(pk), k], dim=1), torch.cat([expand(pv), v], dim=1)  # (G, P + Tc, ...)

    def attend(self, module, q, k, v):
        k, v = self._with_prefix(module.layer_idx, k, v)
        return causal_attention(q, k, v, module.scale, module.softcap, module.window)

    def attend_latent(self, module, q_nope, q_pe, c_kv, k_pe):
        c_kv, k_pe = self._with_prefix(module.layer_idx, c_kv, k_pe)
        return module.attend_expanded(q_nope, q_pe, c_kv, k_pe)


def shared_prefix_hidden(decoder, input_ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """(G, T) ids whose rows share their first `prompt_len` tokens -> (G, T, C) hidden states."""
    G, T = input_ids.shape
    P = prompt_len
    if not 0 < P < T:
        raise ValueError(f"prompt_len {P} must be in 1 .. {T - 1} for sequences of {T} tokens")
    prompt = input_ids[:1, :P]  # (1, P)
    if not torch.equal(input_ids[:, :P], prompt.expand(G, P)):
        raise ValueError(f"the {G} rows do not share their first {P} tokens")
    prefix = RecordPrefix()
    h_prompt = decoder(prompt, attn=prefix)  # (1, P, C)
    positions = torch.arange(P, T, device=input_ids.device)  # (Tc,)
    h_completions = decoder(input_ids[:, P:], positions, attn=AttendToPrefix(prefix, G))  # (G, Tc, C)
    return torch.cat([h_prompt.expand(G, P, -1), h_completions], dim=1)  # (G, T, C)
