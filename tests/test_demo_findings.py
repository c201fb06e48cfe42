"""findings.vote_agreement: summed-score voting against a majority of right/wrong samples."""
from minigrm.data import write_jsonl
from minigrm.demo import findings


def test_a_confident_minority_outvotes_a_right_majority(tmp_path):
    # pair a: 5 right judgments by a margin of 2, 3 wrong ones by 9 (53 vs 70): majority right, vote wrong;
    # pair b: 2 right by 9, 6 wrong by 1 (50 vs 38): majority wrong, vote right
    write_jsonl(tmp_path / "items.jsonl", [{"id": i, "prompt": "q", "chosen": "c", "rejected": "r"} for i in "ab"])
    scores = {"a": [[10, 8]] * 5 + [[1, 10]] * 3, "b": [[10, 1]] * 2 + [[5, 6]] * 6}
    write_jsonl(tmp_path / "judgments.jsonl", [{"item": i, "sample": j, "scores": s, "finish_reason": "stop"}
                                               for i, ss in scores.items() for j, s in enumerate(ss)])
    got = findings.vote_agreement(tmp_path, tmp_path / "items.jsonl", 8)
    assert got["right_counts"] == [0, 0, 1, 0, 0, 1, 0, 0, 0]
    assert (got["mean"], got["majority"], got["voting"]) == (43.8, 50.0, 50.0)
    assert (got["wins"], got["losses"]) == (1, 1)
