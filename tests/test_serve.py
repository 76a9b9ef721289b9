"""`lorapipe serve`: the real server on a free local port, every route over HTTP, then stopped.

Run: .venv/bin/pytest tests/test_serve.py   (POST /train through a git worktree: tests/test_pipeline_e2e.py)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from helpers import ROOT
from lorapipe import export_gguf

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
    process = subprocess.Popen([sys.executable, "-m", "lorapipe.cli", "serve", "--port", str(port), *extra],
                               cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    export_gguf(tiny_model_dir, root / "data" / "dataset" / "prompts.json", root / "models" / "gguf",
                quants=["F32"], outtype="f32", name="tiny")
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
        assert requests.post(f"{server}/{route}", json=payload,
                             headers={"Authorization": "Bearer wrong"}).status_code == 401


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
    streamed = requests.post(f"{server}/v1/chat/completions", json={**payload, "stream": True}, headers=AUTH,
                             stream=True)
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

    reply = requests.post(f"{server}/query", json={"prompt": "play jazz", "max_tokens": 12, "constrained": True},
                          headers=AUTH)
    assert reply.status_code == 200 and re.match(r'\{\s*"intent"\s*:', reply.json()["answer"])
    chat = requests.post(f"{server}/v1/chat/completions", headers=AUTH, json={
        "messages": [{"role": "user", "content": "play jazz"}], "max_tokens": 12, "constrained": True})
    assert re.match(r'\{\s*"intent"', chat.json()["choices"][0]["message"]["content"])


def test_chat_in_the_terminal(project):
    done = subprocess.run([sys.executable, "-m", "lorapipe.cli", "chat", "--max-tokens", "4"], cwd=project,
                          input="Hello there\nAnd again\n\n", capture_output=True, text=True, timeout=300)
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
        out = subprocess.run(["make", "-n", "ui", *extra], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        return next(line for line in out.splitlines() if line.startswith("mlflow ui"))

    assert "--host 127.0.0.1 " in ui_command()
    assert "--host 0.0.0.0 " in ui_command("UI_HOST=0.0.0.0")
