"""The demo's task (task.py), its teacher program (teacher.py) and its pretraining text (corpus.py)."""
import random
import re

import pytest

from minigrm import grm
from minigrm.data import Item, load_items
from minigrm.demo import corpus, task, teacher
from minigrm.parser import parse_judgment
from minigrm.rewards import best_index, is_correct
from minigrm.voting import permute

CAREFUL = teacher.Slips(0, 0, 0, 0, 0, 0, 0, 0)


def items_of(kind, n, seed=0):
    recs = task.make_items(kind, n, seed)
    return load_items_from(recs, kind)


def load_items_from(recs, kind):
    out = []
    for i, r in enumerate(recs):
        if kind == "pair":
            out.append(Item(i, r["prompt"], [r["chosen"], r["rejected"]], [1, 0], kind, r["subset"]))
        elif kind == "list":
            out.append(Item(i, r["prompt"], r["responses"], [int(j == r["best"]) for j in range(len(r["responses"]))],
                            kind, r["subset"]))
        else:
            out.append(Item(i, r["prompt"], [r["response"]], [r["label"]], kind, r["subset"]))
    return out


@pytest.mark.parametrize("kind", task.KINDS)
def test_make_items_deterministic(kind):
    assert task.make_items(kind, 50, seed=3) == task.make_items(kind, 50, seed=3)
    assert task.make_items(kind, 50, seed=3) != task.make_items(kind, 50, seed=4)
    with pytest.raises(ValueError):
        task.make_items("triple", 1, seed=0)


def test_the_steps_compute_the_answer():
    rng = random.Random(0)
    for _ in range(3000):
        a, op, b, _ = task.sample_question(rng, None)
        assert task.steps_value(op, task.solve(a, op, b)) == task.compute(a, op, b)
    show = lambda a, op, b: ", ".join(task.step_text(op, s) for s in task.solve(a, op, b))  # noqa: E731
    assert show(473, "+", 296) == "3+6+0=9, 7+9+0=16, 4+2+1=7"
    assert show(473, "-", 296) == "13-6-0=7, 17-9-1=7, 4-2-1=1"
    assert show(7, "*", 48) == "7*8+0=56, 7*4+5=33"
    assert task.lost_carries(473, "+", 296) == 669 and task.lost_carries(473, "-", 296) == 223


def test_splits_are_held_out_and_labelled(tmp_path):
    counts = dict(pair=100, list=100, single=60)
    train_path, test_path = task.write_splits(tmp_path, counts, dict(pair=30, list=30, single=20), seed=0)
    train, test = load_items(train_path), load_items(test_path)
    assert len(train) == 260 and len(test) == 80
    for items in (train, test):
        assert {it.kind for it in items} == {"pair", "list", "single"}
        assert {it.subset for it in items} == {"add", "sub", "mul"}
        for it in items:
            a, op, b, instruction = task.parse_question(it.prompt)
            good = [task.parse_response(r)[0] == task.compute(a, op, b) and task.is_best_form(instruction,
                    task.parse_response(r)[1]) for r in it.responses]
            if it.kind == "single":
                assert good == [bool(it.truth[0])]
            else:
                assert good == [t == 1 for t in it.truth] and best_index(it.truth) >= 0
                assert len(set(it.responses)) == len(it.responses) and 2 <= len(it.responses) <= 4
    triples = lambda items: {task.parse_question(it.prompt)[:3] for it in items}  # noqa: E731
    assert not triples(train) & triples(test) and all(task.is_test(*t) for t in triples(test))
    task.write_splits(tmp_path / "again", counts, dict(pair=30, list=30, single=20), seed=0)
    assert (tmp_path / "again" / "train.jsonl").read_text() == train_path.read_text()


def test_wrong_answers_and_forms():
    v = task.compute(473, "+", 296)
    wrong = task.wrong_answers(473, "+", 296)
    assert v not in wrong and all(w > 0 for w in wrong) and {669, 759, 779, 796} <= set(wrong)
    assert task.parse_response("473 + 296 = 769") == (769, "equation")
    assert task.parse_response("The answer is 769.") == (769, "sentence")
    assert task.parse_response("769") == (769, "number") and task.parse_response("no idea")[0] is None
    assert task.form_points("Show the equation.", "equation") == 2 and task.form_points("Show the equation.", "number") == 0
    assert [task.form_points(None, f) for f in task.FORMS] == [2, 1, 0]
    assert task.parse_question("What is 7 * 48? Give only the number.") == (7, "*", 48, "Give only the number.")


