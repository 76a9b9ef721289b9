"""Labeled formats: each shape becomes a conversation; bad rows name their file and line.

Run: .venv/bin/pytest tests/test_labeled.py
"""

import json
from pathlib import Path

import pytest

from lorapipe.labeled import canonical_json, load_labeled, unknown_keywords

FIXTURES = Path(__file__).parent / "fixtures" / "labeled"


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


def test_an_item_of_a_json_array_that_is_no_object_is_named_by_its_position(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": "b"}, "a bare string", ["a", "list"]]))
    with pytest.raises(ValueError, match=r'x.json: item 2 of the JSON array is "a bare string", not a JSON object'):
        load_labeled(path)
    conversations, bad = load_labeled(path, on_bad_row="skip")
    assert len(conversations) == 1 and bad == 2


def test_data_written_as_json_text_in_a_string_is_read_as_the_json_it_holds(tmp_path, capsys):
    data = {"intent": "PlayMusic", "slots": {"genre": "jazz"}}
    path = _write(
        tmp_path / "x.jsonl", [{"query": "play jazz", "data": json.dumps(data)}, {"query": "q", "data": "{x"}]
    )
    (first, second), bad = load_labeled(path)
    assert first[1]["content"] == canonical_json(data) and bad == 0
    assert second[1]["content"] == '"{x"'  # a string that holds no JSON stays a string
    assert "1 row(s) hold their data as JSON text in a string" in capsys.readouterr().out


def test_a_query_data_row_without_data_is_skipped_like_any_bad_row(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{"query": "a", "data": {"k": 1}}, {"query": "b"}])
    with pytest.raises(ValueError, match=r"x.jsonl:2: no 'data' field \(format query_data\); add it"):
        load_labeled(path)
    conversations, bad = load_labeled(path, on_bad_row="skip")
    assert len(conversations) == 1 and bad == 1


def test_rows_carry_their_line_so_later_errors_name_the_line(tmp_path):
    from lorapipe.labeled import labeled_rows, row_place

    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", \n{"prompt": "d", "completion": "e"}\n')
    rows, bad = labeled_rows(path, on_bad_row="skip")  # a blank line, then a bad one skipped
    assert [number for number, _ in rows] == [1, 4] and bad == 1
    assert row_place(path, 4) == f"{path}:4" and row_place(tmp_path / "x.json", 2) == f"{tmp_path / 'x.json'}: item 2"


def test_turns_are_unicode_nfc_as_extracted_documents_are(tmp_path):
    decomposed = "Cafe\u0301 cre\u0300me"  # "Café crème" as macOS file names and some editors write it
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"query": decomposed, "data": {"dish": decomposed}}, ensure_ascii=False) + "\n")
    ((user, answer),), _ = load_labeled(path)
    assert user["content"] == "Café crème" and answer["content"] == '{"dish": "Café crème"}'


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


# --- the span constraint (eval.span_constraint) --------------------------------------------------


def test_query_spans_are_word_aligned_substrings():
    from lorapipe.labeled import query_spans

    spans = query_spans("Add herminia's tune, at 5 A.M.")
    assert spans[:3] == ["Add", "Add herminia", "Add herminia'"]
    for wanted in ("herminia", "herminia's", "5 A.M.", "tune", "A.M."):
        assert wanted in spans
    for cut in ("hermin", "erminia", ", at", "Add herminia's tune, at 5 A.M. "):  # inside a word, or from a mark
        assert cut not in spans
    assert len(spans) == len(set(spans)) and all(s in "Add herminia's tune, at 5 A.M." for s in spans)
    assert query_spans("a " * 50, max_tokens=3) == ["a", "a a", "a a a"]  # each span once
    assert "w0 w1 w2" in query_spans(" ".join(f"w{i}" for i in range(40)), max_tokens=3)
    assert "w0 w1 w2 w3" not in query_spans(" ".join(f"w{i}" for i in range(40)), max_tokens=3)
    assert query_spans("?!") == [] and query_spans("") == []


