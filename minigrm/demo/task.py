"""The demo's synthetic reward-modeling task: judging answers to three-digit arithmetic questions.

Like nanoGPT's shakespeare_char, it is small enough for a model of a few million parameters
trained on a CPU, yet a real verifiable reward-modeling task with two criteria, as in the paper's
general prompt (correctness, and adherence to the query's instruction):

- a query is "What is 473 + 296?", "What is 812 - 359? Show the equation." or
  "What is 7 * 48? Give only the number." (three-digit + and -, one digit x two digits);
- a response states a value in one of three forms: the equation ("473 + 296 = 769"), a sentence
  ("The answer is 769.") or the bare number ("769"); values are right or subtly wrong (a lost
  carry or borrow, one digit off by one, two digits swapped, off by ten or a hundred);
- the labelled best response has the right value in the form the query asks for; a distractor
  is a wrong value, or (when the query asks for a form) the right value in another form.

Contract:
- `make_items(kind, n, seed, split)`: items in minigrm's JSONL shapes (GRM_SPEC §7): "pair"
  {"prompt","chosen","rejected","subset"}, "list" {"prompt","responses","best","subset"} (3-4
  responses, one best, 0-based), "single" {"prompt","response","label","subset"}; label 1 iff the
  response is right AND in an allowed form. Subsets "add", "sub", "mul". Deterministic per seed.
- `write_splits(out_dir, train=TRAIN, test=TEST, seed)`: train.jsonl / test.jsonl with the given
  number of items per kind; a question (a, op, b) belongs to the test split iff a stable hash of the
  triple says so (`is_test`), so no held-out question is ever trained on.
- `solve(a, op, b)`: the digit-by-digit computation, one step per digit from the right (digit +
  digit + carry in: "3+6+0=9, 7+9+0=16, 4+2+1=7" for 473 + 296; a borrow is written "13-6-0=7";
  a product step "7*8+0=56"); `work_text` writes it as the critique and the pretraining text do,
  with the operands' digits listed by place first, so that each step finds its digits by the
  place's name rather than by counting positions (which a model this small does not learn in its
  budget); `parse_response`, `form_points`.
"""
import hashlib
import random
import re
from pathlib import Path

from ..data import write_jsonl

OPS = {"+": "add", "-": "sub", "*": "mul"}
KINDS = ("pair", "list", "single")
FORMS = ("equation", "sentence", "number")
# The query's instruction (None: any form; the clearer the better) and the form it asks for.
INSTRUCTIONS = {None: None, "Show the equation.": "equation", "Give only the number.": "number"}
TEST_FRACTION = 0.2
# the full run's item counts per kind (the held-out set: ~1,000 pairs and lists for +-2 points at 95%)
TRAIN = dict(pair=2500, list=2500, single=1000)
TEST = dict(pair=500, list=500, single=300)
_QUESTION = re.compile(r"What is (\d+) ([+*-]) (\d+)\?(?: (.+))?$")
_NUMBER = re.compile(r"\d+")


def compute(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def is_test(a: int, op: str, b: int) -> bool:
    """The held-out split: a stable hash of the triple (independent of seed and Python's hash)."""
    h = int.from_bytes(hashlib.sha256(f"{a}{op}{b}".encode()).digest()[:4], "big")
    return h % 1000 < TEST_FRACTION * 1000


def sample_question(rng: random.Random, split: str | None = "train") -> tuple[int, str, int, str | None]:
    """A random (a, op, b, instruction) of the split ("train", "test", or None for either)."""
    while True:
        op = rng.choice("+-*")
        a, b = (rng.randrange(2, 10), rng.randrange(10, 100)) if op == "*" else \
            (rng.randrange(100, 1000), rng.randrange(100, 1000))
        if op == "-" and a <= b:
            a, b = b, a
        if a == b or (split is not None and is_test(a, op, b) != (split == "test")):
            continue
        return a, op, b, rng.choice(list(INSTRUCTIONS))


def question_text(a: int, op: str, b: int, instruction: str | None = None) -> str:
    return f"What is {a} {op} {b}?" + (f" {instruction}" if instruction else "")


def parse_question(question) -> tuple[int, str, int, str | None]:
    """(a, op, b, instruction) of a query (a string, or messages whose last turn holds it)."""
    if isinstance(question, list):
        question = question[-1]["content"]
    m = _QUESTION.search(question.strip())
    if not m or m.group(4) not in INSTRUCTIONS:
        raise ValueError(f"not an arithmetic question: {question!r:.80}")
    return int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)


def true_answer(question) -> int:
    a, op, b, _ = parse_question(question)
    return compute(a, op, b)


