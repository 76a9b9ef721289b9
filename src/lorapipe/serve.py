"""A local HTTP API over the exported model: `lorapipe serve` (FastAPI on uvicorn).

    lorapipe serve --port 8000          # http://127.0.0.1:8000, the model models/gguf/export.json names

Routes (request bodies are the pydantic models below; a body that is not a JSON object gets 400, a
field of the wrong type or out of range 422 naming the field):
- ``GET /status``: health (always open): whether a model is loaded; with the token (if one is set),
  also the model file, the adapter's MLflow run id and params, and the state of the last /train run.
- ``POST /query`` (QueryRequest) → ``{"answer": ...}``, with the task's system prompt from
  ``prompts.json``; ``constrained`` decodes under a grammar built from the server's ``--json-schema``
  (as ``eval.constrained`` does).
- ``POST /v1/chat/completions`` (ChatRequest): an OpenAI-compatible subset (messages, max_tokens,
  temperature, stream with server-sent events). Without a system message, the first task's prompt is added.
- ``POST /train`` (TrainRequest): ``{"params": {"lora.rank": 8, ...}}`` runs ``dvc repro`` in a
  separate git worktree, so the served model is untouched; one run at a time (409 otherwise). When it
  succeeds the server switches to the new model.

Generation runs in FastAPI's threadpool, never on the event loop, so /status answers while an answer
is generated; each loaded model has one lock, so one llama.cpp context never runs two requests at once.

``LORAPIPE_API_TOKEN`` set: every route but the health part of /status needs
``Authorization: Bearer <token>`` (401 otherwise). The server listens on 127.0.0.1 unless ``--host``
names another address, and refuses to do that without the token.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request  # FastAPI reads the annotations by name
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from lorapipe import paths, tracking
from lorapipe.artifacts import model_gguf
from lorapipe.io import read_provenance
from lorapipe.params import MAX_SEQ_LEN, ParamsError, apply_overrides, read_yaml, validate_params
from lorapipe.textfiles import read_text

TOKEN_ENV = "LORAPIPE_API_TOKEN"
MAX_TOKENS = MAX_SEQ_LEN  # the most tokens a request may ask for: the longest context params allow


class Backend:
    """The model being served: a GGUF under llama.cpp, or a merged folder under transformers. Not
    thread-safe: the server runs it under its LoadedModel's lock."""

    def __init__(self, model_path: Path, engine: str = "llama.cpp", n_ctx: int = 2048):
        self.path, self.engine, self.n_ctx = Path(model_path), engine, n_ctx
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
            for chunk in self.llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, temperature=temperature, grammar=grammar, stream=True
            ):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece
            return
        from lorapipe.evaluate import generate_answer

        yield generate_answer(self.tokenizer, self.model, messages, max_tokens, temperature)

    def close(self) -> None:
        if self.engine == "llama.cpp":
            self.llm.close()


class LoadedModel:
    """A backend the server serves, with its lock: one request at a time runs it."""

    def __init__(self, backend: Backend):
        self.backend, self.lock, self.closed = backend, threading.Lock(), False

    @contextlib.contextmanager
    def session(self) -> Iterator[Backend]:
        """Hold the lock while the backend is used; 503 when it was replaced while this waited."""
        with self.lock:
            if self.closed:
                raise HTTPException(503, "the model was replaced while this request waited; send it again")
            yield self.backend

    def close(self) -> None:
        """Close the backend once the request running on it (if any) is done."""
        with self.lock:
            self.closed = True
            self.backend.close()


# --- request bodies -------------------------------------------------------------------------------


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


def _encodable(value: str) -> str:
    try:  # JSON's "\ud800" escape decodes to a lone surrogate, which no tokenizer can encode
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"is not valid Unicode text ({exc.reason} at character {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]

# /train may not change these: each makes the server run code of someone else's choosing (a Hub
# model's own Python, another llama.cpp checkout's converter, an accelerate config's launcher).
TRAIN_REFUSED_KEYS = ("model.trust_remote_code", "export.llama_cpp_dir", "train.accelerate_config")


