"""JSONL readers and writers: the three item shapes, clear errors, incremental results."""
import json

import pytest

from minigrm.data import Item, append_jsonl, load_items, read_jsonl, read_results, write_jsonl

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
    assert pair == Item(1, "Q1", ["good", "bad"], [1, 0], "pair", "math-prm", {}, benchmark="RewardBench")
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
    ('{"prompt": "q", "responses": ["a"], "best": 0}', "at least two responses"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b", "subset": 3}', "'subset' must be a string"),
    ('{"prompt": "q", "responses": ["a", "b"], "correct": [1, 1]}', "both values"),
    ('{"id": "1", "prompt": "q", "chosen": "a", "rejected": "b"}', "duplicate item id '1' (first at"),
    ('{"prompt": "q\\ud800", "chosen": "a", "rejected": "b"}', "lone surrogate"),
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


def test_write_append_and_read(tmp_path):
    path = tmp_path / "results.jsonl"
    assert read_results(path) == []
    write_jsonl(path, [{"id": 1, "text": "ünïcode ’"}, {"id": 2}])
    append_jsonl(path, {"id": "x", "scores": [8, 9]})
    assert list(read_jsonl(path)) == [{"id": 1, "text": "ünïcode ’"}, {"id": 2}, {"id": "x", "scores": [8, 9]}]
    assert "ünïcode ’" in path.read_text(encoding="utf-8")  # written as text, not \u escapes
    write_jsonl(path, [{"id": 3}])  # write replaces the file
    assert list(read_jsonl(path)) == [{"id": 3}]
    assert not (tmp_path / "results.jsonl.tmp").exists()


@pytest.mark.parametrize("tail", [b'{"id": 3, "te', b'{"id": 3, "te\n', b'\xff\xfe'])
def test_a_torn_last_line_is_dropped_and_cut(tmp_path, tail, capsys):
    path = tmp_path / "judgments.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": 2}\n' + tail)
    assert read_results(path) == [{"id": 1}, {"id": 2}]
    assert "torn last line" in capsys.readouterr().err
    append_jsonl(path, {"id": 3})  # the next record starts on its own line: nothing fuses
    assert read_results(path) == [{"id": 1}, {"id": 2}, {"id": 3}]
    path.write_bytes(b'{"id": 1}\nnot json\n{"id": 2}\n')  # damage before the end is an error
    with pytest.raises(ValueError, match=r"judgments\.jsonl:2: malformed JSON"):
        read_results(path)


def test_files_folders_json_arrays_and_bad_bytes(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write_lines(tmp_path / "d" / "a.jsonl", [json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})])
    (tmp_path / "d" / "sub" / "b.json").write_text(json.dumps([{"prompt": "q", "response": "r", "label": 1}]))
    a, b = load_items(tmp_path / "d")
    assert (a.id, a.kind, b.id, b.kind) == ("a.jsonl:1", "pair", "b.json:1", "single")  # ids name their file
    assert [it.kind for it in load_items([tmp_path / "d" / "a.jsonl", tmp_path / "d" / "sub"])] == ["pair", "single"]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "\xff"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not UTF-8"):
        load_items(bad)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_items(tmp_path / "nope.jsonl")
