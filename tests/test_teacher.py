"""The synth stage's teachers: reply parsing, the pairs schema, the OpenAI-compatible endpoint teacher
against a fake server on 127.0.0.1 (tests/fake_teacher.py), how make_teacher chooses a backend, and the
cached conversion of a base model for the llama.cpp teacher. The real llama.cpp runs are in
tests/integration/test_teacher_llama.py.

Run: .venv/bin/pytest tests/test_teacher.py
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fake_teacher import PROSE, UNGROUNDED_ANSWER, FakeTeacher, fake_pairs

from lorapipe import paths
from lorapipe.models import bundled_gguf
from lorapipe.params import DEFAULTS
from lorapipe.teacher import (
    EndpointTeacher,
    LlamaTeacher,
    Reply,
    TeacherError,
    Teacher,
    TeacherRequestError,
    TeacherUnavailable,
    make_teacher,
    pairs_schema,
    parse_pairs,
    teacher_gguf,
)

PASSAGE = (
    "LoRA adds small low-rank matrices to a frozen model. Only those matrices are trained, so an adapter "
    "takes a few megabytes.\n\nThe merged model answers without the adapter."
)
SCHEMA = pairs_schema(2, 80, 120)
SECRET = "sk-test-0123456789abcdef"


def _messages(passage: str = PASSAGE) -> list[dict]:
    return [{"role": "system", "content": "Write question-answer pairs as JSON."}, {"role": "user", "content": passage}]


def _endpoint(server: FakeTeacher, model: str = "fake-teacher", **knobs) -> EndpointTeacher:
    return EndpointTeacher(server.url, model, max_retries=knobs.pop("max_retries", 0), **knobs)


def _synth(**update):
    return DEFAULTS.synth.model_copy(update=update)


# --- parse_pairs and pairs_schema ---


@pytest.mark.parametrize(
    "text",
    [
        '{"pairs": [{"question": "What is LoRA?", "answer": "Low-rank adaptation."}]}',
        '```json\n{"pairs": [{"question": " What is LoRA? ", "answer": "Low-rank adaptation."}]}\n```',
        'Here you are: [{"question": "What is LoRA?", "answer": "Low-rank adaptation.", "note": 1}] Done.',
        '{"question": "What is LoRA?", "answer": "Low-rank adaptation."}',
        'See [1] and {2}: {"qa": [{"question": "What is LoRA?", "answer": "Low-rank adaptation."}]}',
    ],
)
def test_parse_pairs_reads_the_pairs_of_a_reply(text):
    assert parse_pairs(Reply(text, "stop")) == ([{"question": "What is LoRA?", "answer": "Low-rank adaptation."}], None)


def test_parse_pairs_keeps_order_skips_broken_items_and_reads_numbers():
    text = json.dumps(
        {
            "pairs": [
                {"question": "Year?", "answer": 2021},
                {"question": "No answer"},
                "x",
                {"question": "B", "answer": "b"},
            ]
        }
    )
    assert parse_pairs(Reply(text, "stop")) == (
        [{"question": "Year?", "answer": "2021"}, {"question": "B", "answer": "b"}],
        None,
    )


def test_a_reply_cut_at_the_token_limit_is_truncated_and_keeps_only_its_whole_pairs():
    one, two = {"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."}
    whole = json.dumps({"pairs": [one, two]})
    assert parse_pairs(Reply(whole[:25], "length")) == ([], "truncated")  # cut inside the first pair
    cut_in_second = whole[: whole.index("A two") + 3]
    assert parse_pairs(Reply(cut_in_second, "length")) == ([one], "truncated")
    assert parse_pairs(Reply(whole[: whole.index("}") + 1], "length")) == ([one], "truncated")
    assert parse_pairs(Reply(whole, "length")) == ([one, two], "truncated")  # cut right at the end: all whole
    assert parse_pairs(Reply("Sure, here", "length")) == ([], "truncated")


@pytest.mark.parametrize(
    "text",
    [
        "",
        PROSE,
        '{"pairs": [{"question": "Q?", "answer": "A',  # cut, though the backend said stop
        '{"pairs": "none"}',
        '{"answers": ["A."]}',
        '[{"q": "Q?", "a": "A."}]',
        '{"pairs": [{"question": true, "answer": "A."}]}',
    ],
)
def test_parse_pairs_counts_text_without_pairs_as_not_json(text):
    assert parse_pairs(Reply(text, "stop")) == ([], "not_json")


def test_pairs_schema_bounds_items_and_lengths():
    schema = pairs_schema(3, 120, 240)
    pairs = schema["properties"]["pairs"]
    assert (pairs["minItems"], pairs["maxItems"]) == (1, 3)
    fields = pairs["items"]["properties"]
    assert fields["question"] == {"type": "string", "minLength": 1, "maxLength": 120}
    assert fields["answer"] == {"type": "string", "minLength": 1, "maxLength": 240}
    assert pairs["items"]["required"] == ["question", "answer"]
    assert schema["required"] == ["pairs"]
    assert schema["additionalProperties"] is False and pairs["items"]["additionalProperties"] is False


def test_the_llama_grammar_of_the_schema_bounds_items_and_lengths():
    """llama.cpp's converter turns maxItems and maxLength into bounded repetitions (nested optionals)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    rules = dict(line.split(" ::= ", 1) for line in json_schema_to_gbnf(json.dumps(pairs_schema(3, 4, 5))).splitlines())
    assert rules["pairs"].count("pairs-item") == 3 and "*" not in rules["pairs"]
    assert rules["pairs-item-question"].count("char") == 4
    assert rules["pairs-item-answer"].count("char") == 5 and "*" not in rules["pairs-item-answer"]


