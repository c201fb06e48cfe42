"""JSONL readers and writers: the three item shapes, clear errors, incremental results."""
import json

import pytest

from minigrm.data import Item, append_jsonl, completed_ids, load_items, read_jsonl, write_jsonl

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"}]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_items_normalises_the_three_shapes(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        json.dumps({"prompt": "Q1", "chosen": "good", "rejected": "bad", "subset": "math-prm"}),
        "",  # blank lines are skipped but still counted
        json.dumps({"id": "rmb-7", "prompt": CHAT, "responses": ["a", "b", "c"], "best": 2, "category": "code"}),
        json.dumps({"prompt": "Q3", "response": "r", "label": 0}),
    ])
    pair, lst, single = load_items(path)
    assert pair == Item(1, "Q1", ["good", "bad"], [1, 0], "pair", "math-prm", {})
    assert lst == Item("rmb-7", CHAT, ["a", "b", "c"], [0, 0, 1], "list", None, {"category": "code"})
    assert single == Item(4, "Q3", ["r"], [0], "single")


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "q", "chosen": "a"', "malformed JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"chosen": "a", "rejected": "b"}', "missing field 'prompt'"),
    ('{"prompt": "q", "chosen": "a"}', "both 'chosen' and 'rejected'"),
    ('{"prompt": "q", "responses": ["a", "b"], "best": 2}', "'best' must be a 0-based index"),
    ('{"prompt": "q", "responses": ["a", "b"]}', "'best' must be"),
    ('{"prompt": "q", "responses": [], "best": 0}', "non-empty list"),
    ('{"prompt": "q", "response": "a", "label": 2}', "'label' must be 0 or 1"),
    ('{"prompt": "q", "response": "a", "label": true}', "'label' must be 0 or 1"),
    ('{"prompt": "q", "chosen": 1, "rejected": "b"}', "must be a string"),
    ('{"prompt": "q", "answer": "a"}', "unknown record shape"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"response": "r", "label": 1}', "last turn of the context must be the user"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    path = write_lines(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(ValueError) as err:
        load_items(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_read_jsonl_checks_required_fields(tmp_path):
    path = write_lines(tmp_path / "r.jsonl", ['{"id": 1, "x": 2}', '{"x": 3}'])
    assert list(read_jsonl(path)) == [{"id": 1, "x": 2}, {"x": 3}]
    with pytest.raises(ValueError, match=r"r\.jsonl:2: missing field\(s\) \['id'\]"):
        list(read_jsonl(path, required=("id",)))
    bad = write_lines(tmp_path / "b.jsonl", ['{"id": 1}', "not json"])
    with pytest.raises(ValueError, match=r"b\.jsonl:2: malformed JSON"):
        list(read_jsonl(bad))


def test_write_append_and_resume(tmp_path):
    path = tmp_path / "results.jsonl"
    assert completed_ids(path) == set()
    write_jsonl(path, [{"id": 1, "text": "ünïcode ’"}, {"id": 2}])
    append_jsonl(path, {"id": "x", "scores": [8, 9]})
    assert list(read_jsonl(path)) == [{"id": 1, "text": "ünïcode ’"}, {"id": 2}, {"id": "x", "scores": [8, 9]}]
    assert completed_ids(path) == {1, 2, "x"}
    assert "ünïcode ’" in path.read_text(encoding="utf-8")  # written as text, not \u escapes
    write_jsonl(path, [{"id": 3}])  # write replaces the file
    assert completed_ids(path) == {3}
    assert not (tmp_path / "results.jsonl.tmp").exists()