def test_reference_slot_values_are_spans_of_their_queries():
    """The constraint must not forbid the right answer: nearly every Snips slot value is a span."""
    from lorapipe.labeled import query_spans

    rows = [json.loads(line) for line in (FIXTURES / "snips_sample.jsonl").read_text().splitlines() if line.strip()]
    values = [
        (value, row["query"])
        for row in rows
        for slot in row["data"]["slots"].values()
        for value in (slot if isinstance(slot, list) else [slot])
    ]
    held = sum(value in query_spans(query) for value, query in values)
    assert len(values) > 20 and held / len(values) >= 0.99


def test_span_schema_rewrites_free_strings_only():
    from jsonschema import Draft202012Validator

    from lorapipe.labeled import span_schema

    schema = {
        "type": "object",
        "properties": {
            "intent": {"enum": ["PlayMusic", "GetWeather"]},
            "slots": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/$defs/v"}}]
                },
            },
            "code": {"type": "string", "pattern": "^[A-Z]+$"},
            "note": {"type": ["string", "null"], "maxLength": 4},
            "count": {"type": "integer"},
        },
        "$defs": {"v": {"type": "string", "description": "a value"}},
        "required": ["intent"],
    }
    original = json.dumps(schema)
    spanned = span_schema(schema, "play jazz now")
    assert json.dumps(schema) == original  # not modified
    words = ["play", "play jazz", "play jazz now", "jazz", "jazz now", "now"]
    props = spanned["properties"]
    assert props["slots"]["additionalProperties"]["anyOf"][0] == {"enum": words}
    assert spanned["$defs"]["v"] == {"description": "a value", "enum": words}
    assert props["intent"] == schema["properties"]["intent"] and props["code"] == schema["properties"]["code"]
    assert props["count"] == {"type": "integer"} and spanned["required"] == ["intent"]
    assert props["note"]["anyOf"][0] == {"enum": ["play", "jazz", "now"]}  # maxLength 4 keeps the short ones
    assert props["note"]["anyOf"][1] == {"maxLength": 4, "type": "null"}
    validator = Draft202012Validator(spanned)
    assert validator.is_valid({"intent": "PlayMusic", "slots": {"genre": "jazz", "all": ["play", "now"]}})
    assert not validator.is_valid({"intent": "PlayMusic", "slots": {"genre": "Jazz"}})  # re-cased: not a span
    assert not validator.is_valid({"intent": "PlayMusic", "slots": {"genre": "jaz"}})
    assert span_schema({"type": "string"}, "?") == {"enum": [""]}  # no words: only the empty string


def test_span_constraint_needs_a_schema(tmp_path):
    from lorapipe.generation import gguf_generate

    with pytest.raises(ValueError, match="give json_schema"):
        gguf_generate(tmp_path / "any.gguf", [[{"role": "user", "content": "hi"}]], 4, None, span_constraint=True)


def test_spans_start_at_marks_written_against_a_word_and_long_texts_are_refused():
    from lorapipe.labeled import SPAN_MAX_TEXT, query_spans

    spans = query_spans('add kenneth c "jethro" burns for $50 to #1 (500) Days')
    for wanted in ('"jethro"', '"jethro', "jethro", "$50", "#1", "(500) Days", 'kenneth c "jethro" burns'):
        assert wanted in spans
    assert '"' not in spans and "$" not in spans  # a mark alone is no value
    with pytest.raises(ValueError, match=f"at most {SPAN_MAX_TEXT} words"):
        query_spans("word " * (SPAN_MAX_TEXT + 1))


def test_span_schema_rewrites_properties_of_any_name_and_keeps_not_and_property_names():
    from lorapipe.labeled import span_schema

    schema = {
        "type": "object",
        "properties": {"enum": {"type": "string"}, "default": {"type": "string"}},
        "$defs": {"const": {"type": "string"}},
        "propertyNames": {"type": "string", "maxLength": 8},
        "not": {"type": "string"},
    }
    spanned = span_schema(schema, "play jazz")
    assert spanned["properties"]["enum"] == spanned["properties"]["default"] == spanned["$defs"]["const"]
    assert spanned["$defs"]["const"] == {"enum": ["play", "play jazz", "jazz"]}
    assert spanned["propertyNames"] == schema["propertyNames"] and spanned["not"] == schema["not"]
    with pytest.raises(ValueError, match="must be integers"):
        span_schema({"type": "string", "maxLength": "5"}, "play jazz")


