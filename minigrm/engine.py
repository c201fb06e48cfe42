"""Engine: batched, KV-cached sampling with continuous batching and prefix sharing.

    engine = Engine(model, tokenizer)
    outs = engine.generate(prompts, SamplingParams(n=8, temperature=0.5, max_tokens=1024, seed=0))
    outs[i][j].text, .token_ids, .logprobs, .finish_reason

Prompts are strings (already chat-formatted; encoded without adding special tokens) or lists
of token ids. Each of the n samples of prompt i draws from its own counter-based random
stream seeded by (seed, i, j), so the same seed gives the same outputs whatever the batch
composition, the step in which a sequence runs, or preemptions in between.

The loop: schedule (scheduler.py) -> run one step on the model (runner.py) -> append each
sampled token, check EOS / stop strings / length -> release finished sequences' blocks.
Per step the host does O(batch) small work; the per-sequence tensors the step needs live on
the device (decode_state.py) and change incrementally. On CUDA, decode passes are replayed
from CUDA graphs by default (cuda_graphs.py) and the KV pool is sized by a profiled warm-up
(memory.py).
"""
import os

import torch
from tqdm.auto import tqdm

from .kernels import use_triton
from .kv_cache import BlockManager
from .memory import keep_freed_memory, num_blocks_for, profile_activation_bytes
from .runner import ModelRunner
from .sampling import Completion, SamplingParams
from .scheduler import FINISHED, Scheduler, Sequence

MASK63 = (1 << 63) - 1


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """Mix (seed, i, j) into an independent 63-bit seed (splitmix64 steps)."""
    x = seed & MASK63
    for v in (prompt_index, sample_index):
        x = (x + 0x9E3779B97F4A7C15 * (v + 1)) & ((1 << 64) - 1)
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
        x ^= x >> 31
    return x & MASK63


