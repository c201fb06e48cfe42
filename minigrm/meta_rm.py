"""The meta reward model: a scalar-head model that rates each sampled judgment (paper §4).

Input (GRM_SPEC §1): a user turn "Please score the responses." + the conversation context +
the responses *in the order the GRM saw them*, and the GRM's generated principles and critique
as the assistant turn, rendered with the meta RM's chat template (add_generation_prompt=False).
Output: one scalar logit per judgment (None for an input longer than the model's context: it is
never run); a higher value means the judgment is more likely
correct (Eq. 10), which is what meta-RM training's binary cross-entropy teaches it.

The checkpoint is an HF `*ForSequenceClassification` folder (num_labels=1, a `score` head),
such as the released DeepSeek-GRM-27B-MetaRM. The reward is read at each sequence's last
token (its length - 1): equal to transformers' "rightmost non-pad token" rule whenever the
text does not end in the pad token, and robust when the pad token also occurs inside it.
Open choice (not stated by the paper): the exact rendering of the assistant turn; we use the
tokenizer's own chat template, trailing end-of-turn tokens included.
"""
import random

import torch
import torch.nn.functional as F

from .batching import length_grouped, right_pad
from .checkpoint import load_model
from .config import ModelConfig
from .model import CausalLM
from .prompts import meta_rm_messages
from .tokenizer import load_tokenizer
from .logprob import autocast

CLASSIFIERS = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
               "qwen3": "Qwen3ForSequenceClassification", "gemma2": "Gemma2ForSequenceClassification"}


def check_meta_rm_folder(path) -> None:
    """Refuse a folder that is not a scalar-head checkpoint before anything is sampled."""
    config = ModelConfig.from_pretrained(path)
    if not config.is_classifier or config.num_labels != 1:
        raise ValueError(f"{path} is not a *ForSequenceClassification checkpoint with num_labels=1 "
                         f"(architectures {config.raw.get('architectures')})")


class MetaRM:
    def __init__(self, model, tokenizer, max_tokens_per_batch: int = 16384):
        if not model.config.is_classifier or model.config.num_labels != 1:
            raise ValueError("the meta RM must be a *ForSequenceClassification checkpoint with num_labels=1")
        self.model, self.tokenizer, self.max_tokens_per_batch = model, tokenizer, max_tokens_per_batch
        self.max_len = model.config.max_position_embeddings

    def encode(self, context, shown_responses: list[str], judgment: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(meta_rm_messages(context, shown_responses, judgment),
                                                  add_generation_prompt=False)
        return self.tokenizer.encode(text)

    @torch.inference_mode()
    def score_ids(self, sequences: list[list[int]]) -> list[float | None]:
        """One reward per token sequence, in batches of similar length (right-padded); None for a
        sequence longer than the model's context (it is never run: no memory blow-up)."""
        device = next(self.model.parameters()).device
        fits = [i for i in range(len(sequences)) if 0 < len(sequences[i]) <= self.max_len]
        rewards = [None] * len(sequences)
        budget = max([self.max_tokens_per_batch] + [len(sequences[i]) for i in fits])
        for group in length_grouped([len(sequences[i]) for i in fits], budget):
            rows = [sequences[fits[g]] for g in group]
            r = self.model(right_pad(rows, 0).to(device)).float()  # (B, T) per-position rewards
            last = torch.tensor([len(s) - 1 for s in rows], device=device)
            for g, value in zip(group, r[torch.arange(len(rows), device=device), last].tolist()):
                rewards[fits[g]] = value
        return rewards

    def score(self, contexts, shown_responses, judgments) -> list[float]:
        """Meta rewards for parallel lists of (context, responses as shown, judgment text)."""
        return self.score_ids([self.encode(c, r, j) for c, r, j in zip(contexts, shown_responses, judgments)])


def load_meta_rm(path, dtype=torch.float32, device="cpu", chat_template=None, **kw) -> MetaRM:
    return MetaRM(load_model(path, dtype=dtype, device=device), load_tokenizer(path, chat_template), **kw)


# ---------------------------------------------------------------- training (train_rft.py --meta-rm)

def classifier_from(path, dtype, device, seed: int) -> CausalLM:
    """--model's backbone with a fresh scalar head: an HF *ForSequenceClassification (num_labels 1)."""
    lm = load_model(path, dtype=dtype, device=device)
    if lm.config.model_type not in CLASSIFIERS:
        raise ValueError(f"no scalar-head architecture for model_type {lm.config.model_type!r}; "
                         f"meta-RM training supports {sorted(CLASSIFIERS)}")
    raw = dict(lm.config.raw, architectures=[CLASSIFIERS[lm.config.model_type]], num_labels=1,
               id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if raw.get("pad_token_id") is None:  # transformers needs it to find each row's last token
        raw["pad_token_id"] = lm.config.eos_token_id if isinstance(lm.config.eos_token_id, int) else 0
    with torch.device("meta"):  # no memory until the backbone's weights are copied in
        model = CausalLM(ModelConfig.from_dict(raw))
    model = model.to_empty(device=device).to(dtype)
    model.model.load_state_dict(lm.model.state_dict())
    model.model.rotary_emb.init_buffers(device)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=g) * raw.get("initializer_range", 0.02))
    return model


def bce_loss(policy, batch) -> torch.Tensor:
    """Binary cross-entropy of the reward at each judgment's last token against its Eq. 10 label.
    `policy` is the (possibly wrapped) classifier; batch = (ids (B, T), last index (B,), labels (B,))."""
    ids, last, labels = batch
    with autocast(ids.device):
        rewards = policy(ids).float()  # (B, T)
    reward = rewards[torch.arange(len(last), device=ids.device), last]  # (B,)
    return F.binary_cross_entropy_with_logits(reward, labels.float())


def meta_batches(examples, max_tokens, pad_id, seed):
    """Length-grouped, right-padded (ids (B, T), last index (B,), labels (B,)) batches, seeded order."""
    groups = length_grouped([len(ids) for ids, _ in examples], max_tokens)
    random.Random(seed).shuffle(groups)
    return [(right_pad([examples[i][0] for i in g], pad_id), torch.tensor([len(examples[i][0]) - 1 for i in g]),
             torch.tensor([examples[i][1] for i in g])) for g in groups]
