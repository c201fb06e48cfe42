"""Tokenizer: Hugging Face `tokenizers` for text <-> ids, chat templates as plain Python.

Contract:
- `load_tokenizer(path, chat_template=None)` reads an HF folder: tokenizer.json,
  tokenizer_config.json (special tokens as strings or {"content": ...} dicts), and when
  present special_tokens_map.json, chat_template.jinja / chat_template.json, and the
  eos_token_id of generation_config.json and config.json (`eos_token_ids`: every id that
  ends generation, e.g. Llama-3's <|eot_id|> and <|end_of_text|>).
- `encode` / `decode` equal transformers 5's `AutoTokenizer` on the same folder for the same
  `add_special_tokens` / `skip_special_tokens`. What add_special_tokens=True adds is
  tokenizer.json's post-processor (Llama-3 and Gemma prepend BOS; SmolLM2 and Qwen add
  nothing); like transformers 5 we ignore tokenizer_config's add_bos_token/add_eos_token.
  Deliberate difference: `encode` defaults to add_special_tokens=False (HF: True), because
  the engine encodes rendered chat templates, which already hold BOS as text.
- `apply_chat_template(messages, add_generation_prompt=True)` equals HF's
  `apply_chat_template(messages, tokenize=False, ...)` with default kwargs for text messages
  with roles system/user/assistant, without Jinja: the folder's template is recognised by
  fingerprints (`detect_family`) and rendered by one of the `FAMILIES` functions below:
  ChatML (plain, SmolLM2, Qwen2, Qwen2.5 default system prompts), Qwen3 (default kwargs:
  no forced empty <think>), Llama-3, Llama-3.1/3.3 ("Today Date: 26 Jul 2024", the
  template's default) and Llama-3.2 (today's date, as HF's strftime_now gives), Gemma-2/3,
  DeepSeek-V2/V2-Lite-Chat ("User: ...\n\nAssistant:").
  Deliberate difference: Gemma-2's template raises on a system message; we render it as
  Gemma-3's template does, "<system>\n\n" opening the first user turn.
- A folder without a template, or with one we cannot render exactly, still loads; only
  `apply_chat_template` raises a ValueError that says to pass
  `load_tokenizer(path, chat_template="chatml")` (or another family) or a callable
  `(messages, add_generation_prompt) -> str`.
"""
import datetime
import re
from pathlib import Path
from typing import Callable

from tokenizers import AddedToken
from tokenizers import Tokenizer as _Backend

from .config import read_json_object

Message = dict[str, str]
ChatTemplate = Callable[[list[Message], bool], str]
SPECIAL = ("bos_token", "eos_token", "pad_token", "unk_token")
ROLES = ("system", "user", "assistant")

# Default system prompts baked into ChatML templates (inserted when messages[0] is not system).
DEFAULT_SYSTEM = {
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "qwen2.5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "qwen2": "You are a helpful assistant.",  # checked last: it is a substring of the others
}
LLAMA31_DATE = "26 Jul 2024"  # Llama-3.1's template default when no date_string is passed


# ----------------------------------------------------------------------------- templates
# Each renderer takes (messages, add_generation_prompt, bos, eos): bos/eos are the token
# *strings* from tokenizer_config.json, as Jinja templates see them.