class Engine:
    """Sampling engine over a model. Memory: `kv_cache_bytes` (any device) or, on CUDA,
    `gpu_memory_utilization` with a profiled warm-up (memory.py); `num_blocks` overrides both.
    `cuda_graphs`: decode passes replayed from CUDA graphs on CUDA unless False (MLA models too:
    latent kernel, masked latent store). `cascade`: shared-prefix decode attention for groups of
    rows sharing >= runner.cascade_min_tokens of prompt (MLA models too: latent attention with
    shared prefixes)."""

    def __init__(self, model, tokenizer, block_size: int = 16, num_blocks: int | None = None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, max_model_len: int | None = None,
                 kv_cache_bytes: int | None = None, gpu_memory_utilization: float = 0.9,
                 prefix_sharing: bool = True, cuda_graphs: bool | None = None, cascade: bool = True,
                 progress: bool = True):
        if model.config.is_classifier:
            raise ValueError("Engine samples text: load a *ForCausalLM checkpoint, not a classifier")
        self.model, self.tokenizer = model, tokenizer
        p = next(model.parameters())
        graphs = p.is_cuda and use_triton(p) and cuda_graphs is not False
        if not p.is_cuda:
            keep_freed_memory()  # per-step temporaries reused, not page-faulted in again (memory.py)
        max_model_len = max_model_len or model.config.max_position_embeddings
        self.memory = {}
        if num_blocks is None:
            if p.is_cuda and kv_cache_bytes is None:
                self.memory = profile_activation_bytes(model, block_size, max_num_seqs, max_num_batched_tokens,
                                                       max_model_len, graphs)
            num_blocks = num_blocks_for(model.config, block_size, p.dtype, p.device, max_num_seqs, max_model_len,
                                        kv_cache_bytes, gpu_memory_utilization, self.memory.get("reserved", 0))
        self.max_model_len = min(max_model_len, num_blocks * block_size)
        self.runner = ModelRunner(model, num_blocks, block_size, max_num_seqs, self.max_model_len)
        if not cascade:
            self.runner.cascade_min_tokens = 10**9
        self.blocks = BlockManager(num_blocks, block_size, prefix_sharing)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max(max_num_batched_tokens, max_num_seqs))
        self.scheduler.on_release = self.runner.release
        eos = getattr(tokenizer, "eos_token_ids", None) or model.config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.progress = progress
        self._next_id = 0
        self.stats = {"steps": 0, "prefill_tokens": 0, "cached_tokens": 0, "decode_tokens": 0}
        if graphs:
            from .cuda_graphs import DecodeGraphs
            self.runner.graphs = DecodeGraphs(self.runner, max_num_seqs)

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes: call after updating the model's weights in place (RL), since
        freed blocks keep K/V computed by the old weights for reuse across generate() calls."""
        self.blocks.forget()

    def _encode(self, prompt) -> list[int]:
        return list(prompt) if not isinstance(prompt, str) else self.tokenizer.encode(prompt)

    def _check(self, ids: list[int]) -> str | None:
        if not ids:
            return "empty prompt"
        if len(ids) >= self.max_model_len:
            return (f"prompt of {len(ids)} tokens leaves no room to generate: the limit is "
                    f"{self.max_model_len} tokens (model context or KV cache of "
                    f"{self.blocks.num_blocks} blocks x {self.blocks.block_size})")
        return None

    def add(self, prompt, params: SamplingParams, seed: int, index: int = 0) -> list:
        """Queue params.n samples of one prompt (a string or token ids), sample j drawn from the
        random stream sample_seed(seed, index, j). -> the n queued Sequences, or n finished "error"
        Completions when the prompt cannot be served (empty, longer than the context or pool)."""
        ids = self._encode(prompt)
        error = self._check(ids)
        if error:
            return [Completion("", [], [], "error", error) for _ in range(params.n)]
        if self.runner.graphs is not None and not self.scheduler.has_work():
            self.runner.graphs.ensure_captured()  # first use, or the weights moved (FSDP, RL)
        seqs = []
        for j in range(params.n):
            seqs.append(Sequence(self._next_id, ids, params, sample_seed(seed, index, j)))
            self._next_id += 1
            self.scheduler.add(seqs[-1])
        return seqs

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def abort_all(self) -> None:
        """Drop every queued and running sequence and free its blocks (after a failed step)."""
        self.scheduler.abort_all()

    def generate(self, prompts, params: SamplingParams | None = None, on_finish=None,
                 seeds: list[int] | None = None) -> list[list[Completion]]:
        """-> outs[i][j], the j-th of params.n completions of prompts[i]. `on_finish(i, j,
        completion)` is called as soon as each one is done (to save results incrementally).
        `seeds[i]`, when given, replaces (params.seed, i) as prompt i's seed, so a prompt's
        samples do not depend on which other prompts share the call (resumable runs)."""
        params = params or SamplingParams()
        base_seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
        outs, where = [], {}
        for i, prompt in enumerate(prompts):
            outs.append(self.add(prompt, params, base_seed, i) if seeds is None else self.add(prompt, params, seeds[i]))
            for j, x in enumerate(outs[i]):
                if isinstance(x, Completion):
                    if on_finish:
                        on_finish(i, j, x)
                else:
                    where[x.seq_id] = (i, j)
        bar = tqdm(total=len(where), desc="generate", unit="seq", disable=not self.progress or len(where) < 2)
        while self.scheduler.has_work():
            for seq in self.step():
                i, j = where[seq.seq_id]
                outs[i][j] = self.completion(seq)
                if on_finish:
                    on_finish(i, j, outs[i][j])
                bar.update(1)
        bar.close()
        return outs

    def step(self) -> list[Sequence]:
        """Schedule and run one step; -> the sequences that finished in it."""
        prefill, decode = self.scheduler.schedule()
        if not prefill and not decode:
            raise RuntimeError("scheduler made no progress (KV cache too small for one sequence?)")
        st = self.stats
        st["steps"] += 1
        st["decode_tokens"] += len(decode)
        for seq in prefill:
            st["prefill_tokens"] += seq.chunk_end - seq.num_computed
        st["cached_tokens"] = self.scheduler.num_cached_tokens
        seqs, tokens, logprobs = self.runner.step(prefill, decode)
        finished = []
        sch, eos, max_len = self.scheduler, self.eos_ids, self.max_model_len
        bs = sch.blocks.block_size
        for seq, token, logprob in zip(seqs, tokens, logprobs):  # host work per sequence per step: kept lean
            out = seq.output_ids
            out.append(token)
            seq.logprobs.append(logprob)
            n = len(seq)
            seq.num_computed = n - 1  # scheduler.after_step, inlined: all but the sampled token are cached
            if (n - 1) // bs > seq.num_registered:
                sch.register_full_blocks(seq)
            p = seq.params
            if token in eos and not p.ignore_eos:
                reason = "stop"
            elif p.stop and self._stopped(seq):
                reason = "stop"
            elif len(out) >= p.max_tokens or n >= max_len:
                reason = "length"
            else:
                continue
            self.scheduler.finish(seq, reason)
            finished.append(seq)
        for seq in prefill:
            if not seq.decoding:  # a prompt chunk that is not the last: nothing sampled
                sch.after_step(seq)
        return finished

    def _stopped(self, seq: Sequence) -> bool:
        stop = seq.params.stop
        window = max(len(s) for s in stop) + 2  # a stop string of c chars spans <= c + 1 tokens
        tail = self.tokenizer.decode(seq.output_ids[-window:])
        return any(s in tail for s in stop)

    def completion(self, seq: Sequence) -> Completion:
        assert seq.status == FINISHED
        ids = seq.output_ids
        shown = ids[:-1] if ids and ids[-1] in self.eos_ids and not seq.params.ignore_eos else ids
        text = self.tokenizer.decode(shown) if self.tokenizer is not None else ""
        cuts = [text.find(s) for s in seq.params.stop if s in text]
        if cuts:
            text = text[:min(cuts)]
        return Completion(text, list(ids), list(seq.logprobs), seq.finish_reason)


@torch.inference_mode()
def teacher_forced_logprobs(model, prompt_ids: list[int], output_ids: list[int]) -> list[float]:
    """log pi(output_t | prompt, output_<t) from one full forward: the slow twin of .logprobs."""
    ids = torch.tensor([prompt_ids + output_ids], device=next(model.parameters()).device)
    logits = model(ids)[0, len(prompt_ids) - 1:-1].float()  # (len(output), V)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(1, torch.tensor(output_ids, device=logp.device)[:, None])[:, 0].tolist()