def response_text(a: int, op: str, b: int, value: int, form: str) -> str:
    if form == "equation":
        return f"{a} {op} {b} = {value}"
    return f"The answer is {value}." if form == "sentence" else str(value)


def parse_response(response: str) -> tuple[int | None, str]:
    """(the stated value: the last integer, or None; its form)."""
    found = _NUMBER.findall(response)
    form = "equation" if "=" in response else "number" if response.strip().isdigit() else "sentence"
    return (int(found[-1]) if found else None), form


def form_points(instruction: str | None, form: str) -> int:
    """The second criterion, 0..2: with an instruction, 2 if the form is the one asked for, else 0;
    without one, clarity: the equation 2, a sentence 1, the bare number 0."""
    asked = INSTRUCTIONS[instruction]
    if asked is not None:
        return 2 if form == asked else 0
    return {"equation": 2, "sentence": 1, "number": 0}[form]


def is_best_form(instruction: str | None, form: str) -> bool:
    return INSTRUCTIONS[instruction] in (None, form)


def _digits(n: int, width: int) -> list[int]:
    return [(n // 10 ** i) % 10 for i in range(width)]  # least significant first


def operand_digits(a: int, op: str, b: int) -> list[tuple[int, int]]:
    """The (x, y) digit pairs the steps work on, units first (a product: x is the 1-digit factor)."""
    if op == "*":
        return [(a, y) for y in _digits(b, len(str(b)))]
    return list(zip(_digits(a, len(str(a))), _digits(b, len(str(a)))))


def step(op: str, x: int, y: int, c: int) -> tuple[int, int, int, int]:
    """One written step (x as written, y, carry or borrow in, result): x + y + c; x * y + c;
    for subtraction the top digit is written with a borrow (x + 10) when it is needed."""
    if op == "+":
        return x, y, c, x + y + c
    if op == "*":
        return x, y, c, x * y + c
    xw = x + 10 if x - y - c < 0 else x
    return xw, y, c, xw - y - c


def carry_out(op: str, s: tuple[int, int, int, int]) -> int:
    """The carry (or borrow) a written step passes to the next digit."""
    return int(s[0] >= 10) if op == "-" else s[3] // 10


def step_text(op: str, s: tuple[int, int, int, int]) -> str:
    x, y, c, r = s
    return f"{x}*{y}+{c}={r}" if op == "*" else f"{x}{op}{y}{'+' if op == '+' else '-'}{c}={r}"


PLACES = ("ones", "tens", "hundreds", "thousands")


def work_text(a: int, op: str, b: int, steps) -> str:
    """The computation as the judge writes it: the operands, their digits by place (so each step
    finds its digits by the place's name), the steps, the answer the steps spell:
    "473 + 296: ones 3 6, tens 7 9, hundreds 4 2; ones 3+6+0=9, tens 7+9+0=16, hundreds 4+2+1=7; so 769"."""
    pairs = ", ".join(f"{p} {x} {y}" for p, (x, y) in zip(PLACES, operand_digits(a, op, b)))
    done = ", ".join(f"{p} {step_text(op, s)}" for p, s in zip(PLACES, steps))
    return f"{a} {op} {b}: {pairs}; {done}; so {steps_value(op, steps)}"


def steps_value(op: str, steps) -> int:
    """The answer the written steps spell: each step's units digit, the last step's whole result
    (subtraction: units digits only, leading zeros dropped)."""
    if op == "-":
        return int("".join(str(s[3] % 10) for s in reversed(steps)))
    value = steps[-1][3]
    for s in reversed(steps[:-1]):
        value = value * 10 + s[3] % 10
    return value


def digit_marks(x: int, v: int) -> list[bool] | None:
    """Whether each digit of x equals v's digit in the same place, left to right; None when the
    lengths differ (then x != v without a digit check)."""
    sx, sv = str(x), str(v)
    return [dx == dv for dx, dv in zip(sx, sv)] if len(sx) == len(sv) else None


def compare_text(x: int, v: int, marks: list[bool] | None) -> str:
    """The check of a value against the computed one, digit by digit, each pair side by side (a
    comparison a small model learns: two adjacent tokens, same or not):
    "759 vs 769: 7 7 same, 5 6 differs, 9 9 same". `marks` (digit_marks, or a slip of it) says
    what each pair is called."""
    if marks is None:
        return f"{x} vs {v}: lengths differ"
    pairs = ", ".join(f"{dx} {dv} {'same' if m else 'differs'}" for dx, dv, m in zip(str(x), str(v), marks))
    return f"{x} vs {v}: {pairs}"


def solve(a: int, op: str, b: int) -> list[tuple[int, int, int, int]]:
    """The computation's written steps, units first: "3+6+0=9, 7+9+0=16, 4+2+1=7" for 473 + 296,
    "13-6-0=7, 17-9-1=7, 4-2-1=1" for 473 - 296, "7*8+0=56, 7*4+5=33" for 7 * 48."""
    steps, c = [], 0
    for x, y in operand_digits(a, op, b):
        steps.append(step(op, x, y, c))
        c = carry_out(op, steps[-1])
    return steps


def lost_carries(a: int, op: str, b: int) -> int:
    """The classic mistake: every carry (borrow) forgotten; a borrow becomes |x - y|."""
    steps = [(x, y, 0, abs(x - y) if op == "-" else step(op, x, y, 0)[3]) for x, y in operand_digits(a, op, b)]
    return steps_value(op, steps)


def wrong_answers(a: int, op: str, b: int) -> list[int]:
    """Plausible mistakes (distinct, positive, never the true value), in a fixed order."""
    v = compute(a, op, b)
    s = str(v)
    cands = [lost_carries(a, op, b)]
    for i in range(len(s)):  # one digit off by one
        for d in (-1, 1):
            cands.append(int(s[:i] + str((int(s[i]) + d) % 10) + s[i + 1:]))
    for i in range(len(s) - 1):  # two adjacent digits swapped
        cands.append(int(s[:i] + s[i + 1] + s[i] + s[i + 2:]))
    cands += [v + 10, v - 10, v + 100, v - 100]
    out = []
    for c in cands:
        if c > 0 and c != v and c not in out and len(str(c)) >= len(s) - 1:
            out.append(c)
    return out


def _responses(rng, a, op, b, instruction, n_wrong: int, right_wrong_form: bool):
    """(best response, distractors): the right value in a best form, n_wrong wrong values in any
    form, plus (right_wrong_form, only with an instruction) the right value in a form not asked for."""
    v, asked = compute(a, op, b), INSTRUCTIONS[instruction]
    best = response_text(a, op, b, v, asked or rng.choice(FORMS))
    # wrong values mostly look right: in the form asked for (7 in 10), so the form alone rarely tells
    forms = [asked if asked and rng.random() < 0.7 else rng.choice(FORMS) for _ in range(n_wrong)]
    wrong = [response_text(a, op, b, w, f) for w, f in zip(rng.sample(wrong_answers(a, op, b), n_wrong), forms)]
    if right_wrong_form and asked is not None:
        wrong[0] = response_text(a, op, b, v, rng.choice([f for f in FORMS if f != asked]))
    return best, wrong


def make_item(kind: str, rng: random.Random, split: str | None = "train") -> dict:
    a, op, b, instruction = sample_question(rng, split)
    base = {"prompt": question_text(a, op, b, instruction), "subset": OPS[op]}
    if kind == "pair":
        best, (other,) = _responses(rng, a, op, b, instruction, 1, rng.random() < 0.2)
        return {**base, "chosen": best, "rejected": other}
    if kind == "list":
        best, others = _responses(rng, a, op, b, instruction, rng.choice((2, 3)), rng.random() < 0.4)
        j = rng.randrange(len(others) + 1)
        return {**base, "responses": others[:j] + [best] + others[j:], "best": j}
    if kind == "single":
        best, (other,) = _responses(rng, a, op, b, instruction, 1, rng.random() < 0.2)
        label = rng.randrange(2)
        return {**base, "response": best if label else other, "label": label}
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def make_items(kind: str, n: int, seed: int, split: str | None = "train") -> list[dict]:
    """n items of one shape ("pair", "list" or "single"), deterministic given the seed."""
    rng = random.Random(f"{kind}-{seed}-{split}")
    return [make_item(kind, rng, split) for _ in range(n)]


def mixed(counts: dict, seed: int, split: str) -> list[dict]:
    """counts {kind: n} of one split, shuffled together, with ids "<split>-<i>"."""
    items = [it for kind in KINDS for it in make_items(kind, counts.get(kind, 0), seed, split)]
    random.Random(f"mix-{seed}-{split}").shuffle(items)
    return [{"id": f"{split}-{i}", **it} for i, it in enumerate(items)]


def write_splits(out_dir, train: dict = TRAIN, test: dict = TEST, seed: int = 0) -> tuple[Path, Path]:
    """Write train.jsonl and test.jsonl ({kind: count} each; disjoint questions); return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "test.jsonl"
    for path, counts, split in zip(paths, (train, test), ("train", "test")):
        write_jsonl(path, mixed(counts, seed, split))
    return paths
