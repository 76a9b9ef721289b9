"""Span substitution (dataset.span_substitution): copies of an extraction task's training rows whose
span values are swapped in the query and the answer alike; validation rows never copied.

Run: .venv/bin/pytest tests/test_augment.py
"""

import json

import pytest

from lorapipe.augment import rare_key_factors, span_substitution
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


def _single(query: str, data) -> dict:
    answer = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return {"messages": [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]}


def test_a_copy_puts_each_new_value_once_at_word_boundaries():
    """A new value also written elsewhere in the query (or twice in one answer) would be no span; a
    value glued to a word (``#42`` of ``ext#42``, ``cafe`` of a decomposed ``café``) is none to swap."""
    twice, counts = span_substitution(
        [_single("play music by queen", {"a": "queen"}), _single("play songs by music", {"a": "music"})], 5, 0
    )
    assert all(
        c["messages"][0]["content"].count("music") <= 1 or "music" not in c["messages"][1]["content"] for c in twice
    )
    assert counts["not_written"] > 0  # "play music by music": drawn, dropped, counted
    lists, _ = span_substitution(
        [
            _single("play jazz and rock now", {"g": ["jazz", "rock"]}),
            _single("play pop and blues now", {"g": ["pop", "blues"]}),
        ],
        20,
        0,
    )
    assert lists and all(len(set(json.loads(c["messages"][1]["content"])["g"])) == 2 for c in lists)
    for query, data in [("call ext#42 now", {"x": "#42"}), ("order cafe\u0301 please", {"x": "cafe"})]:
        glued, counts = span_substitution([_single(query, data), _single("call 17 now", {"x": "17"})], 3, 0)
        assert all(c["messages"][0]["content"] != "call 17 now" for c in glued)
        assert not any(
            c["messages"][0]["content"].startswith(query.split()[0] + " ") and "17" in c["messages"][0]["content"]
            for c in glued
        )


def test_answers_that_are_not_json_are_counted_not_raised():
    rows = [
        _single("in Oslo", '{"city": "Oslo", "s": NaN}'),
        _single("in Rome", {"city": "Rome"}),
        {"messages": [{"role": "user", "content": ["x"]}, {"role": "assistant", "content": "{}"}]},
    ]
    copies, counts = span_substitution(rows, 2, 0)
    assert copies == [] and counts["skipped_not_json"] == 2