def _im(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _chatml(default_system: str | None, system_if_empty: bool = False):
    """ChatML; SmolLM2/Qwen2 insert the default system turn only before a first non-system
    message, Qwen2.5 emits it even for an empty conversation (`system_if_empty`)."""
    def render(messages, add_generation_prompt, bos, eos):
        out = []
        needs = messages[0]["role"] != "system" if messages else system_if_empty
        if default_system is not None and needs:
            out.append(_im("system", default_system))
        out += [_im(m["role"], m["content"]) for m in messages]
        return "".join(out) + ("<|im_start|>assistant\n" if add_generation_prompt else "")
    return render


def _qwen3(messages, add_generation_prompt, bos, eos):
    """Qwen3 with default kwargs (enable_thinking undefined: no empty think block added).
    Assistant turns after the last user query keep their reasoning as <think>...</think>;
    earlier ones are stripped to the final answer, as the real template does."""
    out = [_im("system", messages[0]["content"])] if messages and messages[0]["role"] == "system" else []
    last_query = len(messages) - 1
    for i in reversed(range(len(messages))):
        c = messages[i]["content"]
        if messages[i]["role"] == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            last_query = i
            break
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "user" or (role == "system" and i > 0):
            out.append(_im(role, content))
        elif role == "assistant":
            reasoning = ""
            if "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            if i > last_query and (i == len(messages) - 1 or reasoning):
                content = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            out.append(_im("assistant", content))
    return "".join(out) + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _header(role: str, content: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"


def _llama3(messages, add_generation_prompt, bos, eos):
    """Llama-3: BOS before the first turn, every content stripped (Jinja `| trim`)."""
    body = "".join(_header(m["role"], m["content"]) for m in messages)
    gen = "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
    return (bos if messages else "") + body + gen


def _llama31(date: Callable[[], str]):
    """Llama-3.1/3.2/3.3: a system turn always comes first and carries the knowledge-cutoff
    and date lines; 3.1 hard-codes "26 Jul 2024", 3.2 asks strftime_now (today)."""
    def render(messages, add_generation_prompt, bos, eos):
        system = ""
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"].strip(), messages[1:]
        head = ("<|start_header_id|>system<|end_header_id|>\n\n"
                f"Cutting Knowledge Date: December 2023\nToday Date: {date()}\n\n{system}<|eot_id|>")
        return bos + head + _llama3(messages, add_generation_prompt, "", eos)
    return render


def _gemma(messages, add_generation_prompt, bos, eos):
    """Gemma/Gemma-2 turns; role assistant -> "model". A leading system message becomes a
    prefix of the first user turn (Gemma-3's rule; Gemma-2's own template raises instead)."""
    prefix = ""
    if messages and messages[0]["role"] == "system":
        prefix, messages = messages[0]["content"] + "\n\n", messages[1:]
    out = [bos]
    for i, m in enumerate(messages):
        if (m["role"] == "user") != (i % 2 == 0):  # same check (and error) as the real template
            raise ValueError("Gemma: conversation roles must alternate user/assistant/user/assistant/...")
        role = "model" if m["role"] == "assistant" else m["role"]
        out.append(f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n")
    return "".join(out) + ("<start_of_turn>model\n" if add_generation_prompt else "")


def _deepseek(messages, add_generation_prompt, bos, eos):
    """DeepSeek-V2 / V2-Lite-Chat: no separator after an assistant turn but EOS; the
    generation prompt is "Assistant:" without a trailing space."""
    out = [bos]
    for m in messages:
        if m["role"] == "user":
            out.append(f"User: {m['content']}\n\n")
        elif m["role"] == "assistant":
            out.append(f"Assistant: {m['content']}{eos}")
        else:
            out.append(f"{m['content']}\n\n")
    return "".join(out) + ("Assistant:" if add_generation_prompt else "")


def _today() -> str:
    return datetime.datetime.now().strftime("%d %b %Y")


FAMILIES = {
    "chatml": _chatml(None),
    "smollm2": _chatml(DEFAULT_SYSTEM["smollm2"]),
    "qwen2": _chatml(DEFAULT_SYSTEM["qwen2"]),
    "qwen2.5": _chatml(DEFAULT_SYSTEM["qwen2.5"], system_if_empty=True),
    "qwen3": _qwen3,
    "llama3": _llama3,
    "llama3.1": _llama31(lambda: LLAMA31_DATE),
    "llama3.2": _llama31(_today),
    "gemma": _gemma,
    "deepseek": _deepseek,
}


def _normalize(template: str) -> str:
    """Spacing, quote style, newline escapes and `m.role` vs `m['role']` vary between copies
    of the same template; drop those differences before looking for fingerprints."""
    t = re.sub(r"\s+", "", template.replace("\\n", "")).replace('"', "'")
    return re.sub(r"message\.(role|content)\b", r"message['\1']", t)


_CHATML_TURN = "'<|im_start|>'+message['role']+''+message['content']+'<|im_end|>'"
_LLAMA_TURN = "'<|start_header_id|>'+message['role']+'<|end_header_id|>'+message['content']|trim+'<|eot_id|>'"
# (family, fragments that must all occur in the normalized template), most specific first.
_FINGERPRINTS = [
    ("gemma", ["{{bos_token}}", "'<start_of_turn>'+role+''", "setrole='model'"]),
    ("llama3.2", ["CuttingKnowledgeDate:December2023", "strftime_now('%d%b%Y')", _LLAMA_TURN]),
    ("llama3.1", ["CuttingKnowledgeDate:December2023", "setdate_string='26Jul2024'", _LLAMA_TURN]),
    ("llama3", ["setcontent=bos_token+content", _LLAMA_TURN]),
    ("deepseek", ["{{bos_token}}", "'User:'+message['content']+''", "'Assistant:'+message['content']+eos_token"]),
    ("qwen3", ["last_query_index", "<think>", _CHATML_TURN]),
    ("qwen2.5", [DEFAULT_SYSTEM["qwen2.5"].replace(" ", ""), _CHATML_TURN]),
    ("smollm2", [DEFAULT_SYSTEM["smollm2"].replace(" ", ""), _CHATML_TURN]),
    ("qwen2", [DEFAULT_SYSTEM["qwen2"].replace(" ", ""), _CHATML_TURN]),
]


def detect_family(template: str) -> str | None:
    """Name of the FAMILIES entry that renders this Jinja template, or None if unsure.
    A template matches a family when it holds all of that family's fingerprints. Templates
    with macros, other reasoning formats or an unknown default system prompt return None
    rather than a guess: rendering them approximately would silently change the prompt."""
    t = _normalize(template)
    if "macro" in t:
        return None
    for name, fragments in _FINGERPRINTS:
        if all(f in t for f in fragments):
            return name
    # Plain ChatML: the turn pattern, no BOS, no reasoning, no default system prompt
    # (literal text right after "<|im_start|>system").
    if _CHATML_TURN in t and not re.search(r"bos_token|<think>|<\|im_start\|>system[^']", t):
        return "chatml"
    return None


# ----------------------------------------------------------------------------- tokenizer

class Tokenizer:
    """Text <-> token ids plus the chat template; see the module docstring for the contract."""

    def __init__(self, backend: _Backend, special: dict[str, str | None], eos_token_ids: list[int],
                 template: ChatTemplate | None, template_name: str | None, template_error: str = ""):
        self.backend = backend
        self.special = special  # {"bos_token": "<s>", ...}, None where the folder has none
        self.eos_token_ids = eos_token_ids  # every id that ends generation
        self.chat_template_name = template_name
        self._template = template
        self._template_error = template_error

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.special["bos_token"])

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.special["eos_token"])

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.special["pad_token"])

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit, added tokens included (HF's `len(tok)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            raise ValueError(self._template_error)
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"message {i}: need role in {ROLES} and str content, got {m!r}")
        return self._template(messages, add_generation_prompt)


