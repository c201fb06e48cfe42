"""minigrm.tokenizer against transformers: encode/decode on the real SmolLM2 tokenizer, and
chat templates rendered in Python against the real Jinja templates of each family
(tests/data/chat_templates), rendered by transformers on the same messages."""
import json
import shutil
from pathlib import Path

import pytest
from tokenizers import processors

from minigrm.tokenizer import FAMILIES, detect_family, load_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import AutoTokenizer  # noqa: E402

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

TEXTS = [
    "Hello world",
    "",
    " leading space and trailing  ",
    "line1\nline2\n\n\nline3\r\n",
    "multiple     spaces\tand\ttabs",
    "Café naïve résumé Ünïcödé",
    "中文字符测试，日本語のテキスト",
    "emoji 🙂🚀 and a family 👩‍👩‍👧",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|> mid <|im_end|>text<repo_name>",
    "The number 1234567 and 3.14159, x**2 == 4?",
]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
    "newlines": [
        {"role": "user", "content": "  line one\n\nline two  \n"},
        {"role": "assistant", "content": "\nanswer\n"},
        {"role": "user", "content": "tabs\tand  spaces "},
    ],
    "non_ascii": [
        {"role": "system", "content": "Réponds en français. "},
        {"role": "user", "content": "Ça va? 中文 🙂 ñ"},
        {"role": "assistant", "content": "Très bien — merci!"},
    ],
    "thinking": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"},
    ],
}

# Special tokens each family's real tokenizer_config.json declares (bos, eos).
FAMILY_TOKENS = {
    "Qwen-Qwen2-7B-Instruct": (None, "<|im_end|>"),
    "Qwen-Qwen2.5-7B-Instruct": (None, "<|im_end|>"),
    "Qwen-Qwen3-0.6B": (None, "<|im_end|>"),
    "meta-llama-Meta-Llama-3-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "google-gemma-3-1b-it": ("<bos>", "<eos>"),
    "deepseek-ai-DeepSeek-V2-Lite-Chat": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "teknium-OpenHermes-2.5-Mistral-7B": ("<s>", "<|im_end|>"),
}
EXPECTED_FAMILY = {
    "Qwen-Qwen2-7B-Instruct": "qwen2", "Qwen-Qwen2.5-7B-Instruct": "qwen2.5", "Qwen-Qwen3-0.6B": "qwen3",
    "meta-llama-Meta-Llama-3-8B-Instruct": "llama3", "meta-llama-Llama-3.1-8B-Instruct": "llama3.1",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3.2", "google-gemma-2-2b-it": "gemma",
    "google-gemma-3-1b-it": "gemma", "deepseek-ai-DeepSeek-V2-Lite-Chat": "deepseek",
    "teknium-OpenHermes-2.5-Mistral-7B": "chatml",
}