def test_a_careful_teacher_is_always_right_in_the_papers_format():
    rng = random.Random(0)
    for kind in task.KINDS:
        for it in items_of(kind, 150, seed=5):
            order = grm.order(it, 0, 0)
            shown = permute(it.responses, order)
            binary = kind == "single"
            text = teacher.judgment(it.prompt, shown, rng, CAREFUL, binary=binary)
            lines = text.split("\n")
            assert [line.split(":")[0] for line in lines] == ["Specific Criteria", "Analysis", "Scores"]
            j = parse_judgment(text, len(shown), *((0, 1) if binary else (1, 10)))
            assert j.valid and [p.weight for p in j.principles] == [0.8, 0.2]
            assert is_correct(j.scores, permute(it.truth, order)), text
            assert grm.judge(it, order, text, training=binary).correct
            a, op, b, _ = task.parse_question(it.prompt)
            assert corpus.worked(a, op, b)[:-1] in lines[1]  # the critique shows the pretraining's computation
            bare = teacher.judgment(it.prompt, shown, random.Random(1), CAREFUL, binary=binary, principles=False)
            assert bare == "\n".join(lines[1:])  # "w/o principles": the same judgment, no Specific Criteria


def marked_right(text: str) -> tuple[int, set[int]]:
    """(the value the computation reached, the values of the responses the notes call right)."""
    value = int(re.search(r"; so (\d+)\.", text).group(1))
    return value, {int(x) for x in re.findall(r"Response \d+: (\d+) vs \d+: [^;]*; right", text)}


def test_the_teachers_mistakes_are_varied_and_visible():
    items = items_of("pair", 300, seed=7) + items_of("list", 300, seed=7)
    for i, it in enumerate(items):
        it.id = i
    recs = teacher.trajectories(items, seed=0, hinted_share=1.0)
    graded = [(r, grm.judge(items[int(r["item"])], r["order"], r["text"], training=True).correct) for r in recs]
    plain = [c for r, c in graded if not r["hinted"]]
    hinted = [c for r, c in graded if r["hinted"]]
    assert 0.6 < sum(plain) / len(plain) < 0.85  # rejective sampling has something to reject
    assert sum(hinted) / len(hinted) > sum(plain) / len(plain) + 0.1  # the hint helps
    per_item = [sum(c for r, c in graded[4 * i:4 * i + 3]) for i in range(len(items))]
    assert {0, 1, 2, 3} <= set(per_item)  # some items too easy (3/3), some wrong every time (0/3)
    shortcuts = [r for r, c in graded if r["hinted"] and c and marked_right(r["text"])[1] - {marked_right(r["text"])[0]}]
    assert len(shortcuts) > 10  # right by the hint, not by the computation the text shows
    # the demo's diagnostic: a disagreement always solved again changes those judgments and no other
    careful = teacher.trajectories(items, seed=0, hinted_share=1.0, slips=teacher.Slips(recheck=1.0))
    changed = [a for a, b in zip(recs, careful) if a != b]
    assert changed and all(r["hinted"] for r in changed) and len(changed) >= len(shortcuts)
    contradicted = [r for r in careful if r["hinted"] and grm.judge(items[int(r["item"])], r["order"], r["text"],
                    training=True).correct and marked_right(r["text"])[1] - {marked_right(r["text"])[0]}]
    assert len(contradicted) < len(shortcuts) / 4, (len(contradicted), len(shortcuts))  # left: miscalled digits
    wrong = [r["text"] for r, c in graded if not c]
    assert sum(task.compute(*task.parse_question(items[int(r["item"])].prompt)[:3]) != marked_right(r["text"])[0]
               for r, c in graded if not c) > len(wrong) / 2  # most errors are in the computation shown


def test_trajectory_plan():
    items = items_of("pair", 40) + items_of("single", 10)
    for i, it in enumerate(items):
        it.id = i
    recs = teacher.trajectories(items, seed=0, hinted_share=0.5)
    assert recs == teacher.trajectories(items, seed=0, hinted_share=0.5)
    per = {}
    for r in recs:
        per.setdefault(r["item"], []).append((r["sample"], r["hinted"]))
    assert all(v[:3] == [(0, False), (1, False), (2, False)] for v in per.values())
    hinted = {k for k, v in per.items() if (3, True) in v}
    assert 10 < len(hinted) < 30 and not hinted & {str(i) for i in range(40, 50)}  # singles never hinted
    only = teacher.trajectories(items, seed=0, hinted_share=1.0, non_hinted=False)
    assert {(r["sample"], r["hinted"]) for r in only} == {(3, True)} and len(only) == 40


def test_pretraining_corpus_has_no_grm_format():
    texts = corpus.pretraining_corpus(3000, seed=0)
    assert texts == corpus.pretraining_corpus(3000, seed=0) and len(set(texts)) > 2500
    for text in texts:
        for marker in ("Specific Criteria", "Analysis", "Scores", "\\boxed", "Response", ", right", ", wrong,"):
            assert marker not in text, (marker, text)
    assert corpus.worked(473, "+", 296) == ("473 + 296: ones 3 6, tens 7 9, hundreds 4 2; ones 3+6+0=9, "
                                            "tens 7+9+0=16, hundreds 4+2+1=7; so 769.")
    heldout = {task.sample_question(random.Random(i), "test")[:3] for i in range(300)}
    assert not any(f"{a} {op} {b}" in text for a, op, b in heldout for text in texts[:500])
