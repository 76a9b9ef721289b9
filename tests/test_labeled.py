"""Labeled formats: each shape becomes a conversation; bad rows name their file and line.

Run: .venv/bin/pytest tests/test_labeled.py
"""

import json

import pytest

from lorapipe.labeled import canonical_json, load_labeled


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "row, user, answer",
    [
        (
            {"query": "Play jazz", "data": {"intent": "PlayMusic", "slots": {"genre": "jazz"}}},
            "Play jazz",
            '{"intent": "PlayMusic", "slots": {"genre": "jazz"}}',
        ),
        ({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "Translate\n\nbonjour", "hello"),
        ({"instruction": "Say hi", "output": "hi"}, "Say hi", "hi"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "Q", "A"),
        ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "Q", "A"),
        ({"prompt": "2+2=", "completion": "4"}, "2+2=", "4"),
    ],
)
def test_each_format_is_detected(tmp_path, row, user, answer):
    (conversation,), bad = load_labeled(_write(tmp_path / "x.jsonl", [row]))
    assert bad == 0
    assert conversation == [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_json_array_and_field_remapping(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"question": "Rate this book 5", "answer": {"intent": "RateBook"}}]))
    (conversation,), _ = load_labeled(path, "auto", {"query": "question", "data": "answer"})
    assert conversation[1]["content"] == '{"intent": "RateBook"}'


def test_canonical_json_keeps_key_order_and_unicode():
    assert canonical_json({"b": 1, "a": "é"}) == '{"b": 1, "a": "é"}'


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n{"prompt": "d", "completion": "e"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: not a valid JSON object"):
        load_labeled(path)
    conversations, bad = load_labeled(path, on_bad_row="skip")
    assert len(conversations) == 2 and bad == 1


def test_unknown_format_names_the_file_and_known_formats(tmp_path):
    path = _write(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(ValueError, match=r"odd.jsonl: unknown labeled format.*query_data, instruction"):
        load_labeled(path)


def test_data_that_is_not_json_names_the_row(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"query": "ok", "data": {"v": 1}}\n{"query": "bad", "data": {"v": NaN}}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: its data field is not JSON-serialisable"):
        load_labeled(path)
