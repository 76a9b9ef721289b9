"""Scoring of generated answers: exact match, ROUGE-L, and the JSON scores on canned answers.

Run: .venv/bin/pytest tests/test_scoring.py
"""

import json

import pytest

from helpers import FIXTURES
from lorapipe.scoring import (
    exact_match,
    flat_scores,
    is_json_task,
    parse_json,
    rouge_l,
    score_answers,
    score_json,
)

SCHEMA = json.loads((FIXTURES / "labeled" / "snips_schema.json").read_text())
GOLD = [
    '{"intent": "PlayMusic", "slots": {"artist": "Miles Davis", "music_item": "album"}}',
    '{"intent": "GetWeather", "slots": {"city": "Paris", "timeRange": "tomorrow"}}',
    '{"intent": "RateBook", "slots": {"rating_value": "3", "best_rating": "6"}}',
    '{"intent": "BookRestaurant", "slots": {"party_size_number": "2"}}',
]
ANSWERS = [
    '{"intent": "PlayMusic", "slots": {"artist": "Miles  Davis", "music_item": "album"}}',  # right (spaces)
    '```json\n{"intent": "GetWeather", "slots": {"city": "paris"}}\n```',  # fenced; one slot wrong, one missing
    '{"intent": "RateBook", "slots": {"rating_value": "3", "best_rating": "6", "object_type": "book"}}',  # extra
    "Sure! The intent is BookRestaurant.",  # not JSON
]


def test_exact_match_and_rouge_l():
    assert exact_match(" a  b\nc ", "a b c") and not exact_match("a b", "a c")
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("", "anything") == 0.0 and rouge_l("", "") == 1.0
    # LCS "the cat the mat" = 4 of 6 and 4 of 5 words
    assert rouge_l("the cat sat on the mat", "the big cat ate the mat") == pytest.approx(
        2 * (4 / 6) * (4 / 6) / (4 / 3)
    )
    assert rouge_l("a b c", "x y z") == 0.0


def test_json_parsing_allows_a_code_fence_only():
    assert parse_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json('{"a": 1}') == {"a": 1}
    assert parse_json('Answer: {"a": 1}') is None and parse_json("") is None
    assert is_json_task(GOLD) and not is_json_task(["plain text", *GOLD]) and not is_json_task([])


def test_a_shape_without_intent_or_slots_reports_neither():
    gold = ['{"name": "Ada", "year": 1843}', '{"name": "Alan", "year": 1936}']
    scores = score_answers(["{}", '{"foo": 1}'], gold)  # nothing right
    assert "intent_accuracy" not in scores["json"]  # it would be 1.0: None == None for every answer
    assert flat_scores(scores) == {"exact_match": 0.0, "rouge_l": 0.0, "json_parse_rate": 1.0, "exact_rate": 0.0}


