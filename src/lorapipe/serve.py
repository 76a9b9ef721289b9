"""A local HTTP API over the exported model: `lorapipe serve` (FastAPI on uvicorn).

    lorapipe serve --port 8000          # http://127.0.0.1:8000, the first GGUF in models/gguf

Routes:
- ``GET /status``: health (always open): whether a model is loaded; with the token (if one is set),
  also the model file, the adapter's MLflow run id and params, and the state of the last /train run.
- ``POST /query``: ``{"prompt": "...", "task": optional, "max_tokens": optional, "constrained": optional}``
  → ``{"answer": ...}``, with the task's system prompt from ``prompts.json``; ``constrained`` decodes
  under a grammar built from the server's ``--json-schema`` (as ``eval.constrained`` does).
- ``POST /v1/chat/completions``: an OpenAI-compatible subset (messages, max_tokens, temperature,
  stream with server-sent events). Without a system message, the first task's prompt is added.
- ``POST /train``: ``{"params": {"lora.rank": 8, ...}}`` runs ``dvc repro`` in a separate git worktree,
  so the served model is untouched; one run at a time (409 otherwise). When it succeeds the server
  switches to the new GGUF.

``LORAPIPE_API_TOKEN`` set: every route but the health part of /status needs
``Authorization: Bearer <token>`` (401 otherwise). The server listens on 127.0.0.1 unless ``--host``
names another address, and refuses to do that without the token.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from fastapi import Depends, FastAPI, HTTPException, Request  # FastAPI reads the annotations by name
from fastapi.responses import JSONResponse, StreamingResponse

from lorapipe import paths, tracking

TOKEN_ENV = "LORAPIPE_API_TOKEN"


class Backend:
    """The model being served: a GGUF under llama.cpp, or a merged folder under transformers."""

    def __init__(self, model_path: Path, engine: str = "llama.cpp", n_ctx: int = 2048):
        self.path, self.engine, self.n_ctx = Path(model_path), engine, n_ctx
        self.lock = threading.Lock()  # one generation at a time
        if engine == "llama.cpp":
            from llama_cpp import Llama

            self.llm = Llama(str(self.path), n_ctx=n_ctx, verbose=False)
        else:
            from lorapipe.models import load_causal_lm, load_tokenizer

            self.tokenizer, self.model = load_tokenizer(self.path), load_causal_lm(self.path).eval()
            self.n_ctx = getattr(self.model.config, "max_position_embeddings", n_ctx)

    def prompt_tokens(self, messages: list[dict]) -> int:
        text = "\n".join(m["content"] for m in messages)
        if self.engine == "llama.cpp":
            return len(self.llm.tokenize(text.encode(), add_bos=True, special=False))
        return len(self.tokenizer(text)["input_ids"])

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, grammar=None):
        """Generated text pieces (an iterator), so callers can stream them."""
        if self.engine == "llama.cpp":
            for chunk in self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                         temperature=temperature, grammar=grammar, stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
            return
        from lorapipe.evaluate import generate_answer

        yield generate_answer(self.tokenizer, self.model, messages, max_tokens, temperature)

    def close(self) -> None:
        if self.engine == "llama.cpp":
            self.llm.close()


class TrainRun:
    """The pipeline run started by POST /train, in its own git worktree."""

    def __init__(self, project: Path):
        self.project = project
        self.state: dict[str, Any] = {"state": "idle"}
        self.lock = threading.Lock()

    def start(self, overrides: dict[str, Any], on_success) -> dict[str, Any]:
        with self.lock:
            if self.state.get("state") == "running":
                return {}
            run_id = uuid.uuid4().hex[:8]
            self.state = {"state": "running", "id": run_id, "params": overrides, "started": time.time(),
                          "stage": None, "worktree": str(self.project / ".lorapipe-cache" / "serve" / run_id)}
        threading.Thread(target=self._run, args=(overrides, on_success), daemon=True).start()
        return dict(self.state)

    def _run(self, overrides: dict[str, Any], on_success) -> None:
        worktree, log = Path(self.state["worktree"]), []
        env = {**os.environ, "LORAPIPE_HOME": str(self.project)}  # same caches and MLflow store
        try:
            worktree.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "worktree", "add", "--detach", str(worktree), "HEAD"], cwd=self.project,
                           check=True, capture_output=True, text=True)
            subprocess.run(["dvc", "cache", "dir", "--local", str(self.project / ".dvc" / "cache")], cwd=worktree,
                           check=True, capture_output=True, text=True, env=env)
            params_file = worktree / paths.PARAMS
            raw = yaml.safe_load(params_file.read_text()) or {}
            for dotted, value in overrides.items():
                section, _, key = dotted.partition(".")
                raw.setdefault(section, {})[key] = value
            from lorapipe.params import validate_params

            validate_params(raw, str(params_file))
            params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
            process = subprocess.Popen(["dvc", "repro"], cwd=worktree, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                log.append(line.rstrip())
                if line.startswith("Running stage"):
                    self.state["stage"] = line.split("'")[1]
            code = process.wait()
            if code != 0:
                raise RuntimeError(f"dvc repro exited with {code}")
            model = next(iter(sorted((worktree / paths.GGUF).glob("*.gguf"))), None)
            if model is None:
                raise RuntimeError("the run wrote no GGUF")
            on_success(worktree, model)
            self.state.update(state="succeeded", model=str(model))
        except Exception as exc:  # noqa: BLE001 - the failure is reported through /status
            self.state.update(state="failed", error=str(exc)[-2000:])
        finally:
            self.state.update(finished=time.time(), log_tail=log[-20:])


def create_app(model_path: str | Path | None = None, engine: str = "llama.cpp", project: str | Path = ".",
               token: str | None = None, json_schema: str | Path | None = None):
    """The FastAPI application; `model_path` defaults to the first GGUF in models/gguf (or
    models/merged with the transformers engine). With `json_schema`, requests may ask for
    ``"constrained": true``: decoding under a llama.cpp grammar built from the schema."""
    project = Path(project).resolve()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    app = FastAPI(title="lorapipe", description=__doc__.split("\n\n")[0])
    state: dict[str, Any] = {"backend": None, "error": None, "root": project}
    training = TrainRun(project)
    schema = json.loads(Path(json_schema).read_text()) if json_schema else None

    def default_model(root: Path) -> Path | None:
        if engine != "llama.cpp":
            return root / paths.MERGED
        return next(iter(sorted((root / paths.GGUF).glob("*.gguf"))), None)

    def load(path: Path | None, root: Path) -> None:
        if path is None or not Path(path).exists():
            state.update(backend=None, error=f"no model at {path or root / paths.GGUF}: run `dvc repro` first")
            return
        previous = state.get("backend")
        state.update(backend=Backend(Path(path), engine), error=None, root=root)
        if previous:
            previous.close()

    load(Path(model_path) if model_path else default_model(project), project)

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return token is None or secrets.compare_digest(header.encode(), f"Bearer {token}".encode())

    def require_token(request: Request) -> None:
        if not authorized(request):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <LORAPIPE_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})

    def backend() -> Backend:
        if state["backend"] is None:
            raise HTTPException(503, state["error"] or "no model loaded")
        return state["backend"]

    def prompts() -> dict[str, str]:
        path = state["root"] / paths.PROMPTS
        return json.loads(path.read_text()) if path.is_file() else {}

    def run_info() -> dict[str, Any]:
        root = state["root"]
        info = root / paths.ADAPTER / paths.RUN_INFO_NAME
        params = root / paths.ADAPTER / paths.PROVENANCE_NAME
        return {"adapter_run_id": tracking.read_run_id(info),
                "params": yaml.safe_load(params.read_text()) if params.is_file() else None}

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HTTPException(400, "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        return data

    def checked(messages: list[dict], max_tokens: int) -> list[dict]:
        model = backend()
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                   and m.get("role") in ("system", "user", "assistant") for m in messages):
            raise HTTPException(422, "messages must be a non-empty list of {role: system|user|assistant, content}")
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise HTTPException(422, "the prompt is empty")
        used = model.prompt_tokens(messages)
        if used + max_tokens > model.n_ctx:
            raise HTTPException(413, f"the prompt is {used} tokens and {max_tokens} more are asked for, but the "
                                     f"model's context holds {model.n_ctx}: shorten the prompt or max_tokens")
        return messages

    def grammar(data: dict[str, Any]):
        if not data.get("constrained"):
            return None
        if schema is None:
            raise HTTPException(422, "constrained decoding needs a schema: start the server with --json-schema FILE")
        if engine != "llama.cpp":
            raise HTTPException(422, "constrained decoding needs the llama.cpp engine (serve a GGUF)")
        from llama_cpp import LlamaGrammar

        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)

    def with_system(messages: list[dict], task: str | None) -> list[dict]:
        if messages and messages[0].get("role") == "system":
            return messages
        known = prompts()
        if task is not None and task not in known:
            raise HTTPException(422, f"unknown task {task!r}; known: {sorted(known)}")
        system = known.get(task) if task else next(iter(known.values()), None)
        return ([{"role": "system", "content": system}] if system else []) + messages

    @app.get("/status")
    def status(request: Request):
        health = {"status": "ok" if state["backend"] else "no model", "model_loaded": state["backend"] is not None}
        if not authorized(request):
            return health
        model = state["backend"]
        return {**health, "error": state["error"], "model": str(model.path) if model else None,
                "engine": engine, **run_info(), "train": {k: v for k, v in training.state.items()}}

    @app.post("/query", dependencies=[Depends(require_token)])
    async def query(request: Request):
        data = await body(request)
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise HTTPException(422, "prompt must be a non-empty string")
        max_tokens = int(data.get("max_tokens", 128))
        messages = checked(with_system([{"role": "user", "content": prompt}], data.get("task")), max_tokens)
        model, rules = backend(), grammar(data)
        with model.lock:
            answer = "".join(model.complete(messages, max_tokens, grammar=rules)).strip()
        return {"answer": answer, "model": model.path.name, "system": messages[0]["content"]
                if messages[0]["role"] == "system" else None}

    @app.post("/v1/chat/completions", dependencies=[Depends(require_token)])
    async def chat_completions(request: Request):
        data = await body(request)
        max_tokens = int(data.get("max_tokens") or 256)
        temperature = float(data.get("temperature") or 0.0)
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise HTTPException(422, "messages must be a list")
        messages = checked(with_system(messages, data.get("task")), max_tokens)
        model, rules = backend(), grammar(data)
        created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:12]}"
        name = data.get("model") or model.path.name

        def chunk(delta: dict, finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                          "model": name, "choices": [{"index": 0, "delta": delta,
                                                                      "finish_reason": finish}]}) + "\n\n"

        if data.get("stream"):
            def events():
                with model.lock:
                    yield chunk({"role": "assistant"})
                    for piece in model.complete(messages, max_tokens, temperature, rules):
                        yield chunk({"content": piece})
                    yield chunk({}, "stop")
                    yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        with model.lock:
            answer = "".join(model.complete(messages, max_tokens, temperature, rules)).strip()
        return JSONResponse({"id": completion_id, "object": "chat.completion", "created": created, "model": name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                          "finish_reason": "stop"}]})

    @app.post("/train", dependencies=[Depends(require_token)])
    async def train(request: Request):
        data = await body(request)
        overrides = data.get("params") or {}
        if not isinstance(overrides, dict):
            raise HTTPException(422, 'params must be an object of dotted keys, e.g. {"lora.rank": 8}')
        if not (project / ".git").exists():
            raise HTTPException(409, f"{project} is not a git repository: /train needs one for its worktree")
        started = training.start(overrides, lambda root, model: load(model, root))
        if not started:
            raise HTTPException(409, "a training run is already in progress; see GET /status")
        return JSONResponse(started, status_code=202)

    return app


def is_local(host: str) -> bool:
    """Is `host` an address only this machine can reach (a loopback address, or localhost)?"""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(host: str = "127.0.0.1", port: int = 8000, model_path: str | Path | None = None,
          engine: str = "llama.cpp", json_schema: str | Path | None = None) -> None:
    """Run the API with uvicorn until interrupted. Only this machine can reach it unless `host` says
    otherwise, and then only with LORAPIPE_API_TOKEN set (every route but /status's health needs it)."""
    import uvicorn

    if not is_local(host) and not os.environ.get(TOKEN_ENV):
        raise ValueError(f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could query "
                         f"the model and start training runs. Set {TOKEN_ENV} to a secret, or keep the default "
                         "--host 127.0.0.1")
    app = create_app(model_path, engine, json_schema=json_schema)
    print(f"[serve] http://{host}:{port} (GET /status, POST /query, POST /v1/chat/completions, POST /train)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def chat_loop(model_path: str | Path | None = None, max_tokens: int = 256) -> None:
    """`lorapipe chat`: talk to the exported model in the terminal (empty line or Ctrl-D quits)."""
    gguf = Path(model_path) if model_path else next(iter(sorted(paths.GGUF.glob("*.gguf"))), None)
    if gguf is None or not gguf.is_file():
        raise FileNotFoundError(f"no GGUF in {paths.GGUF}: run `dvc repro` first (or pass --gguf)")
    known = json.loads(paths.PROMPTS.read_text()) if paths.PROMPTS.is_file() else {}
    messages = [{"role": "system", "content": next(iter(known.values()))}] if known else []
    model = Backend(gguf)
    print(f"[chat] {gguf.name}; an empty line quits", flush=True)
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                break
            if not line:
                break
            messages.append({"role": "user", "content": line})
            print("model> ", end="", flush=True)
            pieces = []
            for piece in model.complete(messages, max_tokens):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print()
            messages.append({"role": "assistant", "content": "".join(pieces).strip()})
    finally:
        model.close()
