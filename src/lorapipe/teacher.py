"""The teacher that writes question–answer pairs for the synth stage (a MINIMAL stand-in: only what
DESIGN17.md specifies for Reply, the errors, pairs_schema and parse_pairs; the "teacher" helper's
module, with make_teacher and the llama.cpp and endpoint teachers, replaces this file at merge)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    text: str  # the raw completion text
    finish_reason: str  # "stop" | "length" (cut at max_tokens) | other as the backend says


class TeacherError(RuntimeError):
    """A teacher that cannot be used: raised by check(), before any work."""


class TeacherUnavailable(TeacherError):
    """The teacher went away mid-run (after retries): synth keeps what it has."""


def pairs_schema(n: int, max_question_chars: int, max_answer_chars: int) -> dict:
    def text(limit: int) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": limit}

    pair = {
        "type": "object",
        "properties": {"question": text(max_question_chars), "answer": text(max_answer_chars)},
        "required": ["question", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "minItems": 1, "maxItems": n, "items": pair}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


def parse_pairs(reply: Reply) -> tuple[list[dict], str | None]:
    if reply.finish_reason == "length":
        return [], "truncated"
    try:
        data = json.loads(reply.text)
    except json.JSONDecodeError:
        return [], "not_json"
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        return [], "not_json"
    return [
        {"question": p["question"], "answer": p["answer"]}
        for p in pairs
        if isinstance(p, dict) and isinstance(p.get("question"), str) and isinstance(p.get("answer"), str)
    ], None


def make_teacher(synth, *, model_name: str, base_dir):
    """Placeholder until the teacher helper's module lands (its make_teacher replaces this)."""
    raise TeacherError("lorapipe.teacher.make_teacher is not merged yet")
