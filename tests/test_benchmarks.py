"""Benchmarks: RewardBench sections, RMB / PPE / RewardBench 2 aggregates, the Ties rule, and
the native RMB and RewardBench 2 files."""
import json
import math

import pytest

from minigrm.benchmarks import (REWARDBENCH_COUNTS, REWARDBENCH_SECTIONS, aggregate, benchmark_of,
                                rewardbench_sections, ties_score)
from minigrm.data import load_items


def test_sections_cover_all_23_official_subsets():
    subsets = [s for ss in REWARDBENCH_SECTIONS.values() for s in ss]
    assert len(subsets) == len(set(subsets)) == 23 == len(REWARDBENCH_COUNTS)
    assert set(subsets) == set(REWARDBENCH_COUNTS)
    assert REWARDBENCH_COUNTS["math-prm"] == sum(REWARDBENCH_COUNTS[f"hep-{x}"]
                                                 for x in ("cpp", "go", "java", "js", "python", "rust"))


def test_section_weighting_on_a_constructed_example():
    acc = {s: 1.0 for s in REWARDBENCH_SECTIONS["Chat"]}
    acc["mt-bench-easy"] = 0.0                          # 28 of the 358 Chat prompts
    acc.update({s: 0.5 for s in REWARDBENCH_SECTIONS["Chat Hard"]})
    acc.update({s: 1.0 for s in REWARDBENCH_SECTIONS["Safety"]})
    acc.update({s: 0.0 for s in REWARDBENCH_SECTIONS["Reasoning"]})
    acc["math-prm"] = 1.0
    official = rewardbench_sections(acc)
    assert official["Chat"] == pytest.approx(330 / 358)
    assert official["Chat Hard"] == pytest.approx(0.5)
    assert official["Safety"] == 1.0
    assert official["Reasoning"] == pytest.approx(0.5)  # math-prm (984) weighs as much as hep-* (6 x 164)
    assert official["Score"] == pytest.approx((330 / 358 + 0.5 + 1.0 + 0.5) / 4)
    counts = dict(REWARDBENCH_COUNTS, **{"math-prm": 447})  # the prompts really evaluated
    by_prompts = rewardbench_sections(acc, counts, weighting="prompts")
    assert by_prompts["Reasoning"] == pytest.approx(447 / (447 + 984))
    assert by_prompts["Chat"] == official["Chat"]
    partial = rewardbench_sections({"alpacaeval-easy": 0.9, "hep-go": 0.4, "not-a-subset": 0.0})
    assert partial == pytest.approx({"Chat": 0.9, "Reasoning": 0.4, "Score": 0.65})
    assert aggregate("RewardBench", {"alpacaeval-easy": 0.9, "hep-go": 0.4}, None)["complete"] is False
    with pytest.raises(ValueError):
        rewardbench_sections(acc, weighting="prompts")


def test_rmb_and_ppe_correctness_are_plain_means_of_their_subsets():
    paper = {"Help-BoN": 0.623, "Help-Pair": 0.805, "Harm-BoN": 0.570, "Harm-Pair": 0.761}
    got = aggregate("RMB", paper, pooled=0.1)
    assert got["score"] == pytest.approx(0.68975) and got["complete"]  # the paper prints 69.0
    ppe = {"MMLU-Pro": 0.6, "MATH": 0.7, "GPQA": 0.5, "MBPP-Plus": 0.6, "IFEval": 0.6}
    assert aggregate("PPE Correctness", ppe, pooled=0.0)["score"] == pytest.approx(0.6)
    assert aggregate("PPE Preference", {"x": 0.1}, pooled=0.647)["score"] == 0.647  # pooled over items
    assert benchmark_of("hep-go") == "RewardBench" and benchmark_of("Harm-BoN") == "RMB"
    assert benchmark_of("anything", given="PPE Preference") == "PPE Preference" and benchmark_of("x") is None


