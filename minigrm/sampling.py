"""What to sample (SamplingParams) and what comes back (Completion).

`Completion.logprobs[t]` is log pi(token_t | prefix) under the model's own distribution at
temperature 1 (after Gemma-2's final softcap, before any top-k / top-p truncation): the
quantity GRPO's importance ratio needs, whatever temperature the sample was drawn at.
"""
import math
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1.0 = off
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (not included in .text)
    ignore_eos: bool = False
    seed: int | None = None  # same seed -> same outputs, whatever else is in the batch

    def __post_init__(self):
        for name in ("n", "max_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={self.n}, max_tokens={self.max_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"bad sampling params: temperature={self.temperature}, top_p={self.top_p}, "
                             f"top_k={self.top_k}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "error"
    error: str | None = None  # why a prompt could not be served (finish_reason == "error")
