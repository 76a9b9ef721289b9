"""`lorapipe serve`: the real server on a free local port, every route over HTTP, then stopped; and the
app in this process on a fake backend: typed request bodies, generation off the event loop, one
generation at a time per model.

Run: .venv/bin/pytest tests/test_serve.py   (POST /train through a git worktree: tests/test_pipeline_e2e.py)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from helpers import ROOT
from lorapipe.export import export_gguf
from lorapipe.serve import TrainRun, create_app

TOKEN = "test-token-123"
PROMPT = "You answer in one short sentence."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    assert requests.post(f"{server}/v1/chat/completions", json={"messages": "hi"}, headers=AUTH).status_code == 422
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
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip() == answer
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


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


def test_constrained_queries_follow_the_schema(server):
    import re

    reply = requests.post(
        f"{server}/query", json={"prompt": "play jazz", "max_tokens": 12, "constrained": True}, headers=AUTH
    )
    assert reply.status_code == 200 and re.match(r'\{\s*"intent"\s*:', reply.json()["answer"])
    chat = requests.post(
        f"{server}/v1/chat/completions",
        headers=AUTH,
        json={"messages": [{"role": "user", "content": "play jazz"}], "max_tokens": 12, "constrained": True},
    )
    assert re.match(r'\{\s*"intent"', chat.json()["choices"][0]["message"]["content"])


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

    def prompt_tokens(self, messages: list[dict]) -> int:
        return sum(len(m["content"].split()) for m in messages)

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, grammar=None):
        with self._count:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        self.started.set()
        try:
            time.sleep(self.delay)
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
        ("query", {"prompt": "\ud800 hi"}, "prompt"),
        (
            "query",
            {"prompt": "hi", "temperature": 5},
            "temperature",
        ),  # /query has no such field  # a lone surrogate: no tokenizer can encode it
        ("v1/chat/completions", {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
        ("train", {"parms": {"lora.rank": 8}}, "parms"),  # a typo must not start a run without overrides
        ("train", {"params": {"model.trust_remote_code": True}}, "model.trust_remote_code"),
        ("train", {"params": {"export.llama_cpp_dir": "/tmp/x"}}, "export.llama_cpp_dir"),
    ]
    with in_process(app) as url:
        for route, payload, field in fields:
            reply = requests.post(f"{url}/{route}", json=payload, timeout=30)
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
