"""The demo's synthetic reward-modeling task: judging answers to small arithmetic questions.

Like nanoGPT's shakespeare_char, it is small enough for a few-million-parameter model trained on
a CPU, yet a real verifiable task: a query is "What is 47 + 38?", responses are short answers in
a few phrasings ("47 + 38 = 85.", "The answer is 85.", "It is 85"), right or *subtly* wrong
(off by 1 or 10, two digits swapped, a lost carry or borrow, one operand off by one in a
product), so a judge must actually check the arithmetic.

- `make_items(kind, n, seed, difficulty=2, split="train")`: items in minigrm's JSONL shapes
  (GRM_SPEC §7): kind "pair" {"prompt","chosen","rejected","subset"}, "list" {"prompt",
  "responses", "best"} (3-4 responses, exactly one correct, best 0-based), "single" {"prompt",
  "response", "label"}. Subsets are "add", "sub", "mul". Deterministic given the seed.
- `write_splits(out_dir, n_train, n_test, seed=0, difficulty=2)`: train.jsonl and test.jsonl,
  each a mix of the three shapes. Held out: a question (a, op, b) belongs to the test split iff
  a stable hash of the triple says so (`is_test`), so no test question is ever seen in training.
- `teacher_judgment(question, responses)`: the paper's three-line output (Specific Criteria /
  Analysis / Scores: \\boxed{...}); correct answers score 8-10 and wrong ones 1-3, plus a clarity
  bonus by phrasing (equation 2, full sentence 1, terse 0). `teacher_judgment_binary` is the
  same for `prompts.single_response_prompt`, ending in \\boxed{1} or \\boxed{0}.
- `pretraining_corpus(n, seed, difficulty=2)`: plain texts (facts, Q/A, short critiques) on
  training questions only, without the GRM template or the judgment format, which the base
  model learns only in rejective fine-tuning, as in the paper.

Difficulty (open): 1 = one-digit operands; 2 = two-digit + and -, one-digit x up-to-two-digit *;
3 = three-digit + and -, one-digit x up-to-three-digit *. Subtraction keeps a > b (no negatives).
"""
import hashlib
import random
import re
from pathlib import Path

from ..data import write_jsonl

OPS = {"+": "add", "-": "sub", "*": "mul"}
OP_WORDS = {"+": ("sum", "plus"), "-": ("difference", "minus"), "*": ("product", "times")}
TEST_FRACTION = 0.2
KINDS = ("pair", "list", "single")
# Response phrasings and their clarity (0..2), which sets the score within a band.
PHRASINGS = [("{a} {op} {b} = {x}.", 2), ("{a} {op} {b} = {x}", 2), ("The answer is {x}.", 1),
             ("{x}.", 1), ("It is {x}", 0), ("{x}", 0)]
CLARITY_NOTES = {2: "shown", 1: "plain", 0: "terse"}  # the equation shown / a sentence / bare
_QUESTION = re.compile(r"What is (\d+) ([+*-]) (\d+)\?")
_NUMBER = re.compile(r"\d+")


def _ranges(op: str, difficulty: int) -> tuple[range, range]:
    if difficulty not in (1, 2, 3):
        raise ValueError(f"difficulty must be 1, 2 or 3, got {difficulty!r}")
    if op == "*":
        return range(2, 10), [range(2, 10), range(2, 100), range(2, 1000)][difficulty - 1]
    r = [range(1, 10), range(10, 100), range(100, 1000)][difficulty - 1]
    return r, r


