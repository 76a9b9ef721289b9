"""`lorapipe serve`: the real server on a free local port, every route over HTTP, then stopped; and the
app in this process on a fake backend: typed request bodies, generation off the event loop, one
generation at a time per model.

Run: .venv/bin/pytest tests/test_serve.py   (POST /train through a git worktree: tests/test_pipeline_e2e.py)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import openai
import pytest
import requests
from pydantic import BaseModel

from helpers import ROOT, free_port
from lorapipe.export import export_gguf
from lorapipe.serve import TrainRun, create_app

TOKEN = "test-token-123"
PROMPT = "You answer in one short sentence."


@contextmanager
def running_server(project: Path, token: str | None = TOKEN, *extra: str):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LORAPIPE_API_TOKEN", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # dvc and python of this venv
    if token:
        env["LORAPIPE_API_TOKEN"] = token
    process = subprocess.Popen(
        [sys.executable, "-m", "lorapipe.cli", "serve", "--port", str(port), *extra],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                requests.get(f"{url}/status", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("served")
    (root / "data" / "dataset").mkdir(parents=True)
    (root / "data" / "dataset" / "prompts.json").write_text(json.dumps({"docs": PROMPT, "queries": "JSON only."}))
    export_gguf(
        tiny_model_dir,
        root / "data" / "dataset" / "prompts.json",
        root / "models" / "gguf",
        quants=["F32"],
        outtype="f32",
        name="tiny",
    )
    adapter = root / "models" / "lora_output"
    adapter.mkdir(parents=True)
    (adapter / "run.json").write_text(json.dumps({"run_id": "abc123"}))
    (adapter / "lorapipe_params.yaml").write_text("lora.rank: 4\n")
    return root


SCHEMA = Path(__file__).parent / "fixtures" / "labeled" / "snips_schema.json"


@pytest.fixture(scope="module")
def server(project):
    with running_server(project, TOKEN, "--json-schema", str(SCHEMA)) as url:
        yield url


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_status_health_is_open_and_details_need_the_token(server):
    assert requests.get(f"{server}/status").json() == {"status": "ok", "model_loaded": True}
    full = requests.get(f"{server}/status", headers=AUTH).json()
    assert full["model"].endswith("tiny.F32.gguf") and full["adapter_run_id"] == "abc123"
    assert full["params"] == {"lora.rank": 4} and full["train"] == {"state": "idle"}


def test_every_other_route_needs_the_token(server):
    for route, payload in (("query", {"prompt": "hi"}), ("v1/chat/completions", {"messages": []}), ("train", {})):
        assert requests.post(f"{server}/{route}", json=payload).status_code == 401
        assert (
            requests.post(f"{server}/{route}", json=payload, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )


def test_query_answers_with_the_task_system_prompt(server):
    reply = requests.post(f"{server}/query", json={"prompt": "What is LoRA?", "max_tokens": 8}, headers=AUTH)
    assert reply.status_code == 200
    assert isinstance(reply.json()["answer"], str) and reply.json()["system"] == PROMPT
    used = reply.json()["usage"]
    assert reply.json()["finish_reason"] == ("length" if used["completion_tokens"] == 8 else "stop")
    assert used["total_tokens"] == used["prompt_tokens"] + used["completion_tokens"] and used["prompt_tokens"] > 5
    other = requests.post(f"{server}/query", json={"prompt": "hi", "task": "queries", "max_tokens": 4}, headers=AUTH)
    assert other.json()["system"] == "JSON only."
    unknown = requests.post(f"{server}/query", json={"prompt": "hi", "task": "nope"}, headers=AUTH)
    assert unknown.status_code == 422 and "unknown task" in unknown.text


def test_bad_requests_get_clear_4xx(server):
    empty = requests.post(f"{server}/query", json={"prompt": "   "}, headers=AUTH)
    assert empty.status_code == 422 and "prompt" in empty.json()["detail"]
    long = requests.post(f"{server}/query", json={"prompt": "word " * 3000, "max_tokens": 8}, headers=AUTH)
    assert long.status_code == 413 and "context holds 2048" in long.json()["detail"]
    broken = requests.post(f"{server}/query", data="{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["detail"]
    chat = requests.post(f"{server}/v1/chat/completions", json={"messages": "hi"}, headers=AUTH)
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"  # OpenAI's shape under /v1
    too_long = {"messages": [{"role": "user", "content": "word " * 3000}]}
    chat = requests.post(f"{server}/v1/chat/completions", json=too_long, headers=AUTH)
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "context_length_exceeded"
    assert requests.get(f"{server}/status").status_code == 200  # the server is still up


def test_openai_compatible_chat_completions_with_and_without_streaming(server):
    payload = {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
    reply = requests.post(f"{server}/v1/chat/completions", json=payload, headers=AUTH).json()
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
    answer = reply["choices"][0]["message"]["content"]
    streamed = requests.post(
        f"{server}/v1/chat/completions", json={**payload, "stream": True}, headers=AUTH, stream=True
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in streamed.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # the same answer, streamed or not: both without leading and trailing whitespace (serve._stripped)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == answer
    assert chunks[-1]["choices"][0]["finish_reason"] == reply["choices"][0]["finish_reason"] == "length"


# --- the official OpenAI client against the real server -------------------------------------------

SAY_HI = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)


def expected_prompt_ids(model_dir: Path, messages: list[dict]) -> list[int]:
    """The prompt's ids as transformers renders them through the tiny model's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_openai_client_lists_and_retrieves_the_served_model(client, server):
    assert [m.id for m in client.models.list()] == ["tiny.F32.gguf"]
    card = client.models.retrieve("tiny.F32.gguf")
    assert card.object == "model" and card.owned_by == "lorapipe" and card.created > 0
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found" and "tiny.F32.gguf" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as route:
        client.embeddings.create(model="tiny", input="hi")
    assert route.value.code == "unknown_url" and "POST /v1/chat/completions" in route.value.message