def test_a_row_without_a_field_its_format_needs_is_refused_not_trained_as_none(tmp_path):
    """The format is detected from the first row; a later row with ``question`` for ``query`` is named
    (file, line, field, the fix), or skipped and counted with dataset.on_bad_row: skip."""
    from lorapipe.labeled import load_labeled

    path = tmp_path / "rows.jsonl"
    rows = [{"query": "play jazz", "data": {"intent": "PlayMusic"}}, {"question": "play rock", "data": {"a": 1}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no 'query' field \(format query_data\); .*dataset.fields"):
        load_labeled(path)
    conversations, bad = load_labeled(path, on_bad_row="skip")
    assert bad == 1 and [c[0]["content"] for c in conversations] == ["play jazz"]


def test_unknown_schema_keywords_are_found_in_subschemas_under_the_declared_draft():
    schema = {
        "type": "object",
        "properties": {
            "intent": {"enum": ["a"], "tilte": "the intent"},
            "slots": {"type": "object", "additionalProperties": {"type": "string", "maxLenght": 40}},
        },
        "anyOf": [{"required": ["intent"]}, {"minProprties": 1}],
        "$defs": {"unused": {"typ": "string"}},
        "x-ui-order": ["intent"],  # an extension keyword, spelt as such: left alone
        "$comment": "annotations are keywords too",
    }
    assert sorted(unknown_keywords(schema)) == sorted(
        [
            "unknown keyword 'tilte' in the schema at properties/intent, which JSON Schema ignores: "
            "did you mean 'title'?",
            "unknown keyword 'maxLenght' in the schema at properties/slots/additionalProperties, which JSON Schema "
            "ignores: did you mean 'maxLength'?",
            "unknown keyword 'minProprties' in the schema at anyOf/1, which JSON Schema ignores: did you mean "
            "'minProperties'?",
            "unknown keyword 'typ' in the schema at $defs/unused, which JSON Schema ignores: did you mean 'type'?",
        ]
    )
    # a keyword of a later draft is unknown to an earlier one that the schema declares
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "properties": {"a": {"const": 1}}}
    assert unknown_keywords(draft4) == [
        "unknown keyword 'const' in the schema at properties/a, which JSON Schema ignores (not a keyword of its draft)"
    ]
    assert unknown_keywords(json.loads((FIXTURES / "snips_schema.json").read_text())) == []


def test_schema_errors_names_each_error_of_an_answer_up_to_a_few():
    from lorapipe.labeled import schema_errors

    schema = {
        "type": "object",
        "properties": {"intent": {"enum": ["A", "B"]}, "slots": {"type": "object"}},
        "required": ["intent", "slots"],
        "additionalProperties": False,
    }
    assert schema_errors('{"intent": "A", "slots": {}}', schema) is None
    assert schema_errors('{"intent": "C", "slots": []}', schema) == (
        "'C' is not one of ['A', 'B'] at intent; [] is not of type 'object' at slots"
    )
    many = schema_errors('{"intent": "C", "slots": [], "x": 1, "y": 2}', schema, most=2)
    assert many.count(" at ") == 2 and many.endswith("; and 1 more")
    assert schema_errors("{", schema).startswith("not JSON")


def test_unknown_keywords_follow_the_draft_of_each_subschema_and_the_refs_of_the_file():
    draft7, draft2020 = "http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema"
    # listed by the 2020-12 metaschema for old schemas, applied by no 2020-12 validator
    assert unknown_keywords({"dependencies": {"a": ["b"]}}) == [
        "unknown keyword 'dependencies' in the schema at (top level), which JSON Schema ignores: draft 2020-12 "
        "uses dependentRequired or dependentSchemas instead"
    ]
    # a container no draft-7 keyword names, but a $ref points into: its subschemas are checked, it is not named
    used = {"$schema": draft7, "properties": {"slot": {"$ref": "#/$defs/slot"}}, "$defs": {"slot": {"maxLenght": 3}}}
    assert unknown_keywords(used) == [
        "unknown keyword 'maxLenght' in the schema at $defs/slot, which JSON Schema ignores: did you mean 'maxLength'?"
    ]
    # a subschema that declares another draft is read under it
    nested = {"$schema": draft7, "$ref": "#/definitions/new", "definitions": {"new": {"$schema": draft2020}}}
    nested["definitions"]["new"]["prefixItems"] = [{"type": "string"}]
    assert unknown_keywords(nested) == []
    # extension keywords in any case are left alone; suggestions ignore case
    assert unknown_keywords({"X-Order": 1, "TYPE": "object"}) == [
        "unknown keyword 'TYPE' in the schema at (top level), which JSON Schema ignores: did you mean 'type'?"
    ]
    # property names, enum and const values, defaults and examples are no keywords
    values = {"properties": {"requried": {"const": {"typ": 1}, "default": {"maxLenght": 2}, "examples": [{"x": 1}]}}}
    assert unknown_keywords(values) == []


def test_keywords_beside_a_ref_are_named_where_the_draft_ignores_them():
    from lorapipe.labeled import schema_validator

    draft7 = "http://json-schema.org/draft-07/schema#"
    schema = {
        "$schema": draft7,
        "definitions": {"name": {"type": "string"}},
        "properties": {"name": {"$ref": "#/definitions/name", "maxLength": 3, "description": "kept: an annotation"}},
    }
    assert schema_validator(schema).is_valid({"name": "far too long"})  # what the warning is about
    assert unknown_keywords(schema) == [
        "keyword 'maxLength' beside $ref in the schema at properties/name, which draft 7 ignores (only the $ref "
        'applies there): put both under allOf, e.g. "allOf": [{"$ref": ...}, {"maxLength": ...}]'
    ]
    # from 2019-09 on a $ref's siblings apply: nothing to say
    assert unknown_keywords({**schema, "$schema": "https://json-schema.org/draft/2020-12/schema"}) == []
    # the top-level pattern {"$ref": ..., "definitions": ...} names nothing (definitions is no assertion)
    top = {"$schema": draft7, "$ref": "#/definitions/name", "definitions": schema["definitions"]}
    assert unknown_keywords(top) == []


def test_schema_errors_come_in_the_order_of_the_answer():
    from lorapipe.labeled import schema_errors

    items = {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}}
    said = schema_errors(json.dumps([{"k": 1}] * 12), items)
    assert said.startswith("1 is not of type 'string' at 0/k; 1 is not of type 'string' at 1/k; 1 is not of type")
    assert "at 2/k; and 9 more" in said
    assert schema_errors(json.dumps([{"k": 1}] * 2), items, most=0) == "1 is not of type 'string' at 0/k; and 1 more"


def test_a_schema_llama_cpp_builds_no_grammar_from_is_named_before_the_model_loads(tmp_path):
    from lorapipe.generation import gguf_generate

    with pytest.raises(ValueError, match="no grammar can be built from this JSON Schema: .*; simplify the schema"):
        gguf_generate(tmp_path / "any.gguf", [[{"role": "user", "content": "hi"}]], 4, {"not": {"type": "string"}})


@pytest.mark.parametrize(
    "row, says",
    [
        ({"query": "", "data": {"intent": "A"}}, "its 'query' field is empty"),
        ({"query": {"text": "hi"}, "data": {"intent": "A"}}, "its 'query' field is a JSON object, not text"),
        ({"prompt": "2+2=", "completion": "  "}, "its 'completion' field is empty"),
        ({"instruction": ["a", "b"], "output": "x"}, "its 'instruction' field is a JSON array, not text"),
    ],
)
def test_an_empty_turn_or_one_that_is_no_text_is_a_bad_row(tmp_path, row, says):
    path = _write(tmp_path / "x.jsonl", [row])
    with pytest.raises(ValueError, match=rf"x.jsonl:1: {says}"):
        load_labeled(path)
    assert load_labeled(path, on_bad_row="skip") == ([], 1)