# --- the fake server itself ---


def test_fake_pairs_are_grounded_and_follow_the_schema():
    pairs = fake_pairs(PASSAGE, pairs_schema(2, 30, 40))
    assert len(pairs) == 2
    assert pairs[0]["question"] == "What does the passage say about LoRA?"[:30]
    assert pairs[0]["answer"] == "LoRA adds small low-rank matrices to a frozen model."[:40]
    assert all(len(p["answer"]) <= 40 and p["answer"] in " ".join(PASSAGE.split()) for p in pairs)
    assert fake_pairs(PASSAGE + " UNGROUNDED", SCHEMA, "UNGROUNDED")[0]["answer"] == UNGROUNDED_ANSWER


# --- the endpoint teacher ---


def test_endpoint_teacher_checks_and_writes_pairs_from_the_passage():
    with FakeTeacher(["qwen2.5"]) as server:
        teacher = _endpoint(server, "qwen2.5")
        teacher.check()
        reply = teacher.generate(_messages(), SCHEMA, 160, 0.0, 7)
        teacher.close()
    assert teacher.identity == f"endpoint:{server.url}|qwen2.5"
    assert teacher.description == f"qwen2.5 at {server.url}"
    assert reply.finish_reason == "stop"
    pairs, problem = parse_pairs(reply)
    assert problem is None and pairs == fake_pairs(PASSAGE, SCHEMA)
    body = server.completions[0]["body"]
    assert body["response_format"]["json_schema"] == {"name": "qa_pairs", "schema": SCHEMA, "strict": True}
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == ("qwen2.5", 160, 0.0, 7)
    assert body["messages"] == _messages()


def test_a_fake_started_again_on_its_port_has_the_same_url():
    with FakeTeacher() as first:
        pass
    with FakeTeacher(port=first.port) as again:
        _endpoint(again).check()
    assert again.url == first.url


def test_an_ollama_model_listed_with_its_tag_is_found_by_its_bare_name():
    with FakeTeacher(["qwen2.5:latest"]) as server:
        _endpoint(server, "qwen2.5").check()


def test_an_unreachable_endpoint_is_named_before_any_request():
    with FakeTeacher() as server:
        pass  # stopped: its port now refuses connections
    teacher = make_teacher(_synth(base_url=server.url, model="fake-teacher"), model_name="x", base_dir=Path("."))
    with pytest.raises(TeacherError) as caught:
        teacher.check()
    assert server.url in str(caught.value)
    assert "start the server or fix synth.base_url" in str(caught.value)
    assert not isinstance(caught.value, TeacherUnavailable)
    assert server.requests == []


