"""The GRM task step (grm.py) and the invariants a skeptical reviewer checks on infer_scale.py's
numbers: a judge that always ties scores ~50% on pairs at every k and seed (0% strict), and a
position-biased judge scores the same whichever position the data stores the chosen response in.

The end-to-end tests run the real infer_scale.py (orders, prompts, seeds, parsing, voting,
scoring, files) with the engine replaced by a scripted judge, so thousands of items take seconds.
"""
import json
import pytest

from minigrm import grm
from minigrm.data import Item, load_items

PAIR = Item("p1", "What is 2+2?", ["4", "5"], [1, 0], "pair")
LIST = Item("l1", "Pick one", ["a", "b", "c", "d"], [0, 0, 1, 0], "list")
SINGLE = Item("s1", "Is it?", ["yes"], [1], "single")


def test_orders_and_seeds_are_functions_of_run_seed_item_and_sample_only():
    assert grm.order(LIST, 3, 0) == grm.order(LIST, 3, 0)
    assert sorted(grm.order(LIST, 3, 0)) == [0, 1, 2, 3]
    orders = {tuple(grm.order(LIST, s, 0)) for s in range(40)}
    assert len(orders) > 10  # samples see different orders
    assert grm.order(LIST, 3, 0) != grm.order(LIST, 3, 1) or grm.order(LIST, 4, 0) != grm.order(LIST, 4, 1)
    greedy = {tuple(grm.order(Item(f"x{i}", "q", ["a", "b"], [1, 0], "pair"), grm.GREEDY, 0)) for i in range(30)}
    assert greedy == {(0, 1), (1, 0)}  # the greedy judgment is shuffled too
    assert grm.stream_seed(PAIR, 0, 0) != grm.stream_seed(PAIR, 1, 0) != grm.stream_seed(LIST, 1, 0)
    assert grm.tie_seed(PAIR, 0) == grm.tie_seed(PAIR, 0) != grm.tie_seed(PAIR, 1)
    assert 0 <= grm.coin(PAIR, 0, "hinted") < 1


def test_judge_maps_scores_back_and_applies_one_truncation_rule():
    order = [2, 0, 3, 1]  # shown: c, a, d, b
    v = grm.judge(LIST, order, "Analysis: c wins.\nScores: \\boxed{9, 3, 2, 4}")
    assert v.scores == [3, 4, 9, 2] and v.correct and v.reward == 1.0 and v.valid
    wrong = grm.judge(LIST, order, "Scores: \\boxed{9, 9, 2, 4}")  # a tie with the best is wrong (Eq. 10)
    assert wrong.correct is False and wrong.reward == -1.0
    cut = grm.judge(LIST, order, "Scores: \\boxed{9, 3, 2, 4}", finish_reason="length")
    assert not cut.valid and cut.reason == "length" and cut.reward == -1.0  # closed box, but cut short
    err = grm.judge(LIST, order, "", finish_reason="error")
    assert err.reason == "error" and not err.correct
    assert grm.judge(LIST, order, "Scores: \\boxed{9, 3}").reason == "wrong count"


def test_single_responses_use_the_training_prompt_only_in_training():
    assert "The score is 0 or 1" in grm.messages(SINGLE, [0], training=True)[0]["content"]
    assert "Each score is an integer between 1 and 10" in grm.messages(SINGLE, [0])[0]["content"]
    trained = grm.judge(SINGLE, [0], "Scores: \\boxed{1}", training=True)
    assert trained.correct and trained.reward == 1.0
    assert grm.judge(SINGLE, [0], "Scores: \\boxed{7}", training=True).reason == "out of range"
    evaluated = grm.judge(SINGLE, [0], "Scores: \\boxed{7}")
    assert evaluated.scores == [7] and evaluated.correct is None and evaluated.reward is None


def test_hint_names_the_best_as_shown_and_ties_items_cannot_be_trained():
    text = grm.messages(LIST, [2, 0, 3, 1], hint=True)[0]["content"]
    assert text.endswith("The best response is: Response 1")  # c (index 2) is shown first
    ties = Item("tied:1", "q", ["a", "b", "c"], [1, 1, 0], "ties")
    assert grm.judge(ties, [0, 1, 2], "\\boxed{9, 9, 1}").correct is None
    with pytest.raises(ValueError, match="several correct"):
        grm.check_trainable([PAIR, ties])
    with pytest.raises(ValueError, match="one best"):
        grm.messages(ties, [0, 1, 2], hint=True)


