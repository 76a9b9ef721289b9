"""Span substitution (dataset.span_substitution): copies of an extraction task's training rows whose
span values are swapped in the query and the answer alike; validation rows never copied.

Run: .venv/bin/pytest tests/test_augment.py
"""

import json

from lorapipe.augment import span_substitution
from lorapipe.labeled import canonical_json


def _row(query: str, data: dict, answer: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Analyse the query."},
            {"role": "user", "content": query},
            {"role": "assistant", "content": canonical_json(data) if answer is None else answer},
        ],
        "source": "q.jsonl",
        "task": "chat",
    }


ROWS = [
    _row(
        "add gareth gates to my autumn playlist",
        {"intent": "Add", "slots": {"artist": "gareth gates", "playlist": "autumn"}},
    ),
    _row(
        "Add Ayaka Iida to the ejercicio playlist",
        {"intent": "Add", "slots": {"artist": "Ayaka Iida", "playlist": "ejercicio"}},
    ),
    _row("play some Rush", {"intent": "Play", "slots": {"artist": "Rush"}}),
    _row("book a table in Paris for 3", {"intent": "Book", "slots": {"city": "Paris", "party": "3"}}),
    _row("book a table in Rome for 12", {"intent": "Book", "slots": {"city": "Rome", "party": "12"}}),
    _row("book a table in Oslo for 7", {"intent": "Book", "slots": {"city": "Oslo", "party": "7"}}),
]


def _parts(row):
    return row["messages"][1]["content"], json.loads(row["messages"][2]["content"])


def _values(data):
    return [v for v in data["slots"].values()]


def test_copies_swap_each_span_value_in_query_and_answer_alike():
    copies, counts = span_substitution(ROWS, 2, seed=1)
    assert counts["copies"] == len(copies) > 0 and counts["skipped_not_json"] == 0
    originals = {row["messages"][1]["content"] for row in ROWS}
    pools = {}
    for row in ROWS:
        for key, value in _parts(row)[1]["slots"].items():
            pools.setdefault(key, set()).add(value)
    for copy in copies:
        query, data = _parts(copy)
        assert query not in originals
        assert data["intent"] in {"Add", "Play", "Book"}  # values not in the query stay as they were
        for key, value in data["slots"].items():
            assert value in query and value in pools[key]  # a span again, taken from the same key
        assert copy["messages"][0] == ROWS[0]["messages"][0] and copy["task"] == "chat"
        assert copy["messages"][2]["content"] == canonical_json(data)  # written in the rows' spelling
    # the sentence shape is kept: a copy of row 4 is "book a table in <city> for <party>"
    booked = [_parts(c) for c in copies if c["messages"][1]["content"].startswith("book a table in ")]
    assert booked and all(q == f"book a table in {d['slots']['city']} for {d['slots']['party']}" for q, d in booked)


def test_the_same_seed_gives_the_same_copies_and_rows_are_not_changed():
    before = json.dumps(ROWS)
    assert span_substitution(ROWS, 3, seed="x") == span_substitution(ROWS, 3, seed="x")
    assert json.dumps(ROWS) == before
    assert span_substitution(ROWS, 0, seed="x")[0] == []


def test_rows_it_cannot_copy_exactly_are_counted_not_guessed():
    rows = [
        *ROWS[:2],
        _row("add me to my list", {"slots": {"owner": "my"}}, answer="not json"),  # no JSON answer
        _row("play my song on my phone", {"intent": "Play", "slots": {"owner": "my", "artist": "song"}}),
        _row("play Rush Hour", {"intent": "Play", "slots": {"artist": "Rush", "track": "Rush Hour"}}),  # overlap
    ]
    copies, counts = span_substitution(rows, 2, seed=3)
    assert counts["skipped_not_json"] == 1 and counts["skipped_overlap"] == 1
    for copy in copies:
        query, data = _parts(copy)
        if data["intent"] == "Play":  # "my" occurs twice: left as it is, never swapped
            assert data["slots"]["owner"] == "my" and query.count("my ") == 2
    # a value of a key no other row has cannot be swapped: such a row is not copied
    alone, counts = span_substitution([_row("find Dune", {"slots": {"title": "Dune"}})], 2, seed=3)
    assert alone == [] and counts["skipped_no_span"] == 1


def test_validation_rows_are_never_copied(tmp_path, tiny_model_dir):
    from lorapipe import build_dataset
    from lorapipe.io import read_jsonl

    folder = tmp_path / "labeled"
    folder.mkdir()
    rows = [
        {
            "query": f"book a table in {city} for {n}",
            "data": {"intent": "Book", "slots": {"city": city, "party": str(n)}},
        }
        for n, city in enumerate(["Paris", "Rome", "Oslo", "Lima", "Quito", "Tunis", "Accra", "Hanoi"], 2)
    ]
    (folder / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def build(name, copies):
        stats = build_dataset(
            tmp_path / "none",
            tiny_model_dir,
            tmp_path / name,
            labeled_dir=folder,
            val_fraction=0.25,
            seed=5,
            max_seq_len=128,
            system_prompt="Analyse.",
            span_substitution=copies,
        )
        return stats, read_jsonl(tmp_path / name / "train.jsonl"), read_jsonl(tmp_path / name / "val.jsonl")

    plain_stats, plain_train, plain_val = build("plain", 0)
    stats, train, val = build("copied", 2)
    assert val == plain_val  # the same validation rows, none of them copied
    assert train[: len(plain_train)] == plain_train
    assert stats["span_substituted"] == len(train) - len(plain_train) > len(plain_train)
    assert stats["rows"] == {"train": len(train), "val": len(val)} and plain_stats["span_substituted"] == 0
    held = {r["messages"][1]["content"] for r in val}
    held_values = {v for r in val for v in json.loads(r["messages"][2]["content"])["slots"].values()}
    for row in train[len(plain_train) :]:
        query = row["messages"][1]["content"]
        assert query not in held
        # values come from training rows only: a held-out city never leaks into a copy
        assert not {v for v in json.loads(row["messages"][2]["content"])["slots"].values()} & held_values
