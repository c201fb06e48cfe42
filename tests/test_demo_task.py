"""The demo's synthetic arithmetic reward-modeling task (minigrm/demo/task.py)."""
import random

import pytest

from minigrm.data import load_items
from minigrm.demo import task
from minigrm.parser import parse_judgment
from minigrm.rewards import best_index, is_correct
from minigrm.voting import permute, shuffled_order, unshuffle


@pytest.mark.parametrize("kind", task.KINDS)
def test_make_items_deterministic(kind):
    assert task.make_items(kind, 50, seed=3) == task.make_items(kind, 50, seed=3)
    assert task.make_items(kind, 50, seed=3) != task.make_items(kind, 50, seed=4)


def test_unknown_kind_and_difficulty():
    with pytest.raises(ValueError):
        task.make_items("triple", 1, seed=0)
    with pytest.raises(ValueError):
        task.make_items("pair", 1, seed=0, difficulty=7)


def test_splits_load_and_are_held_out(tmp_path):
    train_path, test_path = task.write_splits(tmp_path, n_train=300, n_test=90, seed=0)
    train, test = load_items(train_path), load_items(test_path)
    assert len(train) == 300 and len(test) == 90
    for items in (train, test):
        assert {it.kind for it in items} == {"pair", "list", "single"}
        assert {it.subset for it in items} == {"add", "sub", "mul"}
        for it in items:
            best_index(it.truth)  # a unique best (raises otherwise)
            if it.kind == "list":
                assert 3 <= len(it.responses) <= 4 and sum(it.truth) == 1
            assert len(set(it.responses)) == len(it.responses)
    triples = lambda items: {task.parse_question(it.prompt) for it in items}
    assert not triples(train) & triples(test)
    assert all(task.is_test(*t) for t in triples(test))
    assert not any(task.is_test(*t) for t in triples(train))
    assert task.write_splits(tmp_path / "again", n_train=300, n_test=90, seed=0)  # same content
    assert (tmp_path / "again" / "train.jsonl").read_text() == train_path.read_text()


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_answers_are_right_or_wrong_as_labelled(difficulty):
    for kind in task.KINDS:
        for rec in task.make_items(kind, 200, seed=1, difficulty=difficulty):
            v = task.true_answer(rec["prompt"])
            if kind == "pair":
                assert task.parse_answer(rec["chosen"]) == v != task.parse_answer(rec["rejected"])
            elif kind == "list":
                got = [task.parse_answer(r) == v for r in rec["responses"]]
                assert got == [i == rec["best"] for i in range(len(got))]
            else:
                assert (task.parse_answer(rec["response"]) == v) == bool(rec["label"])


def test_wrong_answers_are_plausible():
    assert task.true_answer("What is 47 + 38?") == 85
    assert task.true_answer("What is 83 - 29?") == 54
    assert task.true_answer("What is 9 * 7?") == 63
    wrong = task.wrong_answers(47, "+", 38)
    assert {84, 86, 75, 95, 58} <= set(wrong)  # off by 1 / 10 (75 is also the lost carry), swap 58
    assert 64 in task.wrong_answers(83, "-", 29)  # borrow lost: |3-9| = 6, 8-2 = 6
    assert 85 not in wrong and all(w >= 0 for w in wrong)
    assert task.parse_answer("47 + 38 = 85.") == 85
    assert task.parse_answer("It is 85") == 85
    assert task.parse_answer("no idea") is None


def test_teacher_judgment_is_valid_and_correct_under_shuffles():
    rng = random.Random(0)
    seen_scores = set()
    for kind in ("pair", "list"):
        for k, rec in enumerate(task.make_items(kind, 300, seed=5)):
            responses = [rec["chosen"], rec["rejected"]] if kind == "pair" else rec["responses"]
            truth = [1, 0] if kind == "pair" else [int(i == rec["best"]) for i in range(len(responses))]
            order = shuffled_order(len(responses), seed=rng.random())
            shown = permute(responses, order)
            text = task.teacher_judgment(rec["prompt"], shown)
            j = parse_judgment(text, len(shown))
            assert j.valid, (text, j.reason)
            assert is_correct(j.scores, permute(truth, order))
            assert is_correct(unshuffle(j.scores, order), truth)
            assert [p.weight for p in j.principles] == [0.8, 0.2]
            assert j.analysis.count("- Response") == len(shown)
            assert len(text.split()) < 60, text
            seen_scores.update(j.scores)
            lines = text.split("\n")
            assert len(lines) == 3 and lines[0].startswith("Specific Criteria: ")
            assert lines[1].startswith("Analysis: ") and lines[2].startswith("Scores: \\boxed{")
    assert {1, 2, 3, 8, 9, 10} <= seen_scores and not seen_scores & {4, 5, 6, 7}


def test_teacher_single_response_formats():
    for rec in task.make_items("single", 200, seed=2):
        one = parse_judgment(task.teacher_judgment(rec["prompt"], [rec["response"]]), 1)
        assert one.valid and (one.scores[0] >= 8) == bool(rec["label"])
        text = task.teacher_judgment_binary(rec["prompt"], rec["response"])
        binary = parse_judgment(text, 1, lo=0, hi=1)
        assert binary.valid and is_correct(binary.scores, [rec["label"]])
        assert text.endswith("\\boxed{1}" if rec["label"] else "\\boxed{0}")
    assert task.teacher_judgment_binary("What is 2 + 3?", "no idea").endswith("\\boxed{0}")


def test_pretraining_corpus():
    corpus = task.pretraining_corpus(2000, seed=0)
    assert corpus == task.pretraining_corpus(2000, seed=0) and len(corpus) == 2000
    assert len(set(corpus)) > 1000
    for text in corpus:
        assert "\\boxed" not in text and "Specific Criteria" not in text and "Scores:" not in text
        assert "Analysis" not in text
    test_triples = {t for t in (task.sample_triple(random.Random(i), split="test") for i in range(200))}
    numbers = lambda t: f"{t[0]} {t[1]} {t[2]} ="
    assert not any(numbers(t) in text for t in test_triples for text in corpus[:300])