def _token_str(value) -> str | None:
    """A special token in tokenizer_config.json is a string, an AddedToken dict, or null."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict:
    return read_json_object(path) if path.exists() else {}


def _find_template(path: Path, config: dict) -> str | None:
    """transformers 5 writes chat_template.jinja; processors chat_template.json; older folders
    keep it in tokenizer_config.json, possibly as a list of named templates."""
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    template = _read_json(path / "chat_template.json").get("chat_template") or config.get("chat_template")
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}.get("default")
    return template


def _ids(value) -> list[int]:
    return [value] if isinstance(value, int) else list(value or [])


def _resolve_template(path: Path, config: dict, chat_template, special: dict):
    """-> (render(messages, add_generation_prompt), family name, error message if none)."""
    how = (f'pass one explicitly: --chat-template chatml in the scripts, load_tokenizer(path, '
           f'chat_template="chatml") with one of {sorted(FAMILIES)}, or chat_template=<callable '
           f'(messages, add_generation_prompt) -> str>')
    if callable(chat_template):
        return chat_template, getattr(chat_template, "__name__", "callable"), ""
    if chat_template is not None:
        if chat_template not in FAMILIES:
            raise ValueError(f"unknown chat_template={chat_template!r}; {how}")
        name = chat_template
    else:
        jinja = _find_template(path, config)
        if jinja is None:
            return None, None, f"{path} has no chat template; {how}"
        name = detect_family(jinja)
        if name is None:
            return None, None, f"{path}: unrecognised chat template {jinja[:120]!r}...; {how}"
    render, bos, eos = FAMILIES[name], special["bos_token"] or "", special["eos_token"] or ""
    return (lambda messages, add_generation_prompt: render(messages, add_generation_prompt, bos, eos)), name, ""


def load_tokenizer(path: str | Path, chat_template: str | ChatTemplate | None = None) -> Tokenizer:
    """Tokenizer for an HF folder. `chat_template`: None (recognise the folder's template),
    a FAMILIES name to force one, or a callable (messages, add_generation_prompt) -> str."""
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}: minigrm reads Hugging Face fast-tokenizer folders")
    try:
        backend = _Backend.from_file(str(file))
    except Exception as e:  # the tokenizers library raises its own Exception type
        raise ValueError(f"{file}: not a tokenizers file ({str(e)[:200]})") from None
    config = {**_read_json(path / "special_tokens_map.json"), **_read_json(path / "tokenizer_config.json")}
    special = {name: _token_str(config.get(name)) for name in SPECIAL}
    # transformers adds configured special tokens missing from tokenizer.json; so do we.
    missing = [t for t in special.values() if t is not None and backend.token_to_id(t) is None]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)])
    eos_ids = _ids(backend.token_to_id(special["eos_token"]) if special["eos_token"] else None)
    for extra in ("generation_config.json", "config.json"):
        eos_ids += _ids(_read_json(path / extra).get("eos_token_id"))
    template, name, error = _resolve_template(path, config, chat_template, special)
    return Tokenizer(backend, special, list(dict.fromkeys(eos_ids)), template, name, error)
