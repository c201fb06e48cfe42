"""The demo's RFT sampler: a teacher PROGRAM that writes GRM judgments with realistic mistakes.

The paper samples its rejective fine-tuning data from a stronger model (DeepSeek-V2.5) whose
judgments are often right and sometimes wrong, then rejects the wrong ones (GRM_SPEC §4). Here
the stronger sampler is this program: it judges the way the student must learn to, in the
paper's three-line format, and it errs the way a capable but fallible judge errs:

    Specific Criteria: 1. Correctness (Weight: 80%): the exact sum of 473 and 296. 2. Format (Weight: 20%): the equation, as asked.
    Analysis: 473 + 296: ...; so 769. Response 1: 769 vs 769: 7 7 same, 6 6 same, 9 9 same; right, equation (1 of 2). Response 2: 759 vs 769: 7 7 same, 5 6 differs, 9 9 same; wrong, sentence (2 of 2).
    Scores: \\boxed{10, 2}

- principles: the query's own criteria (its operands, and the form its instruction asks for);
- the critique *shows its check*: the digit-by-digit computation (task.solve), then each response's
  value compared with it digit by digit (task.compare_text: each pair side by side, a comparison a
  small model learns) and its form named; each entry ends with which of how many it is ("(2 of
  3)"), so whether another follows is read from the entry just written, not found again in the
  prompt each time (without it the demo's GRM stopped after 2 of 3 responses in 28% of lists);
  the scores follow from the notes (right 8, wrong 1, plus the
  form's 0-2 points from task.form_points), so every mistake is visible in the text;
- mistakes (`Slips`, drawn per judgment from its own seed): random slips (an operand digit
  misread, a step off by one, a carry dropped, a response's value misread, a digit pair miscalled, a
  form misnamed) and systematic ones: a few misremembered facts (`MISREMEMBERED`, e.g. 7*8=54)
  recalled wrong most of the time, so some items are wrong in every sample;
- hinted sampling (`hint`: the best response's shown position, GRM_SPEC §4): a judgment that
  disagrees with the hint is either solved once more (and kept, right or wrong) or *shortcut*: the notes are
  rewritten to agree with the hint whatever the computation said (the paper's observation that
  hinted trajectories sometimes shortcut the critique);
- `principles=False` writes no Specific Criteria line (the "w/o principles" ablation).

`trajectories(items, seed, ...)` returns train_rft.py --trajectories records
{"item", "sample", "hinted", "order", "text"}: N_RFT non-hinted samples per item and one hinted
sample for a `hinted_share` of the pairs and lists, with grm.py's orders (singles get the n = 1
training prompt's 0/1 judgment). The error rates are the demo's choice (open): about a third of
the non-hinted judgments are wrong, so rejective sampling has something to reject.
"""
import random
from dataclasses import dataclass

from .. import grm
from ..rewards import best_index
from ..voting import permute
from .task import (FORMS, INSTRUCTIONS, carry_out, compare_text, digit_marks, form_points, is_best_form,
                   operand_digits, parse_question, parse_response, step, steps_value, work_text)

OP_NOUNS = {"+": "sum", "-": "difference", "*": "product"}
# Misremembered facts: (op, x as written, y) -> error added to the step result, applied with
# probability Slips.blind each time the fact is used (systematic: the same items fail again).
MISREMEMBERED = {("+", 7, 8): -1, ("+", 8, 7): -1, ("+", 6, 9): 1, ("+", 9, 6): 1,
                 ("-", 13, 7): 1, ("-", 15, 8): -1, ("-", 12, 5): -1, ("-", 14, 9): 1,
                 ("*", 7, 8): -2, ("*", 8, 7): -2, ("*", 6, 9): 2, ("*", 9, 6): 2}


@dataclass(frozen=True)
class Slips:
    """The teacher's error model: probabilities per event (open choices of the demo)."""
    copy: float = 0.02     # an operand digit misread (off by one), per digit
    fact: float = 0.05     # a step's result off by one, per step
    carry: float = 0.15    # a carry or borrow dropped, per step that has one
    blind: float = 0.8     # a misremembered fact recalled wrong, per use
    read: float = 0.04     # a response's value misread (one digit off by one), per response
    compare: float = 0.05  # one digit pair miscalled (same <-> differs), per response
    form: float = 0.03     # a response's form misnamed, per response
    recheck: float = 0.5   # hinted: a disagreement is re-solved once more (else shortcut to the hint)


def _off_by_one(rng, d: int) -> int:
    return (d + rng.choice((-1, 1))) % 10


def _misread(rng, n: int) -> int:
    """n with one digit off by one (never a leading zero)."""
    s = list(str(n))
    i = rng.randrange(len(s))
    s[i] = str(_off_by_one(rng, int(s[i])))
    if s[0] == "0":
        s[0] = "1"
    return int("".join(s))


def compute_steps(a: int, op: str, b: int, rng: random.Random, slips: Slips):
    """The written steps of a fallible computation of a op b, each slip carried forward."""
    steps, c = [], 0
    for x, y in operand_digits(a, op, b):
        if c and rng.random() < slips.carry:
            c = 0  # the carry is forgotten
        s = step(op, x, y, c)
        err = MISREMEMBERED.get((op, s[0], y), 0)
        if err and rng.random() < slips.blind:
            s = (*s[:3], max(0, s[3] + err))
        elif rng.random() < slips.fact:
            s = (*s[:3], max(0, s[3] + rng.choice((-1, 1))))
        if op == "-" and s[3] > 9:
            s = (*s[:3], 9)
        steps.append(s)
        c = carry_out(op, s)
    return steps