class _Body(BaseModel):
    # strict: "lots" is no number and "true" no bool; fields OpenAI clients add (top_p, n, …) are ignored
    model_config = ConfigDict(strict=True, allow_inf_nan=False)


class QueryRequest(_Body):
    # lorapipe's own route: a field it does not know ("temperature") is a mistake to name, not to ignore
    model_config = _Body.model_config | {"extra": "forbid"}

    prompt: Annotated[Text, AfterValidator(_has_text)] = Field(description="the question")
    task: str | None = Field(
        None, description="the task of prompts.json whose system prompt is used; default: the first"
    )
    max_tokens: int = Field(128, ge=1, le=MAX_TOKENS, description="tokens to generate at most")
    constrained: bool = Field(False, description="decode under the grammar of the server's --json-schema")


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(None, description="echoed back; default: the served file's name")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="tokens to generate at most; default 256")
    temperature: float | None = Field(None, ge=0, le=2, description="0 (the default): greedy")
    stream: bool = Field(False, description="send the answer as server-sent events")
    task: str | None = Field(
        None, description="the task whose system prompt is added when no system message is given; default: the first"
    )
    constrained: bool = Field(False, description="decode under the grammar of the server's --json-schema")

    @field_validator("messages")
    @classmethod
    def _has_prompt(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise ValueError("the prompt is empty: give a user message with text")
        return messages


class TrainRequest(_Body):
    model_config = _Body.model_config | {"extra": "forbid"}  # a typo must not start a run

    params: dict[str, Any] | None = Field(None, description='params overrides by dotted key, e.g. {"lora.rank": 8}')

    @field_validator("params")
    @classmethod
    def _no_code_keys(cls, params: dict[str, Any] | None) -> dict[str, Any] | None:
        refused = sorted(set(params or {}) & set(TRAIN_REFUSED_KEYS))
        if refused:
            raise ValueError(
                f"{', '.join(refused)} cannot be set through /train (they run code); set them in params.yaml"
            )
        return params


def _field(error: dict) -> str:
    loc = error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"]
    return ".".join(str(part) for part in loc)


async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not a JSON object; 422 naming each bad field otherwise.

    A body is read as JSON only with ``Content-Type: application/json`` (FastAPI's strict content
    type): a web page can send text/plain to 127.0.0.1 without asking, but not JSON."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONResponse({"detail": "the request body is not valid JSON"}, status_code=400)
    if any(tuple(e["loc"]) == ("body",) and e["type"] != "value_error" for e in errors):
        sent_json = "json" in request.headers.get("content-type", "")
        return JSONResponse(
            {
                "detail": "the request body must be a JSON object"
                + ("" if sent_json else ", sent with Content-Type: application/json")
            },
            status_code=400,
        )
    problems = [
        {"field": _field(e), "message": e["msg"].removeprefix("Value error, "), "type": e["type"]} for e in errors
    ]
    return JSONResponse(
        {"detail": "; ".join(f"{p['field']}: {p['message']}" for p in problems), "errors": problems}, status_code=422
    )


# --- shared state ---------------------------------------------------------------------------------


def overridden_params(params_file: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's mapping with dotted-key `overrides` applied, validated; raises ParamsError naming
    each bad key (a YAML syntax error in the file too)."""
    raw = read_yaml(params_file)
    raw = apply_overrides(raw, overrides) if isinstance(raw, dict) else raw  # validate_params names the rest
    validate_params(raw, f"{params_file} with the overrides {overrides}")
    return raw


class TrainRun:
    """The pipeline run started by POST /train, in its own git worktree. Its state is changed by the
    run's thread and read by requests, always under its lock (`snapshot` gives a copy)."""

    def __init__(self, project: Path):
        self.project = project
        self._state: dict[str, Any] = {"state": "idle"}
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)

    def start(self, overrides: dict[str, Any], on_success: Callable[[Path, Path], None]) -> dict[str, Any]:
        """Start a run in a thread and return its state, or {} when one is running already.
        `on_success(model, worktree)` is called with the new model's GGUF when it succeeds."""
        with self._lock:
            if self._state.get("state") == "running":
                return {}
            run_id = uuid.uuid4().hex[:8]
            self._state = {
                "state": "running",
                "id": run_id,
                "params": overrides,
                "started": time.time(),
                "stage": None,
                "worktree": str(self.project / ".lorapipe-cache" / "serve" / run_id),
            }
            started = dict(self._state)
        threading.Thread(target=self._run, args=(Path(started["worktree"]), overrides, on_success), daemon=True).start()
        return started

    def _run(self, worktree: Path, overrides: dict[str, Any], on_success: Callable[[Path, Path], None]) -> None:
        log: list[str] = []
        env = {**os.environ, "LORAPIPE_HOME": str(self.project)}  # same caches and MLflow store
        outcome: dict[str, Any] = {}
        try:
            self._prepare(worktree, overrides, env)
            self._repro(worktree, env, log)
            model = model_gguf(worktree / paths.GGUF)
            on_success(model, worktree)
            outcome = {"state": "succeeded", "model": str(model)}
        except Exception as exc:  # noqa: BLE001 - any failure is reported through /status
            outcome = {"state": "failed", "error": str(exc)[-2000:]}
        finally:
            self._update(**outcome, finished=time.time(), log_tail=log[-20:])

    def _prepare(self, worktree: Path, overrides: dict[str, Any], env: dict[str, str]) -> None:
        """A detached worktree of HEAD sharing the project's DVC cache, its params.yaml overridden."""
        worktree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(worktree), "HEAD"],
            cwd=self.project,
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            ["dvc", "cache", "dir", "--local", str(self.project / ".dvc" / "cache")],
            cwd=worktree,
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        params_file = worktree / paths.PARAMS
        params_file.write_text(yaml.safe_dump(overridden_params(params_file, overrides), sort_keys=False))

    def _repro(self, worktree: Path, env: dict[str, str], log: list[str]) -> None:
        process = subprocess.Popen(
            ["dvc", "repro"], cwd=worktree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            log.append(line.rstrip())
            if line.startswith("Running stage"):
                self._update(stage=line.split("'")[1])
        code = process.wait()
        if code != 0:
            raise RuntimeError(f"dvc repro exited with {code}")


class AppState:
    """What the routes share (``app.state.lorapipe``): the served model, the project it comes from,
    the token, the JSON schema for constrained decoding and the /train run."""

    def __init__(
        self,
        project: Path,
        engine: str,
        token: str | None,
        schema: dict | None,
        backend_factory: Callable[[Path, str], Backend],
    ):
        self.project, self.root, self.engine, self.token, self.schema = project, project, engine, token, schema
        self.backend_factory = backend_factory
        self.training = TrainRun(project)
        self.loaded: LoadedModel | None = None
        self.error: str | None = None
        self._swap = threading.Lock()

    def default_model(self, root: Path) -> Path | None:
        """models/merged for the transformers engine; else the GGUF export.json names (None if absent)."""
        if self.engine != "llama.cpp":
            return root / paths.MERGED
        try:
            return model_gguf(root / paths.GGUF)
        except FileNotFoundError:
            return None

    def load(self, path: Path | None, root: Path) -> None:
        """Serve the model at `path` (of the project or worktree `root`); the previous one is closed
        once the request running on it is done."""
        if path is None or not Path(path).exists():
            loaded, error = None, f"no model at {path or root / paths.GGUF}: run `dvc repro` first"
        else:
            loaded, error = LoadedModel(self.backend_factory(Path(path), self.engine)), None
        with self._swap:
            previous, self.loaded, self.error = self.loaded, loaded, error
            self.root = root if loaded else self.root
        if previous:
            previous.close()

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        return self.token is None or secrets.compare_digest(header.encode(), f"Bearer {self.token}".encode())

    def require_model(self) -> LoadedModel:
        loaded = self.loaded
        if loaded is None:
            raise HTTPException(503, self.error or "no model loaded")
        return loaded

    def prompts(self) -> dict[str, str]:
        path = self.root / paths.PROMPTS
        return json.loads(read_text(path)) if path.is_file() else {}

    def run_info(self) -> dict[str, Any]:
        adapter = self.root / paths.ADAPTER
        try:
            params = read_provenance(adapter)
        except FileNotFoundError:
            params = None
        return {"adapter_run_id": tracking.read_run_id(adapter / paths.RUN_INFO_NAME), "params": params}

    def grammar(self, constrained: bool):
        """The llama.cpp grammar of the server's schema for a constrained request, else None."""
        if not constrained:
            return None
        if self.schema is None:
            raise HTTPException(422, "constrained decoding needs a schema: start the server with --json-schema FILE")
        if self.engine != "llama.cpp":
            raise HTTPException(422, "constrained decoding needs the llama.cpp engine (serve a GGUF)")
        from llama_cpp import LlamaGrammar

        return LlamaGrammar.from_json_schema(json.dumps(self.schema), verbose=False)

    def with_system(self, messages: list[dict], task: str | None) -> list[dict]:
        """`messages` led by the task's system prompt from prompts.json, unless they start with one."""
        if messages and messages[0]["role"] == "system":
            return messages
        known = self.prompts()
        if task is not None and task not in known:
            raise HTTPException(422, f"unknown task {task!r}; known: {sorted(known)}")
        system = known.get(task) if task else next(iter(known.values()), None)
        return ([{"role": "system", "content": system}] if system else []) + messages


def _check_fits(model: Backend, messages: list[dict], max_tokens: int) -> None:
    used = model.prompt_tokens(messages)
    if used + max_tokens > model.n_ctx:
        raise HTTPException(
            413,
            f"the prompt is {used} tokens and {max_tokens} more are asked for, but the "
            f"model's context holds {model.n_ctx}: shorten the prompt or max_tokens",
        )


# --- routes ---------------------------------------------------------------------------------------


def app_state(request: Request) -> AppState:
    return request.app.state.lorapipe


State = Annotated[AppState, Depends(app_state)]


def require_token(request: Request, state: State) -> None:
    if not state.authorized(request):
        raise HTTPException(
            401,
            "missing or wrong bearer token (Authorization: Bearer <LORAPIPE_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter()
AUTHORIZED = [Depends(require_token)]
CHAT_MAX_TOKENS = 256  # /v1/chat/completions' default max_tokens


@router.get("/status")
async def status(request: Request, state: State) -> dict[str, Any]:
    """Health for anyone; details with the token. Async and lock-free: it answers during a generation."""
    loaded = state.loaded
    health = {"status": "ok" if loaded else "no model", "model_loaded": loaded is not None}
    if not state.authorized(request):
        return health
    return {
        **health,
        "error": state.error,
        "model": str(loaded.backend.path) if loaded else None,
        "engine": state.engine,
        **state.run_info(),
        "train": state.training.snapshot(),
    }


@router.post("/query", dependencies=AUTHORIZED)
def query(body: QueryRequest, state: State) -> dict[str, Any]:
    loaded = state.require_model()
    messages = state.with_system([{"role": "user", "content": body.prompt}], body.task)
    rules = state.grammar(body.constrained)
    with loaded.session() as model:
        _check_fits(model, messages, body.max_tokens)
        answer = "".join(model.complete(messages, body.max_tokens, grammar=rules)).strip()
    return {
        "answer": answer,
        "model": model.path.name,
        "system": messages[0]["content"] if messages[0]["role"] == "system" else None,
    }


def _chunk(head: dict[str, Any], delta: dict, finish: str | None = None) -> str:
    return (
        "data: "
        + json.dumps(
            {
                **head,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        + "\n\n"
    )


def _events(
    loaded: LoadedModel, head: dict[str, Any], messages: list[dict], max_tokens: int, temperature: float, rules
) -> Iterator[str]:
    """Server-sent events of one answer; Starlette iterates this in its threadpool."""
    try:
        with loaded.session() as model:
            yield _chunk(head, {"role": "assistant"})
            for piece in model.complete(messages, max_tokens, temperature, rules):
                yield _chunk(head, {"content": piece})
            yield _chunk(head, {}, "stop")
    except HTTPException as exc:  # the model was replaced: the status line is sent already
        yield "data: " + json.dumps({"error": {"message": exc.detail}}) + "\n\n"
    yield "data: [DONE]\n\n"


@router.post("/v1/chat/completions", dependencies=AUTHORIZED)
def chat_completions(body: ChatRequest, state: State):
    loaded = state.require_model()
    max_tokens, temperature = body.max_tokens or CHAT_MAX_TOKENS, body.temperature or 0.0
    messages = state.with_system([m.model_dump() for m in body.messages], body.task)
    rules = state.grammar(body.constrained)
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "created": int(time.time()),
        "model": body.model or loaded.backend.path.name,
    }
    if body.stream:
        with loaded.session() as model:  # a 413 must come before the stream starts
            _check_fits(model, messages, max_tokens)
        return StreamingResponse(
            _events(loaded, head, messages, max_tokens, temperature, rules), media_type="text/event-stream"
        )
    with loaded.session() as model:
        _check_fits(model, messages, max_tokens)
        answer = "".join(model.complete(messages, max_tokens, temperature, rules)).strip()
    return {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
    }


@router.post("/train", dependencies=AUTHORIZED, status_code=202)
def train(body: TrainRequest, state: State) -> dict[str, Any]:
    overrides = body.params or {}
    if not (state.project / ".git").exists():
        raise HTTPException(409, f"{state.project} is not a git repository: /train needs one for its worktree")
    params_file = state.project / paths.PARAMS
    if params_file.is_file():  # refuse bad overrides now; the run validates its worktree's params again
        try:
            overridden_params(params_file, overrides)
        except ParamsError as exc:
            raise HTTPException(422, str(exc)) from None
    started = state.training.start(overrides, lambda model, worktree: state.load(model, worktree))
    if not started:
        raise HTTPException(409, "a training run is already in progress; see GET /status")
    return started


def create_app(
    model_path: str | Path | None = None,
    *,
    engine: str = "llama.cpp",
    project: str | Path = ".",
    token: str | None = None,
    json_schema: str | Path | None = None,
    backend_factory: Callable[[Path, str], Backend] = Backend,
) -> FastAPI:
    """The FastAPI application. `model_path` defaults to the GGUF ``models/gguf/export.json`` names
    (or models/merged with the transformers engine); without one the server still starts, reports
    "no model" and answers 503. `token` defaults to LORAPIPE_API_TOKEN. With `json_schema` (a file),
    requests may ask for ``"constrained": true``: decoding under a llama.cpp grammar built from it.
    `backend_factory(path, engine)` loads a model (tests pass a fake)."""
    project = Path(project).resolve()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    schema = json.loads(read_text(json_schema)) if json_schema else None
    state = AppState(project, engine, token, schema, backend_factory)
    state.load(Path(model_path) if model_path else state.default_model(project), project)
    app = FastAPI(title="lorapipe", description=__doc__.split("\n\n")[0])
    app.state.lorapipe = state
    app.add_exception_handler(RequestValidationError, request_error)
    app.include_router(router)
    return app


def is_local(host: str) -> bool:
    """Is `host` an address only this machine can reach (a loopback address, or localhost)?"""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    model_path: str | Path | None = None,
    engine: str = "llama.cpp",
    json_schema: str | Path | None = None,
) -> None:
    """Run the API with uvicorn until interrupted. Only this machine can reach it unless `host` says
    otherwise, and then only with LORAPIPE_API_TOKEN set (every route but /status's health needs it)."""
    import uvicorn

    if not is_local(host) and not os.environ.get(TOKEN_ENV):
        raise ValueError(
            f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could query "
            f"the model and start training runs. Set {TOKEN_ENV} to a secret, or keep the default "
            "--host 127.0.0.1"
        )
    app = create_app(model_path, engine=engine, json_schema=json_schema)
    print(
        f"[serve] http://{host}:{port} (GET /status, POST /query, POST /v1/chat/completions, POST /train)", flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def chat_loop(model_path: str | Path | None = None, max_tokens: int = CHAT_MAX_TOKENS) -> None:
    """`lorapipe chat`: talk to the exported model in the terminal (empty line or Ctrl-D quits).
    `model_path` defaults to the GGUF models/gguf/export.json names; FileNotFoundError without one."""
    gguf = Path(model_path) if model_path else model_gguf(paths.GGUF)
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF at {gguf} (--gguf)")
    known = json.loads(read_text(paths.PROMPTS)) if paths.PROMPTS.is_file() else {}
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
