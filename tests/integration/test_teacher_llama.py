"""The llama.cpp teacher for real: the bundled SmolLM2 GGUF writing pairs for one passage under the
schema's grammar, the same bytes however often and after whatever other prompt; and a base model folder
converted to GGUF once, then reused from the cache.

Run: .venv/bin/pytest tests/integration/test_teacher_llama.py   (about a minute on 2 cores)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorapipe import paths
from lorapipe.io import hash_file
from lorapipe.models import bundled_gguf
from lorapipe.params import DEFAULTS
from lorapipe.teacher import LlamaTeacher, make_teacher, pairs_schema, parse_pairs, teacher_gguf

PASSAGE = (
    "LoRA (low-rank adaptation) fine-tunes a large language model by adding small trainable low-rank "
    "matrices to its attention layers while the original weights stay frozen. Because only these matrices "
    "are trained, a LoRA adapter takes a few megabytes, and training needs far less memory than full "
    "fine-tuning."
)
OTHER = "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair."
SYSTEM = (
    "Write up to 2 question-answer pairs about the passage. Each question must be answerable from the "
    "passage alone; each answer is short and taken from the passage. Reply with JSON only."
)
# At most 2 pairs of 40 + 60 characters and the JSON around them: under 300 characters, so under 300
# tokens (a token holds at least one character): a reply can never be cut at max_tokens.
SCHEMA = pairs_schema(2, 40, 60)
MAX_TOKENS = 300


def _messages(passage: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": passage}]


def test_the_bundled_teacher_writes_bounded_pairs():
    gguf = bundled_gguf("smollm2-135m-instruct")
    teacher = make_teacher(DEFAULTS.synth, model_name="smollm2-135m-instruct", base_dir=Path("models/base"))
    assert isinstance(teacher, LlamaTeacher) and teacher.identity == f"gguf:{hash_file(gguf).hexdigest()}"
    teacher.check()
    try:
        reply = teacher.generate(_messages(PASSAGE), SCHEMA, MAX_TOKENS, 0.0, 42)
    finally:
        teacher.close()
    assert reply.finish_reason == "stop"
    pairs, problem = parse_pairs(reply)
    assert problem is None and 1 <= len(pairs) <= 2, reply.text
    assert all(0 < len(p["question"]) <= 40 and 0 < len(p["answer"]) <= 60 for p in pairs), pairs


# A request whose first reply token is a near tie ('{ "' or '{"'): with llama-cpp-python's prompt cache
# reused, the repeated request's last prompt token is evaluated alone and its logits differ enough to
# flip it; the teacher evaluates every request from an empty cache, so the replies are the same bytes.
TIE_SYSTEM = (
    "Write question-answer pairs about the passage. Each answer is short and taken from the passage. Reply in JSON."
)
TIE_PASSAGE = (
    "LoRA (low-rank adaptation) fine-tunes a large language model by adding small trainable low-rank matrices "
    "to its attention layers while the original weights stay frozen. Because only these matrices are trained, "
    "a LoRA adapter is a few megabytes and training needs far less memory than full fine-tuning."
)


def test_the_same_request_gets_the_same_reply_in_any_order_and_run():
    gguf = bundled_gguf("smollm2-135m-instruct")
    messages = [{"role": "system", "content": TIE_SYSTEM}, {"role": "user", "content": TIE_PASSAGE}]
    schema = pairs_schema(2, 120, 160)
    teacher = LlamaTeacher(gguf)
    try:
        replies = [teacher.generate(messages, schema, 6, 0.0, 42) for _ in range(2)]
        teacher.generate(_messages(OTHER), schema, 2, 0.0, 42)
        replies.append(teacher.generate(messages, schema, 6, 0.0, 42))
    finally:
        teacher.close()
    fresh = LlamaTeacher(gguf)  # another run
    try:
        replies.append(fresh.generate(messages, schema, 6, 0.0, 42))
    finally:
        fresh.close()
    assert replies[0].text.startswith("{")
    assert replies == [replies[0]] * 4


def test_a_base_folder_is_converted_once_for_the_teacher(tmp_path, monkeypatch, tiny_model_dir):
    from lorapipe import teacher as module

    params = DEFAULTS.synth.model_copy(update={"max_new_tokens": 16})
    teacher = make_teacher(params, model_name=str(tiny_model_dir), base_dir=tiny_model_dir)
    assert teacher.path.parent == paths.cache_dir() / "teacher"
    assert teacher.identity == f"gguf:{hash_file(teacher.path).hexdigest()}"
    teacher.check()
    try:
        reply = teacher.generate(_messages(OTHER), SCHEMA, 16, 0.0, 1)  # a random model: cut at 16 tokens
    finally:
        teacher.close()
    assert reply.finish_reason in ("stop", "length")
    assert parse_pairs(reply)[1] in (None, "truncated")
    monkeypatch.setattr(module, "convert_to_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert teacher_gguf(str(tiny_model_dir), tiny_model_dir) == teacher.path