def compute(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def is_test(a: int, op: str, b: int) -> bool:
    """The held-out split: a stable hash of the triple (independent of seed and Python's hash)."""
    h = int.from_bytes(hashlib.sha256(f"{a}{op}{b}".encode()).digest()[:4], "big")
    return h % 1000 < TEST_FRACTION * 1000


def question_text(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}?"


def sample_triple(rng: random.Random, difficulty: int = 2, split: str | None = "train") -> tuple[int, str, int]:
    """A random (a, op, b) of the split ("train", "test", or None for either)."""
    while True:
        op = rng.choice("+-*")
        ra, rb = _ranges(op, difficulty)
        a, b = rng.choice(ra), rng.choice(rb)
        if op == "-" and a <= b:
            continue
        if split is None or is_test(a, op, b) == (split == "test"):
            return a, op, b


def parse_question(question) -> tuple[int, str, int]:
    """(a, op, b) of "What is a op b?" (a string, or messages whose last turn holds it)."""
    if isinstance(question, list):
        question = question[-1]["content"]
    m = _QUESTION.search(question)
    if not m:
        raise ValueError(f"not an arithmetic question: {question!r:.80}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def true_answer(question) -> int:
    return compute(*parse_question(question))


def parse_answer(response: str) -> int | None:
    """The response's answer: its last integer (None when it has none)."""
    found = _NUMBER.findall(response)
    return int(found[-1]) if found else None


def clarity(response: str) -> int:
    """2 when the response writes the equation, 1 for a sentence ending in '.', else 0."""
    return 2 if "=" in response else 1 if response.rstrip().endswith(".") else 0


def wrong_answers(a: int, op: str, b: int) -> list[int]:
    """Plausible mistakes (distinct, non-negative, never the true value), in a fixed order."""
    v = compute(a, op, b)
    cands = [v + 1, v - 1, v + 10, v - 10]
    s = str(v)
    for i in range(len(s) - 1):  # two adjacent digits swapped
        t = s[:i] + s[i + 1] + s[i] + s[i + 2:]
        if t[0] != "0":
            cands.append(int(t))
    if op in "+-":  # carry / borrow lost: digit-wise without carrying
        da, db = str(a)[::-1], str(b)[::-1]
        digits = []
        for i in range(max(len(da), len(db))):
            x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
            digits.append((x + y) % 10 if op == "+" else abs(x - y))
        cands.append(int("".join(map(str, digits[::-1]))))
    else:  # one operand off by one
        cands += [a * (b + 1), a * (b - 1), (a + 1) * b, (a - 1) * b]
    out = []
    for c in cands:
        if c >= 0 and c != v and c not in out:
            out.append(c)
    return out


def response_text(a: int, op: str, b: int, x: int, rng: random.Random) -> str:
    template, _ = rng.choice(PHRASINGS)
    return template.format(a=a, op=op, b=b, x=x)


def _responses(rng, a, op, b, n_wrong):
    v = compute(a, op, b)
    wrong = rng.sample(wrong_answers(a, op, b), n_wrong)
    return response_text(a, op, b, v, rng), [response_text(a, op, b, w, rng) for w in wrong]


def make_item(kind: str, rng: random.Random, difficulty: int = 2, split: str | None = "train") -> dict:
    a, op, b = sample_triple(rng, difficulty, split)
    base = {"prompt": question_text(a, op, b)}
    if kind == "pair":
        right, (wrong,) = _responses(rng, a, op, b, 1)
        return {**base, "chosen": right, "rejected": wrong, "subset": OPS[op]}
    if kind == "list":
        right, wrong = _responses(rng, a, op, b, rng.choice((2, 3)))
        best = rng.randrange(len(wrong) + 1)
        return {**base, "responses": wrong[:best] + [right] + wrong[best:], "best": best, "subset": OPS[op]}
    if kind == "single":
        right, (wrong,) = _responses(rng, a, op, b, 1)
        label = rng.randrange(2)
        return {**base, "response": right if label else wrong, "label": label, "subset": OPS[op]}
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def make_items(kind: str, n: int, seed: int, difficulty: int = 2, split: str | None = "train") -> list[dict]:
    """n items of one shape ("pair", "list" or "single"), deterministic given the seed."""
    rng = random.Random(f"{kind}-{seed}-{difficulty}-{split}")
    return [make_item(kind, rng, difficulty, split) for _ in range(n)]


def _mixed(n: int, seed: int, difficulty: int, split: str) -> list[dict]:
    counts = [n // 3 + (i < n % 3) for i in range(3)]
    items = [it for kind, k in zip(KINDS, counts) for it in make_items(kind, k, seed, difficulty, split)]
    random.Random(f"mix-{seed}-{split}").shuffle(items)
    return [{"id": f"{split}-{i}", **it} for i, it in enumerate(items)]


def write_splits(out_dir, n_train: int = 3000, n_test: int = 300, seed: int = 0,
                 difficulty: int = 2) -> tuple[Path, Path]:
    """Write train.jsonl and test.jsonl (mixes of all shapes; disjoint questions); return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "train.jsonl", out / "test.jsonl"
    write_jsonl(train, _mixed(n_train, seed, difficulty, "train"))
    write_jsonl(test, _mixed(n_test, seed, difficulty, "test"))
    return train, test


def _criteria_line(op: str) -> str:
    return (f"Specific Criteria: 1. Correctness (Weight: 80%): the answer is the exact "
            f"{OP_WORDS[op][0]}. 2. Clarity (Weight: 20%): stated plainly.")


def _verdict(response: str, v: int) -> tuple[str, int]:
    """(critique of one response, its score): correct 8-10, wrong 1-3, by clarity."""
    x, c = parse_answer(response), clarity(response)
    if x is None:
        return "gives no number, wrong", 1
    ok = x == v
    return f"says {x}, {'correct' if ok else 'wrong'}, {CLARITY_NOTES[c]}", (8 if ok else 1) + c


def teacher_judgment(question, responses: list[str]) -> str:
    """The reference judgment for the GRM prompt, scores in the order the responses are shown."""
    a, op, b = parse_question(question)
    v = compute(a, op, b)
    verdicts = [_verdict(r, v) for r in responses]
    analysis = " ".join(f"- Response {i}: {text}." for i, (text, _) in enumerate(verdicts, start=1))
    scores = ", ".join(str(s) for _, s in verdicts)
    return (f"{_criteria_line(op)}\nAnalysis: {a} {op} {b} = {v}. {analysis}\n"
            f"Scores: \\boxed{{{scores}}}")


def teacher_judgment_binary(question, response: str) -> str:
    """The reference judgment for `prompts.single_response_prompt`: \\boxed{1} iff correct."""
    a, op, b = parse_question(question)
    v = compute(a, op, b)
    x = parse_answer(response)
    ok = x == v
    said = "gives no number" if x is None else f"says {x}"
    return (f"{_criteria_line(op)}\nAnalysis: {a} {op} {b} = {v}. The response {said}, "
            f"{'correct' if ok else 'wrong'}.\nScores: \\boxed{{{int(ok)}}}")


def pretraining_corpus(n: int, seed: int, difficulty: int = 2) -> list[str]:
    """n plain texts about training questions only (facts, Q/A, critiques); no GRM format."""
    rng = random.Random(f"corpus-{seed}-{difficulty}")
    texts = []
    for _ in range(n):
        a, op, b = sample_triple(rng, difficulty, "train")
        v = compute(a, op, b)
        w = rng.choice(wrong_answers(a, op, b))
        word = OP_WORDS[op][1]
        texts.append(rng.choice([
            f"{a} {op} {b} = {v}",
            f"Q: What is {a} {op} {b}? A: {v}",
            f"{a} {word} {b} is {v}.",
            f"The {OP_WORDS[op][0]} of {a} and {b} is {v}.",
            f"{a} {op} {b} = {v}, so {w} is wrong.",
            f"{a} {op} {b} = {v}, so {v} is correct.",
            f"Q: What is {a} {op} {b}? A: {response_text(a, op, b, v, rng)}",
            f"Someone said {a} {op} {b} = {w}, but {a} {op} {b} = {v}.",
        ]))
    return texts