def test_usage_counts_real_tokens_and_max_tokens_ends_with_length(client, tiny_model_dir):
    cut = client.chat.completions.create(model="anything", messages=SAY_HI, max_tokens=5)
    prompt = expected_prompt_ids(tiny_model_dir, [{"role": "system", "content": PROMPT}, *SAY_HI])
    assert cut.model == "tiny.F32.gguf" and cut.choices[0].finish_reason == "length"
    assert (cut.usage.prompt_tokens, cut.usage.completion_tokens, cut.usage.total_tokens) == (
        len(prompt),
        5,
        len(prompt) + 5,
    )
    # max_completion_tokens, OpenAI's newer name, is the same limit
    newer = client.chat.completions.create(model="tiny", messages=SAY_HI, max_completion_tokens=5)
    assert newer.choices[0].message.content == cut.choices[0].message.content and newer.usage == cut.usage
    # streamed: the same answer and finish reason; with include_usage a last chunk carries the usage
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=SAY_HI, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in with_choices).strip() == cut.choices[0].message.content
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == cut.usage
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.chat.completions.create(model="tiny", messages=SAY_HI, max_tokens=5, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"


def test_a_stop_string_ends_the_answer_before_it_on_both_paths(client):
    sampled = {"model": "tiny", "messages": SAY_HI, "max_tokens": 12, "temperature": 1.0, "seed": 11}
    raw = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**sampled, stream=True))
    again = client.chat.completions.create(**sampled)  # the same seed samples the same answer
    assert again.choices[0].message.content == raw.strip() and again.choices[0].finish_reason == "length"
    stop = next(raw[i : i + 2] for i in range(len(raw) // 2, len(raw)) if raw.find(raw[i : i + 2]) > 0)
    before = raw[: raw.find(stop)]
    reply = client.chat.completions.create(**sampled, stop=[stop, "never-there"])
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == before.strip() != ""
    assert 0 < reply.usage.completion_tokens < 12
    pieces = [c.choices[0] for c in client.chat.completions.create(**sampled, stop=stop, stream=True)]
    assert "".join(p.delta.content or "" for p in pieces) == before and pieces[-1].finish_reason == "stop"
    assert all(stop not in (p.delta.content or "") for p in pieces)


class Intent(BaseModel):
    intent: Literal["PlayMusic", "GetWeather"]


def test_response_format_json_schema_and_json_object_decode_under_a_grammar(client):
    parsed = client.chat.completions.parse(model="tiny", messages=SAY_HI, response_format=Intent, max_tokens=40)
    choice = parsed.choices[0]
    assert choice.finish_reason == "stop" and parsed.usage.completion_tokens < 40  # the grammar ended it
    assert choice.message.parsed.intent in ("PlayMusic", "GetWeather")
    schema = {
        "type": "object",
        "properties": {"rank": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["rank", "ok"],
    }
    reply = client.chat.completions.create(
        model="tiny",
        messages=SAY_HI,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "lora", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content)
    assert isinstance(value["rank"], int) and isinstance(value["ok"], bool)
    anything = client.chat.completions.create(
        model="tiny", messages=SAY_HI, max_tokens=30, response_format={"type": "json_object"}
    )
    content = anything.choices[0].message.content
    assert content.startswith("{")  # an object, complete when it stopped by itself
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    # json_schema without a schema (optional in OpenAI's API): any JSON object, as json_object
    schemaless = client.chat.completions.create(
        model="tiny",
        messages=SAY_HI,
        max_tokens=30,
        response_format={"type": "json_schema", "json_schema": {"name": "anything"}},
    )
    assert schemaless.choices[0].message.content == content
    plain = client.chat.completions.create(
        model="tiny", messages=SAY_HI, max_tokens=5, response_format={"type": "text"}
    )
    # "text" is free text, as "constrained": false is (without either, this server decodes under its schema)
    free = client.chat.completions.create(
        model="tiny", messages=SAY_HI, max_tokens=5, extra_body={"constrained": False}
    )
    assert plain.choices[0].message.content == free.choices[0].message.content


REFUSED_REQUESTS = [
    ({"n": 2}, "n", "one choice"),
    ({"logprobs": True}, "logprobs", "log probabilities"),
    ({"top_logprobs": 3}, "top_logprobs", "log probabilities"),
    ({"logit_bias": {"42": 5}}, "logit_bias", "bias"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "tool calling"),
    ({"tool_choice": "required"}, "tool_choice", "tool calling"),
    ({"modalities": ["text", "audio"]}, "modalities", "text only"),
    ({"reasoning_effort": "high"}, "reasoning_effort", "reasoning"),
    ({"extra_body": {"top_k": 5}}, "top_k", "unknown parameter"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens", "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}}},
        "response_format.json_schema.schema",
        "no grammar",
    ),
    ({"response_format": {"type": "json_object"}, "extra_body": {"constrained": True}}, "constrained", "not both"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, "messages.0.role", "tool calling"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
        "messages.0.content",
        "text only",
    ),
    ({"extra_body": {"task": "nope"}}, "task", "unknown task"),
]