def test_json_scores_on_canned_answers():
    scores = score_json(ANSWERS, GOLD, SCHEMA)
    assert scores["json_parse_rate"] == 0.75
    assert scores["schema_valid_rate"] == 0.75
    assert scores["intent_accuracy"] == 0.75
    # predicted slots: 2 + 1 + 3 = 6, expected 2 + 2 + 2 + 1 = 7, right 2 + 0 + 2 = 4
    assert scores["slots"] == {
        "precision": round(4 / 6, 4),
        "recall": round(4 / 7, 4),
        "f1": round(2 * (4 / 6) * (4 / 7) / (4 / 6 + 4 / 7), 4),
        "support": 7,
    }
    per_slot = scores["per_slot"]
    assert per_slot["artist"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per_slot["city"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # case matters
    assert per_slot["object_type"]["support"] == 0 and per_slot["object_type"]["precision"] == 0.0
    assert per_slot["party_size_number"]["recall"] == 0.0


def test_schema_validity_is_separate_from_parsing():
    bad_intent = '{"intent": "OrderPizza", "slots": {}}'
    scores = score_json([bad_intent, GOLD[0]], GOLD[:2], SCHEMA)
    assert scores["json_parse_rate"] == 1.0 and scores["schema_valid_rate"] == 0.5
    assert "schema_valid_rate" not in score_json([GOLD[0]], [GOLD[0]])


def test_score_answers_adds_json_scores_for_json_tasks_only():
    scores = score_answers(ANSWERS, GOLD, SCHEMA)
    assert scores["answers"] == 4 and scores["exact_match"] == 0.25 and "json" in scores  # only the first
    prose = score_answers(["Paris is in France."], ["Paris is the capital of France."])
    assert "json" not in prose and 0 < prose["rouge_l"] < 1


def test_an_answer_cut_at_the_token_limit_is_counted_apart_from_a_malformed_one():
    cut = '{"intent": "PlayMusic", "slots": {"artist": "Miles'  # the limit was reached mid-answer
    answers, gold = [GOLD[0], cut, "Sure! PlayMusic."], [GOLD[0], GOLD[0], GOLD[0]]
    scores = score_json(answers, gold, SCHEMA, truncated=[False, True, False])
    assert scores["json_parse_rate"] == round(1 / 3, 4)
    assert scores["truncated_rate"] == round(1 / 3, 4) and scores["malformed_rate"] == round(1 / 3, 4)
    # an answer that parses is neither, even when generation stopped at the limit right after it
    assert score_json([GOLD[0]], [GOLD[0]], truncated=[True])["truncated_rate"] == 0.0
    assert "truncated_rate" not in score_json(answers, gold)  # unknown without the flags
    assert score_answers(answers, gold, SCHEMA, [False, True, False])["truncated"] == round(1 / 3, 4)


def test_slot_errors_say_why_each_slot_is_wrong():
    from lorapipe.scoring import slot_errors

    query = "play the song Blue Train by John Coltrane on spotify"
    gold = {
        "intent": "PlayMusic",
        "slots": {"music_item": "song", "track": "Blue Train", "artist": "John Coltrane", "service": "spotify"},
    }
    assert slot_errors(gold, gold, query) == {}  # all right: nothing to say
    answer = {
        "intent": "PlayMusic",
        "slots": {
            "music_item": "Song",  # recased
            "track": "Blue",  # partial
            "album": "John Coltrane",  # the artist under another name
            "playlist": "jazz",  # extra, and not in the query
        },
    }  # service: missing
    assert slot_errors(answer, gold, query) == {
        "recased": 1,
        "partial": 1,
        "confused_name": 1,
        "extra": 1,
        "missing": 1,
        "invented": 1,
    }
    assert slot_errors(None, gold) == {"missing": 4}  # not an analysis: every slot missing
    assert score_json([json.dumps(gold), json.dumps(answer)], [json.dumps(gold)] * 2)["exact_rate"] == 0.5


def test_exact_rate_of_a_shape_without_intent_and_slots_needs_every_field_equal():
    from lorapipe.scoring import score_json

    expected = ['{"name": "Ada", "city": "Paris"}', '{"name": "Bo", "city": "Oslo"}']
    scores = score_json(['{"name": "WRONG", "city": "WRONG"}', '{"name": "Bo", "city": "Oslo"}'], expected)
    assert scores["exact_rate"] == 0.5


def test_the_schema_is_read_under_the_draft_it_declares():
    """A draft-04 schema (exclusiveMaximum a boolean there): the dataset stage's check and the
    evaluation's schema-valid rate agree, both under draft 4; a $ref within the file resolves."""
    from lorapipe.labeled import schema_errors

    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {
            "n": {"type": "integer", "maximum": 10, "exclusiveMaximum": True},
            "m": {"$ref": "#/definitions/m"},
        },
        "definitions": {"m": {"type": "string"}},
    }
    assert schema_errors('{"n": 5, "m": "x"}', schema) is None
    assert schema_errors('{"n": 10}', schema) is not None
    scores = score_json(['{"n": 5, "m": "x"}', '{"n": 10}', '{"m": 3}'], ['{"n": 5}'] * 3, schema)
    assert scores["schema_valid_rate"] == pytest.approx(1 / 3, abs=1e-4)  # the first: n < 10, m a string