def test_an_unknown_model_is_named_with_the_served_ones():
    with FakeTeacher(["llama3.2", "qwen2.5"]) as server:
        with pytest.raises(TeacherError) as caught:
            _endpoint(server, "mistral").check()
    message = str(caught.value)
    assert "synth.model 'mistral' is not served at " + server.url in message
    assert "it serves: llama3.2, qwen2.5" in message
    assert server.completions == []


def test_a_base_url_without_the_api_root_says_so():
    with FakeTeacher() as server:
        with pytest.raises(TeacherError, match="/v1"):
            EndpointTeacher(server.url.removesuffix("/v1"), "fake-teacher", max_retries=0).check()


@pytest.mark.parametrize("value", [None, "", "  "])
def test_a_key_variable_named_but_unset_is_named(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("LORAPIPE_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("LORAPIPE_TEST_KEY", value)
    params = _synth(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="LORAPIPE_TEST_KEY")
    with pytest.raises(TeacherError, match="synth.api_key_env names LORAPIPE_TEST_KEY, which is not set: export it"):
        make_teacher(params, model_name="x", base_dir=Path("."))


def test_the_key_is_sent_as_bearer_and_never_shown(monkeypatch, capsys):
    monkeypatch.setenv("LORAPIPE_TEST_KEY", SECRET)
    with FakeTeacher(require_key=SECRET, reject_response_format=True) as server:
        params = _synth(base_url=server.url, model="fake-teacher", api_key_env="LORAPIPE_TEST_KEY")
        teacher = make_teacher(params, model_name="x", base_dir=Path("."))
        teacher.check()
        pairs, problem = parse_pairs(teacher.generate(_messages(), SCHEMA, 160, 0.0, 1))
        monkeypatch.setenv("LORAPIPE_TEST_KEY", SECRET[::-1])  # a wrong key
        wrong = make_teacher(params, model_name="x", base_dir=Path("."))
        with pytest.raises(TeacherError) as caught:
            wrong.check()
    assert problem is None and pairs
    assert {r["headers"]["authorization"] for r in server.requests[:3]} == {f"Bearer {SECRET}"}
    assert "LORAPIPE_TEST_KEY" in str(caught.value) and "HTTP 401" in str(caught.value)
    shown = " ".join([teacher.identity, teacher.description, wrong.identity, str(caught.value), *capsys.readouterr()])
    assert SECRET not in shown and SECRET[::-1] not in shown


def test_without_a_key_variable_no_key_from_the_environment_is_sent(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeTeacher() as server:
        _endpoint(server).check()
    assert server.requests[0]["headers"]["authorization"] == "Bearer not-needed"


def test_a_refused_json_schema_falls_back_to_json_object_once_per_run(capsys):
    with FakeTeacher(reject_response_format=True) as server:
        teacher = _endpoint(server)
        replies = [teacher.generate(_messages(f"{PASSAGE} Number {i}."), SCHEMA, 160, 0.0, 1) for i in range(3)]
    formats = [(r["body"].get("response_format") or {}).get("type") for r in server.completions]
    assert formats == ["json_schema", "json_object", "json_object", "json_object"]
    assert all(parse_pairs(r)[1] is None for r in replies)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"[synth] {server.url} does not accept response_format json_schema: asking with json_object from now on"
    ]


def test_an_endpoint_without_response_format_gets_the_schema_in_the_prompt(capsys):
    with FakeTeacher(reject_response_format={"json_schema", "json_object"}) as server:
        teacher = _endpoint(server)
        first = teacher.generate(_messages(), pairs_schema(1, 80, 120), 160, 0.0, 1)
        teacher.generate(_messages(), pairs_schema(1, 80, 120), 160, 0.0, 1)
    assert len(server.completions) == 4  # json_schema, json_object, then plain twice
    plain = server.completions[-1]["body"]
    assert "response_format" not in plain
    system = plain["messages"][0]["content"]
    assert system.startswith("Write question-answer pairs as JSON.\n\nReply with JSON only")
    assert json.loads(system.split("JSON schema: ", 1)[1]) == pairs_schema(1, 80, 120)
    assert len(parse_pairs(first)[0]) == 1  # the fake read maxItems from the prompt
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_truncated_and_prose_replies_are_counted_not_parsed():
    with FakeTeacher() as server:
        teacher = _endpoint(server)
        cut = teacher.generate(_messages(PASSAGE + " TRUNCATED"), SCHEMA, 160, 0.0, 1)
        prose = teacher.generate(_messages(PASSAGE + " NOTJSON"), SCHEMA, 160, 0.0, 1)
    pairs, problem = parse_pairs(cut)
    assert cut.finish_reason == "length" and problem == "truncated"
    full = fake_pairs(_messages(PASSAGE + " TRUNCATED")[-1]["content"], SCHEMA)
    assert pairs == full[: len(pairs)] and len(pairs) < len(full)  # the pairs written whole, never the cut one
    assert parse_pairs(prose) == ([], "not_json")


def test_an_endpoint_that_dies_mid_run_is_unavailable_after_the_retries():
    with FakeTeacher(die_after=2) as server:
        teacher = make_teacher(_synth(base_url=server.url, model="fake-teacher"), model_name="x", base_dir=Path("."))
        teacher.check()
        replies = [teacher.generate(_messages(f"Passage {i}. {PASSAGE}"), SCHEMA, 160, 0.0, 1) for i in range(2)]
        with pytest.raises(TeacherUnavailable) as caught:
            teacher.generate(_messages("Passage 2. " + PASSAGE), SCHEMA, 160, 0.0, 1)
        assert len(server.completions) == 2 + 3  # the third passage: one request and the client's two retries
        server.revive()  # the server restarted at the same URL: the same teacher goes on
        assert parse_pairs(teacher.generate(_messages("Passage 2. " + PASSAGE), SCHEMA, 160, 0.0, 1))[1] is None
    assert all(parse_pairs(r)[1] is None for r in replies)
    assert f"the teacher at {server.url} went away" in str(caught.value)
    assert [p.split(".")[0] for p in server.passages_asked()] == ["Passage 0", "Passage 1", "Passage 2"]


def test_an_endpoint_answering_500_is_unavailable():
    with FakeTeacher() as server:
        with pytest.raises(TeacherUnavailable, match="HTTP 500: the model crashed"):
            _endpoint(server).generate(_messages(PASSAGE + " ERROR500"), SCHEMA, 160, 0.0, 1)


def test_a_refused_request_is_one_request_error_and_the_endpoint_goes_on():
    with FakeTeacher() as server:
        teacher = _endpoint(server)
        with pytest.raises(TeacherRequestError) as caught:
            teacher.generate(_messages(PASSAGE + " TOOLONG"), SCHEMA, 160, 0.0, 1)
        assert parse_pairs(teacher.generate(_messages(), SCHEMA, 160, 0.0, 1))[1] is None
    assert not isinstance(caught.value, TeacherUnavailable)
    assert f"fake-teacher at {server.url} refused a request (HTTP 400: this model's maximum context" in str(
        caught.value
    )
    assert "synth.passage_tokens" in str(caught.value)
    assert len(server.completions) == 2  # no fallback of response_format for a 400 about something else


def test_an_endpoint_that_needs_a_key_says_how_to_give_one():
    with FakeTeacher(require_key=SECRET) as server:
        with pytest.raises(TeacherError, match=r"HTTP 401.*set synth.api_key_env to the variable that holds"):
            _endpoint(server).check()


def test_an_endpoint_serves_concurrent_requests_in_any_order():
    passages = [f"Document {i} explains topic{i} in detail. It has more." for i in range(8)]
    with FakeTeacher() as server:
        teacher = make_teacher(
            _synth(base_url=server.url, model="fake-teacher", concurrency=4), model_name="x", base_dir=Path(".")
        )
        assert teacher.concurrency == 4
        with ThreadPoolExecutor(teacher.concurrency) as pool:
            replies = list(pool.map(lambda p: teacher.generate(_messages(p), SCHEMA, 160, 0.0, 1), passages))
    assert [parse_pairs(r)[0] for r in replies] == [fake_pairs(p, SCHEMA) for p in passages]
    assert sorted(server.passages_asked()) == sorted(passages)


# --- make_teacher and the GGUF of the llama.cpp teacher ---


def test_make_teacher_picks_the_backend(tmp_path):
    bundled = bundled_gguf("smollm2-135m-instruct")
    endpoint = make_teacher(_synth(base_url="http://127.0.0.1:9/v1/", model="m"), model_name="x", base_dir=tmp_path)
    assert isinstance(endpoint, EndpointTeacher) and endpoint.identity == "endpoint:http://127.0.0.1:9/v1|m"
    base = make_teacher(_synth(), model_name="smollm2-135m-instruct", base_dir=tmp_path / "absent")
    assert isinstance(base, LlamaTeacher) and base.path == bundled and base.concurrency == 1
    from lorapipe.io import hash_file

    assert base.identity == f"gguf:{hash_file(bundled).hexdigest()}"
    assert base.description == f"llama.cpp on {bundled}"
    copy = tmp_path / "teacher.gguf"
    copy.write_bytes(bundled.read_bytes())
    local = make_teacher(_synth(teacher=str(copy)), model_name="smollm2-135m-instruct", base_dir=tmp_path)
    assert isinstance(local, LlamaTeacher) and local.path == copy and local.identity == base.identity
    assert all(isinstance(t, Teacher) for t in (endpoint, base, local))


def test_a_missing_teacher_file_is_named(tmp_path):
    with pytest.raises(TeacherError, match=r"synth.teacher 'models/none.gguf': no such GGUF file"):
        make_teacher(_synth(teacher="models/none.gguf"), model_name="x", base_dir=tmp_path)


def test_a_file_that_is_no_gguf_is_refused_by_check(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_text("not a model")
    teacher = LlamaTeacher(bad)
    with pytest.raises(TeacherError, match="llama.cpp cannot load the teacher .*bad.gguf"):
        teacher.check()


def _model_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / paths.PROVENANCE_NAME).write_text("model.name: x\n")
    return folder


def test_teacher_gguf_converts_a_base_folder_once_and_reuses_it(tmp_path, monkeypatch):
    from lorapipe import teacher

    calls = []

    def convert(model_dir, outfile, outtype, llama_cpp_dir):
        calls.append((Path(model_dir), outtype))
        Path(outfile).write_bytes(b"GGUF" + (Path(model_dir) / "model.safetensors").read_bytes())
        return outfile

    monkeypatch.setattr(teacher, "convert_to_gguf", convert)
    monkeypatch.setattr(teacher, "converter_dir", lambda: tmp_path / "converter")
    assert teacher_gguf("smollm2-135m-instruct", tmp_path / "absent") == bundled_gguf("smollm2-135m-instruct")
    base = _model_folder(tmp_path / "base", b"weights-1")
    first = teacher_gguf("my-org/my-model", base)
    assert first.parent == paths.cache_dir() / "teacher" and first.suffix == ".gguf"
    assert first.read_bytes() == b"GGUFweights-1" and calls == [(base, "q8_0")]
    (base / paths.PROVENANCE_NAME).write_text("model.name: y\n")  # provenance is no weight
    assert teacher_gguf("my-org/my-model", base) == first and len(calls) == 1
    (base / "model.safetensors").write_bytes(b"weights-2")
    second = teacher_gguf("my-org/my-model", base)
    assert second != first and second.read_bytes() == b"GGUFweights-2" and len(calls) == 2
    assert sorted(p.name for p in second.parent.iterdir()) == sorted([first.name, second.name])


def test_a_failed_conversion_says_what_to_use_and_leaves_no_file(tmp_path, monkeypatch):
    from lorapipe import teacher

    def fail(model_dir, outfile, outtype, llama_cpp_dir):
        Path(outfile).write_bytes(b"half")
        raise RuntimeError("convert_hf_to_gguf.py failed: unknown architecture")

    monkeypatch.setattr(teacher, "convert_to_gguf", fail)
    monkeypatch.setattr(teacher, "converter_dir", lambda: tmp_path / "converter")
    base = _model_folder(tmp_path / "base", b"weights")
    with pytest.raises(TeacherError, match="unknown architecture.*synth.teacher.*synth.base_url"):
        teacher_gguf("my-org/my-model", base)
    assert list((paths.cache_dir() / "teacher").iterdir()) == []
    with pytest.raises(TeacherError, match="dvc repro base"):
        teacher_gguf("my-org/my-model", tmp_path / "absent")


def test_an_empty_list_of_pairs_is_an_answer_not_garbage():
    assert parse_pairs(Reply('{"pairs": []}', "stop")) == ([], None)
    assert parse_pairs(Reply('{"questions": []}', "stop")) == ([], "not_json")