def test_copies_never_rebuild_a_validation_row_nor_break_the_schema(tmp_path, tiny_model_dir):
    """Every combination of 3 sentence shapes and 4 cities is a row: copies of the training rows could
    rebuild the held-out ones word for word. And copies whose answers break eval.json_schema are left
    out: the schema allows intent I0 only Paris and Rome, which its real rows keep to (copies of shapes
    1 and 2 take the cities only shape 2 has)."""
    from lorapipe import build_dataset
    from lorapipe.io import read_jsonl

    folder = tmp_path / "labeled"
    folder.mkdir()
    shapes = ["book a table in {} tonight", "any free rooms in {} tomorrow", "weather in {} today"]
    cities = ["Paris", "Rome", "Oslo", "Lima"]
    rows = [
        {"query": s.format(c), "data": {"intent": f"I{i}", "city": c}}
        for i, s in enumerate(shapes)
        for c in cities
        if i or c in ("Paris", "Rome")
    ] + [{"query": f"weather in {c} today", "data": {"intent": "I2", "city": c}} for c in ("Quito", "Accra", "Hanoi")]
    (folder / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    schema = tmp_path / "task.schema.json"
    only = {
        "if": {"properties": {"intent": {"const": "I0"}}},
        "then": {"properties": {"city": {"enum": ["Paris", "Rome"]}}},
    }
    schema.write_text(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", **only}))
    stats = build_dataset(
        tmp_path / "none",
        tiny_model_dir,
        tmp_path / "d",
        labeled_dir=folder,
        val_fraction=0.3,
        seed=5,
        max_seq_len=128,
        system_prompt="Analyse.",
        span_substitution=3,
        json_schema=schema,
    )
    train, val = read_jsonl(tmp_path / "d" / "train.jsonl"), read_jsonl(tmp_path / "d" / "val.jsonl")
    held = {r["messages"][1]["content"] for r in val}
    assert held and not held & {r["messages"][1]["content"] for r in train}
    assert stats["span_substituted"] > 0
    answers = [json.loads(r["messages"][2]["content"]) for r in train]
    assert all(a["city"] in ("Paris", "Rome") for a in answers if a["intent"] == "I0")


def test_rare_key_factors_follow_the_median_key_over_the_rarest_key_of_each_answer():
    """Key paths and their rows: intent 8, slots.artist 6, slots.city 2, slots.track 1 (`slots` holds
    an object: not a key of its own) → median 4; an answer's factor is its rarest key's round(4 / rows),
    half up, at least 1, at most `most`."""
    answers = [{"intent": "Play", "slots": {"artist": f"a{i}"}} for i in range(6)] + [
        {"intent": "Book", "slots": {"city": "Oslo"}},
        {"intent": "Book", "slots": {"city": "Rome", "track": "t"}},
    ]
    assert rare_key_factors(answers, 1) == [1] * 8
    assert rare_key_factors(answers, 8) == [1] * 6 + [2, 4]  # 4/6 → 1; 4/2 → 2; 4/1 → 4
    assert rare_key_factors(answers, 3) == [1] * 6 + [2, 3]  # capped
    # half up: keys a 8, b 2, c 5, d 5 → median 5; the rows of b get 5 / 2 = 2.5 → 3, not the even 2
    halves = [{"a": 1, "b": 1}, {"a": 1, "b": 1}, {"a": 1, "c": 1}, {"a": 1, "c": 1}, {"a": 1, "c": 1}]
    halves = [*halves, {"a": 1}, {"a": 1}, {"a": 1}] + [{"c": 1, "d": 1}] * 2 + [{"d": 1}] * 3
    assert rare_key_factors(halves, 8) == [3, 3] + [1] * 11
    # a list is transparent and an object holds no key: a string, a list or an empty list is one key
    same = [{"tags": ["x", "y"]}, {"tags": []}, {"tags": "z"}, {"slots": {}}, "not an object"]
    assert rare_key_factors(same, 4) == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least 1"):
        rare_key_factors(answers, 0)


def test_rows_of_a_rare_key_get_more_copies_and_the_others_the_same():
    """Key paths and their rows: intent 10, artist 6, city 4, party 4, track 1 → median 5, so under
    rare_factor 2 the one row with `track` draws twice the copies (min(2, round(5/1))); the copies of
    rare_factor 1 are all there, unchanged and first (the further draws have a stream of their own:
    the track row comes first here, and the rows after it still get the same copies)."""
    cities = ("Paris", "Rome", "Oslo", "Lima")
    rows = [
        _row("play Too Much Rain by Kiko", {"intent": "Play", "slots": {"track": "Too Much Rain", "artist": "Kiko"}})
    ]
    rows += [
        _row(f"book a table in {c} for {n}", {"intent": "Book", "slots": {"city": c, "party": n}})
        for n, c in enumerate(cities, 2)
    ]
    rows += [
        _row(f"play some {a}", {"intent": "Play", "slots": {"artist": a}})
        for a in ("Rush", "Abba", "Muse", "Sia", "Yes")
    ]
    assert rare_key_factors([_parts(r)[1] for r in rows], 2) == [2] + [1] * 9
    plain, plain_counts = span_substitution(rows, 2, seed=4)
    more, counts = span_substitution(rows, 2, seed=4, rare_factor=2)
    assert more[: len(plain)] == plain and len(more) > len(plain)
    extra = more[len(plain) :]
    assert counts["rare_rows"] == 1 and plain_counts["rare_rows"] == 0
    assert len(extra) + counts["not_written"] - plain_counts["not_written"] == 2  # 2 copies × (2 - 1)
    assert counts["copies"] == len(more) and counts["rows"] == plain_counts["rows"]
    for copy in extra:
        query, data = _parts(copy)
        assert data["slots"]["track"] == "Too Much Rain" and query == f"play Too Much Rain by {data['slots']['artist']}"
    assert len({_parts(c)[0] for c in more}) == len(more)  # no copy twice
    with pytest.raises(ValueError, match="at least 1"):
        span_substitution(rows, 2, seed=4, rare_factor=0)


def test_rare_key_oversampling_without_span_substitution_is_refused_naming_the_fix(tmp_path):
    from lorapipe import build_dataset
    from lorapipe.params import DatasetParams

    with pytest.raises(ValueError, match="dataset.span_substitution is 0"):
        DatasetParams(rare_key_oversampling=4)
    with pytest.raises(ValueError, match="dataset.span_substitution is 0"):
        build_dataset(tmp_path / "t", tmp_path / "m", tmp_path / "d", rare_key_oversampling=4)
    assert DatasetParams(rare_key_oversampling=4, span_substitution=3).rare_key_oversampling == 4