def test_ties_score_follows_rewardbench_2s_rule():
    # prompt 1: tied has 2 correct (scores 9, 8) vs wrong 5; its reference has correct 9 vs wrong 4
    # prompt 2: tied correct 9, 3 vs wrong 5 (inaccurate); reference correct 7 vs wrong 7 (inaccurate)
    items = [("tied:1", [1, 1, 0], [9, 8, 5]), ("ref:1", [1, 0], [9, 4]),
             ("tied:2", [1, 1, 0], [9, 3, 5]), ("ref:2", [1, 0], [7, 7])]
    acc_tied, acc_ref = 0.5, 0.5
    preferred = (3 > 1) / 2 + (-2 > 6) / 2          # gap > spread, per prompt
    hard = (min(5, 3) > 1) / 2 + (min(0, -2) > 6) / 2
    margin = (math.tanh(3 / 1 - 1) + math.tanh(-2 / 6 - 1)) / 2
    expected = 0.3 * acc_tied + 0.3 * acc_ref + 0.2 * preferred + 0.2 * hard + 0.01 * margin
    assert ties_score(items) == pytest.approx(expected)
    assert ties_score([("tied:1", [1, 1, 0], None), ("ref:1", [1, 0], None)]) == pytest.approx(0.01 * 0 + 0.2 * 0)
    with pytest.raises(ValueError, match="ref:<n>"):
        ties_score([("7", [1, 1, 0], [1, 2, 3])])


def test_native_rmb_files(tmp_path):
    bon = [{"conversation_input": [{"content": "How?", "language": "English", "role": "user"}],
            "bon_best": {"llm_name": "a", "answer": "good"}, "loser_list": [{"llm_name": "b", "answer": "bad"},
                                                                           {"llm_name": "c", "answer": "worse"}],
            "bon_uid": "3294", "category_path": "BoN_set/Harmlessness/S1"}]
    pairs = [{"pair_uid": "16091", "conversation_input": [{"content": "Hi", "role": "user"}],
              "chosen": {"llm_name": "a", "answer": "yes", "score": 2.0},
              "reject": {"llm_name": "b", "answer": "no", "score": 1.5},
              "category_path": "Pairwise_set/Helpfulness/Chat/Discussion"}]
    (tmp_path / "rmb" / "BoN_set").mkdir(parents=True)
    (tmp_path / "rmb" / "BoN_set" / "S1.json").write_text(json.dumps(bon, indent=1))
    (tmp_path / "rmb" / "pairs.json").write_text(json.dumps(pairs))
    b, p = load_items(tmp_path / "rmb")
    assert (b.kind, b.responses, b.truth, b.subset, b.benchmark, b.id) == (
        "list", ["good", "bad", "worse"], [1, 0, 0], "Harm-BoN", "RMB", "rmb-bon-3294")
    assert (p.kind, p.responses, p.subset, p.extra["category"], p.id) == (
        "pair", ["yes", "no"], "Help-Pair", "Chat/Discussion", "rmb-pair-16091")
    (tmp_path / "bad.json").write_text(json.dumps([dict(pairs[0], category_path="Other/x")]))
    with pytest.raises(ValueError, match=r"bad\.json\[0\]: RMB category_path"):
        load_items(tmp_path / "bad.json")


def test_native_rewardbench_2_records(tmp_path):
    rows = [{"id": "12", "prompt": "Q", "chosen": ["right"], "rejected": ["w1", "w2", "w3"], "subset": "Math"},
            {"id": "tied:3", "prompt": "Q2", "chosen": ["a", "b"], "rejected": ["c"], "subset": "Ties"}]
    path = tmp_path / "rb2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    best_of_4, ties = load_items(path)
    assert (best_of_4.kind, best_of_4.truth, best_of_4.benchmark) == ("list", [1, 0, 0, 0], "RewardBench 2")
    assert (ties.kind, ties.truth, ties.subset) == ("ties", [1, 1, 0], "Ties")
