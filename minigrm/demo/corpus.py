"""The demo base model's pretraining text: plain arithmetic language, never a GRM judgment.

The paper fine-tunes *pretrained base* models: they know arithmetic and how to check an answer,
but have never seen the GRM prompt or its three-line output, which rejective fine-tuning teaches
(GRM_SPEC §4). This corpus gives the demo's base that knowledge on training questions only
(`task.sample_question(split="train")`): worked digit-by-digit computations in the notation the
critique uses, questions with several answers checked one by one (the long-range copying a judge
needs: operands from the question, values from the answers), plain facts, answers in each form. It holds no
"Specific Criteria", "Analysis:", "Scores:", "Response 1", \\boxed{} or verdict line ("right,
equation"), which tests/test_demo_task.py pins.

`pretraining_corpus(n, seed)` -> n short texts, deterministic given the seed.
"""
import random

from .task import (compare_text, compute, digit_marks, question_text, response_text, sample_question, solve,
                   work_text, wrong_answers)

OP_WORDS = {"+": ("sum", "plus"), "-": ("difference", "minus"), "*": ("product", "times")}


def worked(a: int, op: str, b: int) -> str:
    """task.work_text of the right computation, e.g. "473 + 296: ones 3 6, tens 7 9, hundreds 4 2;
    ones 3+6+0=9, tens 7+9+0=16, hundreds 4+2+1=7; so 769."."""
    return work_text(a, op, b, solve(a, op, b)) + "."


def checked(rng, a: int, op: str, b: int, instruction, v: int) -> str:
    """A question, 2-4 answers, then the check of each: the long-range copying (operands from the
    question, values from the answers) that judging needs, in plain words, e.g. "Q: What is 7 * 48?
    Answers: (a) 336 (b) The answer is 346. Check: 7 * 48: ...; so 336. (a) 336 vs 336: 3 3 same,
    3 3 same, 6 6 same; correct. (b) 346 vs 336: 3 3 same, 4 3 differs, 6 6 same; not."."""
    values = [v] + rng.sample(wrong_answers(a, op, b), rng.randrange(1, 4))
    rng.shuffle(values)
    shown = [response_text(a, op, b, x, rng.choice(("equation", "sentence", "number"))) for x in values]
    names = "abcd"
    answers = " ".join(f"({names[i]}) {t}" for i, t in enumerate(shown))
    verdicts = " ".join(f"({names[i]}) {compare_text(x, v, digit_marks(x, v))}; {'correct' if x == v else 'not'}."
                        for i, x in enumerate(values))
    return f"Q: {question_text(a, op, b, instruction)} Answers: {answers} Check: {worked(a, op, b)} {verdicts}"


def pretraining_corpus(n: int, seed: int) -> list[str]:
    """n plain texts about training questions (40% worked computations, 30% checked answers)."""
    rng = random.Random(f"corpus-{seed}")
    texts = []
    for _ in range(n):
        a, op, b, instruction = sample_question(rng, "train")
        v, w = compute(a, op, b), rng.choice(wrong_answers(a, op, b))
        noun, word = OP_WORDS[op]
        form = {"Show the equation.": "equation", "Give only the number.": "number"}.get(instruction) or \
            rng.choice(("equation", "sentence", "number"))
        r = rng.random()
        if r < 0.4:
            texts.append(worked(a, op, b))
            continue
        if r < 0.7:
            texts.append(checked(rng, a, op, b, instruction, v))
            continue
        texts.append(rng.choice([
            f"{a} {op} {b} = {v}",
            f"The {noun} of {a} and {b} is {v}.",
            f"{a} {word} {b} is {v}.",
            f"Q: {question_text(a, op, b, instruction)} A: {response_text(a, op, b, v, form)}",
            f"{a} {op} {b} is {v}, not {w}.",
            f"Someone said {a} {op} {b} = {w}. That is wrong: {worked(a, op, b)}",
            f"Is {w} the {noun} of {a} and {b}? No, it is {v}.",
            f"Is {v} the {noun} of {a} and {b}? Yes.",
        ]))
    return texts