@pytest.mark.parametrize(("extra", "param", "says"), REFUSED_REQUESTS, ids=[r[1] for r in REFUSED_REQUESTS])
def test_what_the_server_cannot_honour_is_a_400_naming_the_parameter(client, extra, param, says):
    request = {"model": "tiny", "messages": SAY_HI, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**request)
    assert refused.value.param == param and says in refused.value.message, refused.value.body
    assert refused.value.type == "invalid_request_error"


def test_harmless_fields_are_accepted_and_text_parts_are_read(client, tiny_model_dir):
    reply = client.chat.completions.create(
        model="tiny",
        messages=[
            {"role": "developer", "content": PROMPT},
            {"role": "user", "content": [{"type": "text", "text": "Say"}, {"type": "text", "text": "hi"}], "name": "a"},
        ],
        max_tokens=3,
        n=1,
        logprobs=False,
        tool_choice="none",
        user="someone",
        metadata={"run": "1"},
        store=False,
        seed=7,
        top_p=1,
        presence_penalty=0.5,
        frequency_penalty=0.5,
    )
    prompt = expected_prompt_ids(
        tiny_model_dir, [{"role": "system", "content": PROMPT}, {"role": "user", "content": "Say\nhi"}]
    )
    assert reply.usage.prompt_tokens == len(prompt) and reply.choices[0].finish_reason == "length"
    # an answer sent back as the client got it (the message object) is a valid message
    follow = client.chat.completions.create(
        model="tiny", messages=[*SAY_HI, reply.choices[0].message, {"role": "user", "content": "again"}], max_tokens=2
    )
    assert follow.usage.completion_tokens == 2


def test_train_outside_a_git_repository_is_refused(server):
    reply = requests.post(f"{server}/train", json={"params": {"lora.rank": 2}}, headers=AUTH)
    assert reply.status_code == 409 and "not a git repository" in reply.json()["detail"]


def test_a_missing_model_is_reported_and_queries_get_503(tmp_path):
    with running_server(tmp_path, None) as url:
        status = requests.get(f"{url}/status").json()  # no token set: the details are open too
        assert status["status"] == "no model" and status["model_loaded"] is False
        assert status["error"].startswith("no model at") and status["model"] is None
        reply = requests.post(f"{url}/query", json={"prompt": "hi"})
        assert reply.status_code == 503 and "run `dvc repro` first" in reply.json()["detail"]
        assert requests.get(f"{url}/v1/models").json() == {"object": "list", "data": []}
        chat = requests.post(f"{url}/v1/chat/completions", json={"messages": SAY_HI})
        assert chat.status_code == 503 and chat.json()["error"]["type"] == "server_error"
        assert "run `dvc repro` first" in chat.json()["error"]["message"]


def test_constrained_queries_follow_the_schema(server):
    """A server with a schema decodes under it by default (what the evaluation's constrained answers
    measured), on both routes; "constrained": false asks for free text."""
    import re

    for constrained in ({"constrained": True}, {}):
        reply = requests.post(
            f"{server}/query", json={"prompt": "play jazz", "max_tokens": 12, **constrained}, headers=AUTH
        )
        assert reply.status_code == 200 and re.match(r'\{\s*"intent"\s*:', reply.json()["answer"])
        chat = requests.post(
            f"{server}/v1/chat/completions",
            headers=AUTH,
            json={"messages": [{"role": "user", "content": "play jazz"}], "max_tokens": 12, **constrained},
        )
        assert re.match(r'\{\s*"intent"', chat.json()["choices"][0]["message"]["content"])
    free = requests.post(
        f"{server}/query", json={"prompt": "play jazz", "max_tokens": 12, "constrained": False}, headers=AUTH
    )
    assert not re.match(r'\{\s*"intent"', free.json()["answer"])
    # a response_format of the request's own replaces the server's schema
    chat = requests.post(
        f"{server}/v1/chat/completions",
        headers=AUTH,
        json={"messages": SAY_HI, "max_tokens": 12, "response_format": {"type": "json_object"}},
    )
    assert chat.json()["choices"][0]["message"]["content"].lstrip().startswith("{")