def _read_operand(rng, n: int, slips: Slips) -> int:
    return _misread(rng, n) if rng.random() < slips.copy * len(str(n)) else n


def notes(question, shown: list[str], rng: random.Random, slips: Slips):
    """One fallible check: (a, b as read, steps, value, [(value read, digit marks, right?, form named)])."""
    a0, op, b0, _ = parse_question(question)
    a, b = _read_operand(rng, a0, slips), _read_operand(rng, b0, slips)
    if op == "-" and a <= b:
        a, b = a0, b0
    steps = compute_steps(a, op, b, rng, slips)
    value = steps_value(op, steps)
    verdicts = []
    for r in shown:
        x, form = parse_response(r)
        if x is not None and rng.random() < slips.read:
            x = _misread(rng, x)
        marks = None if x is None else digit_marks(x, value)
        if marks and rng.random() < slips.compare:  # one digit pair miscalled
            i = rng.randrange(len(marks))
            marks[i] = not marks[i]
        if rng.random() < slips.form:
            form = rng.choice([f for f in FORMS if f != form])
        verdicts.append((x, marks, bool(marks) and all(marks), form))
    return a, b, steps, value, verdicts


def shortcut(verdicts, hint: int):
    """The notes rewritten to agree with the hint whatever the digits said: the hinted response's
    digits all called the same, another's last digit called different (visible in the text)."""
    out = []
    for i, (x, marks, _, form) in enumerate(verdicts):
        if marks is not None:
            marks = [True] * len(marks) if i == hint else marks[:-1] + [False] if all(marks) else marks
        out.append((x, marks, i == hint, form))
    return out


def scores_of(instruction, verdicts, binary: bool) -> list[int]:
    if binary:
        return [int(right and is_best_form(instruction, form)) for *_, right, form in verdicts]
    return [(8 if right else 1) + form_points(instruction, form) for *_, right, form in verdicts]


def principles_line(op: str, instruction) -> str:
    asked = INSTRUCTIONS[instruction]
    second = ("2. Clarity (Weight: 20%): the equation is clearest." if asked is None else
              f"2. Format (Weight: 20%): {'the equation' if asked == 'equation' else 'only the number'}, as asked.")
    return f"Specific Criteria: 1. Correctness (Weight: 80%): the exact {OP_NOUNS[op]}. {second}"


def render(question, a, b, steps, value, verdicts, scores, binary: bool, principles: bool) -> str:
    _, op, _, instruction = parse_question(question)
    n = len(verdicts)
    said = [f"{'Response' if binary else f'Response {i}'}: "
            f"{'no number' if x is None else compare_text(x, value, marks)}; "
            f"{'right' if right else 'wrong'}, {form}{'' if binary else f' ({i} of {n})'}."
            for i, (x, marks, right, form) in enumerate(verdicts, start=1)]
    lines = [principles_line(op, instruction)] if principles else []
    lines += [f"Analysis: {work_text(a, op, b, steps)}. {' '.join(said)}",
              f"Scores: \\boxed{{{', '.join(map(str, scores))}}}"]
    return "\n".join(lines)


def judgment(question, shown: list[str], rng: random.Random, slips: Slips = Slips(), binary: bool = False,
             hint: int | None = None, principles: bool = True) -> str:
    """The teacher's judgment of the responses as shown; `binary`: the n = 1 training prompt (0/1);
    `hint`: the 0-based shown position of the labelled best (hinted sampling)."""
    instruction = parse_question(question)[3]
    a, b, steps, value, verdicts = notes(question, shown, rng, slips)
    scores = scores_of(instruction, verdicts, binary)
    if hint is not None and not all(scores[hint] > s for i, s in enumerate(scores) if i != hint):
        if rng.random() < slips.recheck:  # solve once more (and keep that attempt, right or not)
            a, b, steps, value, verdicts = notes(question, shown, rng, slips)
        else:  # shortcut: the notes agree with the hint, whatever the computation said
            verdicts = shortcut(verdicts, hint)
        scores = scores_of(instruction, verdicts, binary)
    return render(question, a, b, steps, value, verdicts, scores, binary, principles)


def trajectories(items, seed: int, n_rft: int = 3, hinted_share: float = 0.5, slips: Slips = Slips(),
                 non_hinted: bool = True, principles: bool = True) -> list[dict]:
    """train_rft.py --trajectories records for `items` (data.Item): samples 0..n_rft-1 non-hinted
    (unless non_hinted=False), sample n_rft hinted for a seeded hinted_share of pairs and lists."""
    out = []
    for it in items:
        binary = it.kind == "single"
        plan = [(j, False) for j in range(n_rft)] if non_hinted else []
        if not binary and grm.coin(it, seed, "hinted") < hinted_share:
            plan.append((n_rft, True))
        for j, hinted in plan:
            order = grm.order(it, j, seed)
            rng = random.Random(f"teacher|{seed}|{it.id}|{j}")
            hint = order.index(best_index(it.truth)) if hinted else None
            text = judgment(it.prompt, permute(it.responses, order), rng, slips, binary, hint, principles)
            out.append({"item": str(it.id), "sample": j, "hinted": hinted, "order": order, "text": text})
    return out