def make_folder(src: Path, dst: Path, template: str | None = None, **config) -> Path:
    """An HF folder with SmolLM2's tokenizer.json and the given tokenizer_config entries.
    Other families' special tokens are then new tokens to both libraries: fine for comparing
    rendered strings."""
    dst.mkdir(parents=True)
    shutil.copy(src / "tokenizer.json", dst)
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    if template is not None:
        (dst / "chat_template.jinja").write_text(template)
    return dst


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return load_tokenizer(smollm2_path), AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def family_folders(smollm2_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    folders = {}
    for name, (bos, eos) in FAMILY_TOKENS.items():
        template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
        folders[name] = make_folder(smollm2_path, root / name, template, bos_token=bos, eos_token=eos)
    return folders


# ----------------------------------------------------------------------------- encode / decode

@pytest.mark.parametrize("add_special_tokens", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_hf(smollm2, text, add_special_tokens):
    ours, hf = smollm2
    assert ours.encode(text, add_special_tokens=add_special_tokens) == hf.encode(
        text, add_special_tokens=add_special_tokens)


@pytest.mark.parametrize("skip_special_tokens", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_hf(smollm2, text, skip_special_tokens):
    ours, hf = smollm2
    ids = hf.encode(text, add_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == hf.decode(
        ids, skip_special_tokens=skip_special_tokens)
    if not skip_special_tokens:
        assert ours.decode(ids) == text  # byte-level BPE round-trips exactly


def test_decode_arbitrary_ids_matches_hf(smollm2):
    ours, hf = smollm2
    ids = list(range(0, 300, 7)) + [1000, 20000, ours.vocab_size - 1]
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_special_token_ids_match_hf(smollm2):
    ours, hf = smollm2
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
    assert ours.vocab_size == len(hf)
    assert ours.eos_token_ids == [hf.eos_token_id]  # SmolLM2's configs all agree on <|im_end|>


def test_post_processor_bos_matches_hf(smollm2_path, tmp_path):
    """Llama-3/Gemma style: tokenizer.json's post-processor prepends BOS, so HF's default
    encode adds one and ours (add_special_tokens=False by default) does not."""
    folder = make_folder(smollm2_path, tmp_path / "bos", bos_token="<|im_start|>", eos_token="<|im_end|>")
    data = json.loads((folder / "tokenizer.json").read_text())
    data["post_processor"] = json.loads(processors.TemplateProcessing(
        single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", 1)]).__getstate__())
    (folder / "tokenizer.json").write_text(json.dumps(data))
    ours, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    text = "<|im_start|>user\nHi there"
    assert ours.encode(text, add_special_tokens=True) == hf.encode(text) == [1] + ours.encode(text)
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("add_bos,add_eos", [(True, False), (False, True), (True, True), (False, False)])
def test_add_bos_eos_flags_match_hf(smollm2_path, tmp_path, add_bos, add_eos):
    """transformers 5 ignores add_bos_token/add_eos_token when tokenizer.json exists."""
    folder = make_folder(smollm2_path, tmp_path / "flags", bos_token="<|im_start|>", eos_token="<|im_end|>",
                         add_bos_token=add_bos, add_eos_token=add_eos)
    ours, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for text in ("Hello world", ""):
        assert ours.encode(text, add_special_tokens=True) == hf.encode(text, add_special_tokens=True)
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


def test_eos_token_ids_merge_generation_config(smollm2_path, tmp_path):
    folder = make_folder(smollm2_path, tmp_path / "eos", eos_token={"content": "<|im_end|>"}, pad_token=None)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 3}))
    tok = load_tokenizer(folder)
    assert tok.eos_token_id == 2 and tok.eos_token_ids == [2, 0, 3] and tok.pad_token_id is None


# ----------------------------------------------------------------------------- chat templates

@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_smollm2_chat_template_matches_hf(smollm2, conversation, add_generation_prompt):
    ours, hf = smollm2
    messages = CONVERSATIONS[conversation]
    assert ours.chat_template_name == "smollm2"
    assert ours.apply_chat_template(messages, add_generation_prompt) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _render_hf(folder: Path, messages, add_generation_prompt):
    return AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("name", list(FAMILY_TOKENS))
def test_family_chat_template_matches_hf(family_folders, name):
    folder = family_folders[name]
    ours, hf = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template_name == EXPECTED_FAMILY[name]
    for conversation, messages in CONVERSATIONS.items():
        if name == "google-gemma-2-2b-it" and messages[0]["role"] == "system":
            continue  # the real template raises; see test_gemma2_system_prepended_like_gemma3
        for agp in (True, False):
            expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
            assert ours.apply_chat_template(messages, agp) == expected, (conversation, agp)


def test_gemma2_system_prepended_like_gemma3(family_folders):
    """Gemma-2's template raises on a system message; we follow Gemma-3's template instead
    (system text + blank line opens the first user turn), which HF renders identically."""
    gemma2, gemma3 = family_folders["google-gemma-2-2b-it"], family_folders["google-gemma-3-1b-it"]
    messages = CONVERSATIONS["system_multi_turn"]
    with pytest.raises(Exception, match="System role not supported"):
        _render_hf(gemma2, messages, True)
    ours = load_tokenizer(gemma2).apply_chat_template(messages)
    assert ours == _render_hf(gemma3, messages, True)
    assert ours.startswith("<bos><start_of_turn>user\nBe kind.\n\na<end_of_turn>\n<start_of_turn>model\nb")


def test_gemma_rejects_non_alternating_roles_like_hf(family_folders):
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="alternate"):
        _render_hf(family_folders["google-gemma-2-2b-it"], messages, True)
    with pytest.raises(ValueError, match="alternate"):
        load_tokenizer(family_folders["google-gemma-2-2b-it"]).apply_chat_template(messages)


def test_template_in_tokenizer_config_json(smollm2_path, tmp_path):
    """Older folders keep the template inside tokenizer_config.json, possibly as named list."""
    template = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    for i, value in enumerate([template, [{"name": "default", "template": template}]]):
        folder = make_folder(smollm2_path, tmp_path / str(i), eos_token="<|im_end|>", chat_template=value)
        assert load_tokenizer(folder).chat_template_name == "qwen2.5"
    assert load_tokenizer(folder).apply_chat_template(CONVERSATIONS["user"]) == _render_hf(
        folder, CONVERSATIONS["user"], True)


def test_forced_family_and_callable(smollm2_path):
    messages = CONVERSATIONS["user"]
    plain = load_tokenizer(smollm2_path, chat_template="chatml").apply_chat_template(messages)
    assert plain == "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"

    def echo(msgs, add_generation_prompt):
        return "|".join(m["content"] for m in msgs) + ("?" if add_generation_prompt else "")
    tok = load_tokenizer(smollm2_path, chat_template=echo)
    assert tok.apply_chat_template(messages) == "Hello!?"
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == "Hello!"
    with pytest.raises(ValueError, match="chat_template="):
        load_tokenizer(smollm2_path, chat_template="vicuna")
    assert set(FAMILIES) >= {"chatml", "smollm2", "qwen2", "qwen2.5", "qwen3", "llama3", "gemma", "deepseek"}


@pytest.mark.parametrize("template", [
    None,  # no template at all (a base model)
    "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    # ChatML with a default system prompt we do not know: refusing beats silently dropping it
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Bob.<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}",
])
def test_unknown_template_raises_with_instructions(smollm2_path, tmp_path, template):
    tok = load_tokenizer(make_folder(smollm2_path, tmp_path / "x", template, eos_token="<|im_end|>"))
    assert tok.encode("still works") == tok.encode("still works", add_special_tokens=False)
    with pytest.raises(ValueError, match='chat_template="chatml"') as err:
        tok.apply_chat_template(CONVERSATIONS["user"])
    assert "callable" in str(err.value)


def test_bad_message_is_a_clear_error(smollm2):
    ours, _ = smollm2
    with pytest.raises(ValueError, match="message 1"):
        ours.apply_chat_template([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])


def test_detect_family_on_bundled_templates():
    for path in sorted(TEMPLATES.glob("*.jinja")):
        assert detect_family(path.read_text(encoding="utf-8")) == EXPECTED_FAMILY[path.stem], path.name