def test_span_constraint_keeps_slot_values_to_spans_of_the_query(server):
    """ "span_constraint": true decodes the schema with every slot value a span of the user's message
    (whatever the random-weight model prefers); asked without a schema it is refused naming it."""
    from lorapipe.labeled import query_spans

    query = "play some jazz by Miles Davis tonight"
    for route, body in (
        ("query", {"prompt": query}),
        ("v1/chat/completions", {"messages": [*SAY_HI, {"role": "user", "content": query}]}),
    ):
        reply = requests.post(
            f"{server}/{route}", json={**body, "max_tokens": 80, "span_constraint": True}, headers=AUTH
        ).json()
        answer = reply["answer"] if route == "query" else reply["choices"][0]["message"]["content"]
        if (reply.get("finish_reason") or reply["choices"][0]["finish_reason"]) == "length":
            continue  # cut short: nothing to check
        for value in json.loads(answer)["slots"].values():
            for one in value if isinstance(value, list) else [value]:
                assert one in query_spans(query), (route, one)
    refused = requests.post(
        f"{server}/query", json={"prompt": query, "constrained": False, "span_constraint": True}, headers=AUTH
    )
    assert refused.status_code == 422 and "span_constraint limits" in refused.text
    long = requests.post(f"{server}/query", json={"prompt": "word " * 200, "span_constraint": True}, headers=AUTH)
    assert long.status_code == 422 and "at most 128 words" in long.json()["detail"]


@pytest.mark.parametrize(
    "query", ['add kenneth c "jethro" burns', "play AC\\DC now", "play\nYesterday by the Beatles", "I love 😀"]
)
def test_span_grammar_writes_quotes_backslashes_line_breaks_and_emoji_as_json(project, query):
    """Characters llama.cpp's own enum literals mis-escape (a quote ended the literal and the process
    died; a backslash or line break reached the answer raw; an emoji was lost): with minLength the
    whole query is the only span left, and the answer is its JSON, whatever the model prefers."""
    from lorapipe.generation import gguf_generate

    schema = {"type": "object", "properties": {"song": {"type": "string", "minLength": len(query)}}}
    schema["required"] = ["song"]
    (answer,) = gguf_generate(
        project / "models/gguf/tiny.F32.gguf", [[{"role": "user", "content": query}]], 80, schema, True
    )
    assert not answer.truncated and json.loads(answer.text) == {"song": query}


def test_gguf_answers_say_how_far_they_are(project, monkeypatch, capsys):
    """A run of grammar-bound answers takes minutes: a line every PROGRESS_EVERY_S and one at the end."""
    import lorapipe.generation

    monkeypatch.setattr(lorapipe.generation, "PROGRESS_EVERY_S", 0)
    schema = {"type": "object", "properties": {"song": {"type": "string"}}, "required": ["song"]}
    requests = [[{"role": "user", "content": q}] for q in ("play yesterday", "play help")]
    lorapipe.generation.gguf_generate(project / "models/gguf/tiny.F32.gguf", requests, 8, schema)
    assert capsys.readouterr().out.splitlines() == [
        "[evaluate] 1/2 answers from tiny.F32.gguf under the schema",
        "[evaluate] 2/2 answers from tiny.F32.gguf under the schema",
    ]


def test_span_constraint_needs_the_llama_cpp_engine(tmp_path):
    from lorapipe.serve import create_app

    with pytest.raises(ValueError, match="only the llama.cpp engine"):
        create_app(tmp_path / "m", engine="transformers", json_schema=SCHEMA, span_constraint=True)


def test_chat_in_the_terminal(project):
    done = subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "chat", "--max-tokens", "4"],
        cwd=project,
        input="Hello there\nAnd again\n\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny.F32.gguf; an empty line quits" in done.stdout and done.stdout.count("model> ") == 2


# --- local only -----------------------------------------------------------------------------------