# ---------------------------------------------------------------- infer_scale with a scripted judge (conftest)

def pairs(n, chosen_first=True):
    out = []
    for i in range(n):
        good, bad = f"{i} is right", f"{i} is wrong"
        out.append({"id": f"q{i}", "prompt": f"Question {i}?", "chosen": good, "rejected": bad} if chosen_first else
                   {"id": f"q{i}", "prompt": f"Question {i}?", "responses": [bad, good], "best": 1})
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_an_always_tying_judge_scores_chance_at_every_k(scripted, tmp_path, seed):
    rows = scripted(tmp_path, pairs(400), lambda n: ", ".join(["8"] * n), seed=seed)
    assert list(rows) == ["Greedy", "Voting@1", "Voting@2", "Voting@4", "Voting@8"]
    for r in rows.values():
        assert abs(r["accuracy"]["value"] - 0.5) < 0.09, (r["setting"], r["accuracy"])  # 400 coin flips: sd 2.5%
        assert r["accuracy_strict"]["value"] == 0.0
        assert r["accuracy_rb"]["value"] == 0.5
        assert r["chance"] == 0.5


def test_a_position_biased_judge_gains_nothing_from_where_the_chosen_is_stored(scripted, tmp_path):
    first_wins = lambda n: ", ".join(["9"] + ["2"] * (n - 1))  # noqa: E731
    a = scripted(tmp_path, pairs(400, chosen_first=True), first_wins, name="first")
    b = scripted(tmp_path, pairs(400, chosen_first=False), first_wins, name="second")
    for setting in ("Greedy", "Voting@1", "Voting@8"):
        for rows in (a, b):
            assert abs(rows[setting]["accuracy"]["value"] - 0.5) < 0.09, setting
        assert abs(a[setting]["accuracy"]["value"] - b[setting]["accuracy"]["value"]) < 0.12


def test_truncated_and_invalid_judgments_are_counted(scripted, tmp_path):
    rows = scripted(tmp_path, pairs(20), lambda n: "8, nine", k_max=2)
    assert rows["Voting@2"]["invalid_rate"] == 1.0 and rows["Voting@2"]["accuracy"]["value"] == 0.0
    assert rows["Voting@2"]["accuracy_rb"]["value"] == 0.5
    records = [json.loads(line) for line in (tmp_path / "out-run" / "judgments.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in records} == {"not an integer"}
    assert {r["item"] for r in records} == {it.id for it in load_items(tmp_path / "run.jsonl")}


def test_the_judge_baseline_picks_by_index_and_votes_by_majority():
    order = [2, 0, 3, 1]  # shown: c, a, d, b
    v = grm.judge(LIST, order, "Analysis: the first.\nScores: \\boxed{1}", baseline=True)
    assert v.scores == [0, 0, 1, 0] and v.correct  # position 1 shows c, the labelled best
    assert grm.judge(LIST, order, "Scores: \\boxed{2}", baseline=True).scores == [1, 0, 0, 0]
    assert grm.judge(LIST, order, "Scores: \\boxed{5}", baseline=True).reason == "out of range"
    assert "the index of the best response" in grm.messages(LIST, order, baseline=True)[0]["content"]
    with pytest.raises(ValueError, match="picks among several"):
        grm.messages(SINGLE, [0], baseline=True)


def test_judge_baseline_end_to_end(scripted, tmp_path):
    # a judge that always picks the response shown first: chance on pairs, like any position bias
    rows = scripted(tmp_path, pairs(300) + [{"prompt": "x?", "response": "y", "label": 1}], lambda n: "1",
                    extra=["--judge-baseline"])
    for r in rows.values():
        assert r["accuracy"]["n"] == 300 and abs(r["accuracy"]["value"] - 0.5) < 0.1 and r["invalid_rate"] == 0