def test_serve_listens_on_this_machine_unless_told_otherwise(monkeypatch):
    import inspect

    import uvicorn

    from lorapipe import serve as serve_module
    from lorapipe.cli import build_parser

    assert inspect.signature(serve_module.serve).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    started = []
    monkeypatch.setattr(serve_module, "create_app", lambda *args, **kwargs: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kwargs: started.append(host))
    monkeypatch.delenv(serve_module.TOKEN_ENV, raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        serve_module.serve(host)
    for host in ("0.0.0.0", "192.168.1.20", "::", "my-laptop.local"):
        with pytest.raises(ValueError, match=f"refusing to listen on {re.escape(host)} without LORAPIPE_API_TOKEN"):
            serve_module.serve(host)
    monkeypatch.setenv(serve_module.TOKEN_ENV, "a-long-secret")
    serve_module.serve("0.0.0.0")
    assert started == ["127.0.0.1", "localhost", "::1", "127.0.0.2", "0.0.0.0"]


def test_make_ui_listens_on_this_machine_unless_ui_host_is_given():
    def ui_command(*extra: str) -> str:
        out = subprocess.run(["make", "-n", "ui", *extra], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if line.startswith("mlflow ui"))

    assert "--host 127.0.0.1 " in ui_command()
    assert "--host 0.0.0.0 " in ui_command("UI_HOST=0.0.0.0")


# --- typed requests, threads and locks: the app in this process on a fake backend -----------------


class FakeBackend:
    """Stands in for llama.cpp: each generation takes `delay` seconds and counts how many run at once."""

    def __init__(self, path: Path, engine: str = "llama.cpp", delay: float = 0.0):
        self.path, self.engine, self.n_ctx, self.delay = Path(path), engine, 2048, delay
        self.running = self.most = self.calls = 0
        self.started = threading.Event()
        self._count = threading.Lock()

    def encode(self, messages: list[dict]) -> list[int]:
        self.messages = messages
        return [1] * sum(len(m["content"].split()) for m in messages)

    def generate(self, prompt: list[int], sampling, done):
        with self._count:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        self.started.set()
        self.sampling = sampling
        try:
            time.sleep(self.delay)
            done.completion_tokens, done.finish_reason = 2, "stop"
            yield "fake answer"
        finally:
            with self._count:
                self.running -= 1

    def close(self) -> None:
        pass


def fake_app(project: Path, delay: float = 0.0):
    """The app over a FakeBackend (returned too), serving `project`; no token."""
    model = project / "fake.gguf"
    model.write_bytes(b"")
    made = []
    app = create_app(
        model,
        project=project,
        token=None,
        backend_factory=lambda path, engine: made.append(FakeBackend(path, engine, delay)) or made[-1],
    )
    return app, made[0]


@contextmanager
def in_process(app):
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread of this process."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def no_token(monkeypatch):
    monkeypatch.delenv("LORAPIPE_API_TOKEN", raising=False)


def test_status_answers_while_a_long_answer_is_generated(tmp_path, no_token):
    app, backend = fake_app(tmp_path, delay=2.0)
    with in_process(app) as url:
        replies = []
        asking = threading.Thread(
            target=lambda: replies.append(requests.post(f"{url}/query", json={"prompt": "take your time"}, timeout=30))
        )
        asking.start()
        assert backend.started.wait(10)
        began = time.monotonic()
        status = requests.get(f"{url}/status", timeout=10)
        answered_in = time.monotonic() - began
        assert status.status_code == 200 and status.json()["model_loaded"] is True
        assert answered_in < 1.0 and asking.is_alive()  # well before the 2 s answer is done
        asking.join(30)
    assert replies[0].status_code == 200 and replies[0].json()["answer"] == "fake answer"


def test_one_generation_at_a_time_per_loaded_model(tmp_path, no_token):
    app, backend = fake_app(tmp_path, delay=0.4)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    calls = [
        ("query", {"prompt": "one"}),
        ("query", {"prompt": "two"}),
        ("v1/chat/completions", chat),
        ("v1/chat/completions", {**chat, "stream": True}),
    ]
    with in_process(app) as url:
        together, replies = threading.Barrier(len(calls)), {}

        def send(route: str, payload: dict) -> None:
            together.wait()
            reply = requests.post(f"{url}/{route}", json=payload, timeout=60)
            replies[json.dumps(payload)] = (reply.status_code, reply.text)

        threads = [threading.Thread(target=send, args=call) for call in calls]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        took = time.monotonic() - began
    assert all(code == 200 for code, _ in replies.values()), replies
    assert backend.calls == 4 and backend.most == 1
    assert took >= 4 * 0.4  # they ran one after the other


def test_malformed_bodies_get_400_or_422_naming_the_field_never_500(tmp_path, no_token):
    (tmp_path / ".git").mkdir()  # /train checks its params before it needs a real repository
    (tmp_path / "params.yaml").write_text("lora:\n  rank: 16\n")
    app, _ = fake_app(tmp_path)
    chat = [{"role": "user", "content": "hi"}]
    fields = [
        ("query", {"prompt": "hi", "max_tokens": "lots"}, "max_tokens"),
        ("query", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ("query", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("query", {"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
        ("query", {"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
        ("query", {"prompt": 5}, "prompt"),
        ("query", {}, "prompt"),
        ("query", {"prompt": "hi", "constrained": "yes"}, "constrained"),
        ("query", {"prompt": "hi", "task": 3}, "task"),
        ("v1/chat/completions", {"messages": chat, "temperature": "hot"}, "temperature"),
        ("v1/chat/completions", {"messages": chat, "temperature": 2.5}, "temperature"),
        ("v1/chat/completions", {"messages": chat, "temperature": -0.1}, "temperature"),
        ("v1/chat/completions", {"messages": chat, "max_tokens": "lots"}, "max_tokens"),
        ("v1/chat/completions", {"messages": chat, "stream": "yes"}, "stream"),
        ("v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ("v1/chat/completions", {"messages": [{"role": "user"}]}, "messages.0.content"),
        ("v1/chat/completions", {"messages": [{"role": "user", "content": " "}]}, "messages"),
        ("v1/chat/completions", {"messages": []}, "messages"),
        ("v1/chat/completions", {"messages": "hi"}, "messages"),
        ("train", {"params": "lora.rank=8"}, "params"),
        ("train", {"params": {"lora.rank": "lots"}}, "lora.rank"),
        ("query", {"prompt": "\ud800 hi"}, "prompt"),  # a lone surrogate: no tokenizer can encode it
        ("query", {"prompt": "hi", "temperature": 5}, "temperature"),  # /query has no such field
        ("v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
        ("train", {"parms": {"lora.rank": 8}}, "parms"),  # a typo must not start a run without overrides
        ("train", {"params": {"model.trust_remote_code": True}}, "model.trust_remote_code"),
        ("train", {"params": {"export.llama_cpp_dir": "/tmp/x"}}, "export.llama_cpp_dir"),
    ]
    with in_process(app) as url:
        for route, payload, field in fields:
            reply = requests.post(f"{url}/{route}", json=payload, timeout=30)
            if route.startswith("v1/"):  # OpenAI's shape: 400, the field as `param`
                assert reply.status_code == 400, (route, payload, reply.text)
                assert reply.json()["error"]["param"] == field, (route, payload, reply.text)
            else:
                assert reply.status_code == 422, (route, payload, reply.text)
                assert field in reply.json()["detail"], (route, payload, reply.text)
        for route in ("query", "v1/chat/completions", "train"):
            for raw in (b"{not json", b"\xff\xfe{", b"[1, 2]", b'"hi"', b"null", b""):
                reply = requests.post(
                    f"{url}/{route}", data=raw, headers={"Content-Type": "application/json"}, timeout=30
                )
                assert reply.status_code == 400, (route, raw, reply.text)
        # JSON is read as JSON only when it says so: a web page cannot start /train with a plain POST
        plain = requests.post(
            f"{url}/train", data=b'{"params": {}}', headers={"Content-Type": "text/plain"}, timeout=30
        )
        assert plain.status_code == 400 and "Content-Type: application/json" in plain.json()["detail"]
        # right types at the edges are served
        ok = [
            ("query", {"prompt": "hi", "max_tokens": 1}),
            ("v1/chat/completions", {"messages": chat, "temperature": 0, "max_tokens": None, "top_p": 1}),
            ("v1/chat/completions", {"messages": chat, "temperature": 2}),
        ]
        for route, payload in ok:
            assert requests.post(f"{url}/{route}", json=payload, timeout=30).status_code == 200, payload


def test_the_default_model_is_the_one_export_json_names(tmp_path, no_token):
    """quants [Q8_0, F16]: the Modelfile's FROM is Q8_0, the first by name is F16; the server takes Q8_0."""
    gguf = tmp_path / "models" / "gguf"
    gguf.mkdir(parents=True)
    for name in ("tiny.F16.gguf", "tiny.Q8_0.gguf"):
        (gguf / name).write_bytes(b"")
    (gguf / "export.json").write_text(
        json.dumps({"model": "tiny.Q8_0.gguf", "files": {"Q8_0": "tiny.Q8_0.gguf", "F16": "tiny.F16.gguf"}})
    )
    app = create_app(project=tmp_path, backend_factory=FakeBackend)
    assert app.state.lorapipe.loaded.backend.path == gguf / "tiny.Q8_0.gguf"


def test_the_training_state_is_read_as_a_copy_under_its_lock(tmp_path):
    run = TrainRun(tmp_path)
    seen = run.snapshot()
    seen["state"] = "tampered"
    assert run.snapshot() == {"state": "idle"}
    stop = threading.Event()

    def writer() -> None:
        number = 0
        while not stop.is_set():
            run._update(**{f"key{number % 50}": number})
            number += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(2000):
            json.dumps(run.snapshot())  # iterating a dict another thread resizes would raise here
    finally:
        stop.set()
        thread.join()


def test_the_transformers_engine_refuses_what_only_llama_cpp_can_do(tmp_path, no_token):
    model = tmp_path / "merged"
    model.mkdir()
    app = create_app(model, engine="transformers", project=tmp_path, token=None, backend_factory=FakeBackend)
    schema = {"name": "x", "schema": {"type": "object"}}
    with in_process(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for extra, param in (
            ({"response_format": {"type": "json_object"}}, "response_format"),
            ({"response_format": {"type": "json_schema", "json_schema": schema}}, "response_format"),
            ({"extra_body": {"constrained": True}}, "constrained"),
            ({"presence_penalty": 0.5}, "presence_penalty"),
            ({"frequency_penalty": -1}, "frequency_penalty"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="merged", messages=SAY_HI, **extra)
            assert refused.value.param == param and "llama.cpp" in refused.value.message
        reply = client.chat.completions.create(
            model="merged", messages=SAY_HI, response_format={"type": "text"}, presence_penalty=0, seed=3, stop="x"
        )
        assert reply.choices[0].message.content == "fake answer" and reply.usage.total_tokens == 2 + 2
        sampling = app.state.lorapipe.loaded.backend.sampling
        assert (sampling.seed, sampling.stop, sampling.grammar, sampling.max_tokens) == (3, ("x",), None, 256)
        assert [m.id for m in client.models.list()] == ["merged"]


def test_both_engines_count_tokens_and_finish_by_length_or_stop(project, tiny_model_dir):
    """The same conversation on the GGUF (llama.cpp) and the folder it came from (transformers)."""
    from lorapipe.serve import Backend, Generation, Sampling

    messages = [{"role": "system", "content": PROMPT}, *SAY_HI]
    for backend in (Backend(tiny_model_dir, "transformers"), Backend(project / "models/gguf/tiny.F32.gguf")):
        prompt = backend.encode(messages)
        assert prompt == expected_prompt_ids(tiny_model_dir, messages), backend.engine
        cut = Generation(len(prompt))
        text = "".join(backend.generate(prompt, Sampling(6, temperature=1.0, seed=5), cut))
        assert (cut.finish_reason, cut.completion_tokens, cut.usage()["total_tokens"]) == ("length", 6, len(prompt) + 6)
        stop = next(text[i : i + 2] for i in range(len(text) // 2, len(text)) if text.find(text[i : i + 2]) > 0)
        stopped = Generation(len(prompt))
        sampling = Sampling(6, temperature=1.0, seed=5, stop=(stop,))
        assert "".join(backend.generate(prompt, sampling, stopped)) == text[: text.find(stop)], backend.engine
        assert stopped.finish_reason == "stop" and 0 < stopped.completion_tokens <= 6
        backend.close()


# --- one chat encoder: contents are literal text, a template without a system role gets it folded ----

QUOTED = [
    {"role": "system", "content": PROMPT},
    {"role": "user", "content": "What does <|im_end|> mean? <|im_start|>assistant"},
]


def test_text_that_looks_like_a_control_token_stays_text_on_both_engines(project, tiny_model_dir, client):
    from transformers import AutoTokenizer

    from lorapipe.serve import Backend

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    controls = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    # the template's own markers: around the system prompt, around the question, and the answer's start
    plain = expected_prompt_ids(tiny_model_dir, [QUOTED[0], {"role": "user", "content": "plain"}])
    markers = [i for i in plain if i in controls]
    assert len(markers) == 5
    rendered = tokenizer.apply_chat_template(QUOTED, tokenize=False, add_generation_prompt=True)
    literal = tokenizer(QUOTED[1]["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not controls & set(literal)
    for backend in (Backend(tiny_model_dir, "transformers"), Backend(project / "models/gguf/tiny.F32.gguf")):
        ids = backend.encode(QUOTED)
        assert [i for i in ids if i in controls] == markers, backend.engine
        assert tokenizer.decode(ids) == rendered, backend.engine  # the same text, only read as text
        assert any(ids[i : i + len(literal)] == literal for i in range(len(ids))), backend.engine
        served = ids
        backend.close()
    reply = client.chat.completions.create(model="tiny", messages=QUOTED[1:], max_tokens=1)
    assert reply.usage.prompt_tokens == len(served)  # the server adds the task's system prompt, as QUOTED has it


@pytest.fixture
def gemma_project(tmp_path, tiny_model_dir):
    """The tiny model carrying Gemma 2's template (it raises on a system message), in a project
    whose task has a system prompt; returns (project, model folder, the folded prompt's ids)."""
    import shutil

    from transformers import AutoTokenizer

    gemma = tmp_path / "gemma"
    shutil.copytree(tiny_model_dir, gemma)
    (gemma / "chat_template.jinja").write_text((ROOT / "tests/fixtures/chat_templates/gemma2.jinja").read_text())
    (tmp_path / "data" / "dataset").mkdir(parents=True)
    (tmp_path / "data" / "dataset" / "prompts.json").write_text(json.dumps({"docs": PROMPT}))
    expected = expected_prompt_ids(gemma, [{"role": "user", "content": PROMPT + "\n\nSay hi"}])
    assert "<start_of_turn>user\n" + PROMPT in AutoTokenizer.from_pretrained(gemma).decode(expected)
    return tmp_path, gemma, expected


def test_a_template_without_a_system_role_gets_the_prompt_folded(gemma_project, no_token):
    """The task's system prompt joins the first user message, and the server answers."""
    from lorapipe.serve import Backend

    project, gemma, expected = gemma_project
    backend = Backend(gemma, "transformers")
    assert backend.encode([{"role": "system", "content": PROMPT}, *SAY_HI]) == expected
    with in_process(create_app(gemma, engine="transformers", project=project, token=None)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="gemma", messages=SAY_HI, max_tokens=2)
        assert reply.usage.prompt_tokens == len(expected) and reply.usage.completion_tokens <= 2
        with pytest.raises(openai.BadRequestError) as refused:  # Gemma's other limit: roles alternate
            client.chat.completions.create(model="gemma", messages=[*SAY_HI, *SAY_HI], max_tokens=2)
        assert refused.value.param == "messages" and "alternate" in refused.value.message


@pytest.mark.integration
def test_a_gguf_whose_template_has_no_system_role_gets_the_prompt_folded(gemma_project):
    """The same through llama.cpp: the GGUF carries the template (an export, so integration)."""
    from lorapipe.serve import Backend

    project, gemma, expected = gemma_project
    export_gguf(gemma, project / "data/dataset/prompts.json", project / "gguf", quants=["F32"], outtype="f32")
    backend = Backend(next((project / "gguf").glob("*.gguf")))
    assert backend.encode([{"role": "system", "content": PROMPT}, *SAY_HI]) == expected
    backend.close()


def test_max_tokens_defaults_to_what_the_context_has_left(tmp_path, no_token):
    app, backend = fake_app(tmp_path)  # its context holds 2048 tokens, one per word
    long = [{"role": "user", "content": "word " * 2000}]
    with in_process(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        client.chat.completions.create(model="fake", messages=long)
        assert backend.sampling.max_tokens == 48  # not the default 256, which would not fit
        client.chat.completions.create(model="fake", messages=SAY_HI)
        assert backend.sampling.max_tokens == 256
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="fake", messages=long, max_tokens=100)
        assert refused.value.code == "context_length_exceeded" and "context holds 2048" in refused.value.message


@pytest.mark.parametrize(
    "pieces",
    [
        [],
        ["  ", "\n"],
        [" {", '"a"', ": 1}", "\n"],
        ["\n", " Hi", " there", "  ", "\n", "again ", " "],
        ["x"],
        [" \t", "a b", " ", "", "c\n\n"],
    ],
)
def test_streamed_and_whole_answers_are_stripped_alike(pieces):
    from lorapipe.serve import _stripped

    streamed = list(_stripped(iter(pieces)))
    assert "".join(streamed) == "".join(pieces).strip()
    assert all(streamed)  # no empty chunk is sent
    if streamed:
        assert not streamed[0][0].isspace() and not streamed[-1][-1].isspace()


# --- serve --retrieval: every request's prompt holds the passages the index finds -----------------

PASSAGES = [
    {
        "id": "docs/lora.md#0",
        "source": "docs/lora.md",
        "passage": 0,
        "text": "Low-rank adaptation trains two thin matrices beside each frozen weight matrix.",
    },
    {
        "id": "docs/tower.md#0",
        "source": "docs/tower.md",
        "passage": 0,
        "text": "The Eiffel tower stands in Paris; its construction was finished in 1889.",
    },
    {
        "id": "docs/bread.md#0",
        "source": "docs/bread.md",
        "passage": 0,
        "text": "Sourdough bread rises with wild yeast and lactic acid bacteria.",
    },
]


def retrieval_project(tmp_path: Path, top_k: int = 1):
    """A project with prompts.json (text first, qa second) and a BM25 index over PASSAGES; the Retrieval."""
    from lorapipe.retrieval import build_index, load_index
    from lorapipe.serve import Retrieval

    (tmp_path / "data" / "dataset").mkdir(parents=True)
    (tmp_path / "data" / "dataset" / "prompts.json").write_text(json.dumps({"text": "Text.", "qa": "Answer briefly."}))
    build_index(PASSAGES, tmp_path / "index")
    return Retrieval(load_index(tmp_path / "index"), top_k, "qa", tmp_path / "index")


def test_serve_with_retrieval_puts_the_passage_of_the_question_in_the_prompt(tmp_path, no_token):
    from lorapipe.retrieval import retrieval_messages

    retrieval = retrieval_project(tmp_path)
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"")
    made = []
    app = create_app(
        model,
        project=tmp_path,
        token=None,
        backend_factory=lambda path, engine: made.append(FakeBackend(path, engine)) or made[-1],
        retrieval=retrieval,
    )
    backend = made[0]
    question = "When was the construction of the Eiffel tower finished?"
    with in_process(app) as url:
        status = requests.get(f"{url}/status", timeout=30).json()
        assert status["retrieval"] == {"index": str(tmp_path / "index"), "passages": 3, "top_k": 1}
        reply = requests.post(f"{url}/query", json={"prompt": question}, timeout=30).json()
        tower = {**PASSAGES[1], "score": reply["passages"][0]["score"]}
        assert backend.messages == retrieval_messages("Answer briefly.", question, [tower])  # synth.task's prompt
        assert "[1] (docs/tower.md) The Eiffel tower stands in Paris" in backend.messages[1]["content"]
        assert reply["system"] == "Answer briefly." and [p["id"] for p in reply["passages"]] == ["docs/tower.md#0"]
        requests.post(f"{url}/query", json={"prompt": "What does low-rank adaptation train?", "task": "text"})
        assert backend.messages[0]["content"] == "Text." and "(docs/lora.md) Low-rank" in backend.messages[1]["content"]
        assert "Eiffel" not in backend.messages[1]["content"]
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        history = [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi."},
            {"role": "user", "content": "What makes sourdough bread rise?"},
        ]
        assert client.chat.completions.create(model="fake.gguf", messages=history).choices[0].message.content
        bread = backend.messages
        assert bread[0] == {"role": "system", "content": "Be terse."} and len(bread) == 2  # the request's own prompt
        assert bread[1]["content"].endswith("Question: What makes sourdough bread rise?")
        assert "(docs/bread.md) Sourdough" in bread[1]["content"] and "Hello" not in bread[1]["content"]


def test_serve_without_retrieval_keeps_the_request_as_it_is(tmp_path, no_token):
    retrieval_project(tmp_path)
    app, backend = fake_app(tmp_path)
    with in_process(app) as url:
        assert requests.get(f"{url}/status", timeout=30).json()["retrieval"] is None
        reply = requests.post(f"{url}/query", json={"prompt": "When was the Eiffel tower finished?"}).json()
    assert "passages" not in reply and reply["system"] == "Text."  # the first task's prompt, as before
    assert backend.messages[1] == {"role": "user", "content": "When was the Eiffel tower finished?"}


def test_serve_says_at_start_that_retrieval_is_on(tmp_path, monkeypatch, capsys, no_token):
    import uvicorn

    from lorapipe.serve import serve

    retrieval = retrieval_project(tmp_path, top_k=2)
    monkeypatch.chdir(tmp_path)  # no model here: the server starts and reports "no model"
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    serve(retrieval=retrieval)
    assert f"[serve] retrieval on: every prompt gets the top 2 of 3 passages of {tmp_path / 'index'}" in (
        capsys.readouterr().out
    )
