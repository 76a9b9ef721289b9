"""A fake OpenAI-compatible teacher on 127.0.0.1 (a random free port), for tests of synth and the
endpoint teacher: deterministic question–answer pairs derived from the passage, and the faults a real
endpoint has, selectable per server or per passage.

    from fake_teacher import FakeTeacher

    with FakeTeacher(models=["qwen2.5"], die_after=3) as server:
        params = DEFAULTS.synth.model_copy(update={"base_url": server.url, "model": "qwen2.5"})
        ...
        assert len(server.completions) == 4        # 3 answered, the 4th dropped
        server.passages_asked()                    # the user messages of the answered completions
        server.revive()                            # answers again, at the same URL (a resumed run)

Routes: ``GET /v1/models`` lists `models`; ``POST /v1/chat/completions`` answers ``{"pairs": [...]}``
with as many pairs as the schema's maxItems allows (the schema of ``response_format`` json_schema, or
the one written into the system message, else 3 pairs of at most 200/300 characters). Pair k: the
question "What does the passage say about <first content word of sentence k>?" and the answer
sentence k of the passage (its longest paragraph's sentences first), cut to the schema's maxLength:
grounded in the passage by construction.

Modes (`mode=` for every passage, or a marker word anywhere in the user message for that passage):
``UNGROUNDED`` answers with words the passage lacks; ``DUPLICATE`` asks the same question every time;
``TRUNCATED`` cuts the JSON in half with finish_reason "length"; ``NOTJSON`` answers prose; ``ERROR500``
answers HTTP 500 (the client retries it); ``TOOLONG`` answers 400 (a prompt over the model's context).
Server faults: `die_after=N` drops every request after the N-th answered completion (the connection
closes without a response, as a crashed server's does); `require_key="..."` answers 401 without
``Authorization: Bearer <key>``; `reject_response_format` (True: json_schema; or a set of types)
answers 400 about response_format; a model not in `models` gets 404; `port` a fixed port (a server
started again at the same URL). Every request is recorded
in `requests` (method, path, headers with lowercase names, parsed body).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKERS = ("UNGROUNDED", "DUPLICATE", "TRUNCATED", "NOTJSON", "ERROR500", "TOOLONG")
UNGROUNDED_ANSWER = "Purple elephants juggle quietly on Neptune every Thursday."
DUPLICATE_QUESTION = "What is described in this passage?"
PROSE = "Sure! Here are some questions you could ask about this passage."
_STOP = {"the", "a", "an", "of", "and", "or", "to", "in", "on", "is", "are", "was", "it", "this", "that", "for", "with"}
_SCHEMA_NOTE = re.compile(r"JSON schema: (\{.*\})\s*$", re.S)


def passage_sentences(text: str) -> list[str]:
    """The sentences of `text` that answers are taken from: the longest paragraph's first, then the other
    paragraphs' in order (so an instruction line around the passage comes last)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    longest = max(range(len(paragraphs)), key=lambda i: len(paragraphs[i]), default=0)
    ordered = paragraphs[longest : longest + 1] + paragraphs[:longest] + paragraphs[longest + 1 :]
    return [s.strip() for p in ordered for s in re.split(r"(?<=[.!?])\s+", " ".join(p.split())) if s.strip()]


def _topic(sentence: str) -> str:
    words = re.findall(r"\w+", sentence)
    return next((w for w in words if w.lower() not in _STOP and len(w) > 2), words[0] if words else "it")


def _schema_of(body: dict) -> dict | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    for message in body.get("messages", []):
        found = message.get("role") == "system" and _SCHEMA_NOTE.search(message.get("content") or "")
        if found:
            return json.loads(found.group(1))
    return None


def _bounds(schema: dict | None) -> tuple[int, int, int]:
    """(maxItems, question maxLength, answer maxLength) of a pairs schema; (3, 200, 300) without one."""
    try:
        pairs = schema["properties"]["pairs"]
        fields = pairs["items"]["properties"]
        return (
            pairs.get("maxItems", 3),
            fields["question"].get("maxLength", 200),
            fields["answer"].get("maxLength", 300),
        )
    except (KeyError, TypeError):
        return 3, 200, 300


def fake_pairs(passage: str, schema: dict | None, mode: str = "good") -> list[dict]:
    """The pairs the fake writes for `passage` (the user message) under `schema` in `mode`."""
    n, max_q, max_a = _bounds(schema)
    sentences = passage_sentences(passage) or ["Nothing."]
    pairs = []
    for k in range(min(n, len(sentences))):
        question = f"What does the passage say about {_topic(sentences[k])}?"
        answer = sentences[k]
        if mode == "UNGROUNDED":
            answer = UNGROUNDED_ANSWER
        if mode == "DUPLICATE":
            question = DUPLICATE_QUESTION
        pairs.append({"question": question[:max_q], "answer": answer[:max_a]})
    return pairs


class FakeTeacher:
    """The fake endpoint; a context manager that serves in a background thread (see the module docstring).
    `url` is its API root (``http://127.0.0.1:<port>/v1``); `completions` the chat requests received
    (answered or not), `requests` every request."""

    def __init__(
        self,
        models: tuple[str, ...] | list[str] = ("fake-teacher",),
        *,
        mode: str = "good",
        die_after: int | None = None,
        require_key: str | None = None,
        reject_response_format: bool | set[str] = False,
        port: int = 0,
    ) -> None:
        self.models = list(models)
        self.mode = mode.upper()
        self.die_after = die_after
        self.require_key = require_key
        if reject_response_format is True:
            reject_response_format = {"json_schema"}
        self.rejected_formats = set(reject_response_format or ())
        self.requests: list[dict] = []
        self.answered = 0
        self.dead = False
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port  # 0: a free one, chosen at start

    # --- lifecycle ---
    def __enter__(self) -> FakeTeacher:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.fake = self
        self.port = self._server.server_address[1]  # kept after stop(): a stopped fake's URL refuses connections
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and close the port (a later connection is refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def revive(self, die_after: int | None = None) -> None:
        """Answer again after `die_after` dropped requests (a restarted server at the same URL, so the
        teacher's identity, and the synth cache, are the same): `die_after` more completions, or all."""
        with self._lock:
            self.dead = False
            self.die_after = None if die_after is None else self.answered + die_after

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- what was asked ---
    @property
    def completions(self) -> list[dict]:
        """The recorded POST /v1/chat/completions requests, in arrival order."""
        return [r for r in self.requests if r["method"] == "POST" and r["path"].endswith("/chat/completions")]

    def passages_asked(self, answered_only: bool = True) -> list[str]:
        """The user messages of the chat requests (by default only those the fake answered with pairs)."""
        return [
            r["body"]["messages"][-1]["content"] for r in self.completions if r.get("answered") or not answered_only
        ]

    # --- answering ---
    def reply(self, body: dict) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one chat request; counts it when it is answered."""
        if body.get("model") not in self.models:
            return 404, _error(f"model '{body.get('model')}' not found", "model_not_found")
        fmt = (body.get("response_format") or {}).get("type")
        if fmt in self.rejected_formats:
            return 400, _error(f"response_format type '{fmt}' is not supported by this server", "invalid_request")
        passage = body["messages"][-1]["content"]
        mode = next((m for m in MARKERS if m in passage), self.mode)
        if mode == "ERROR500":
            return 500, _error("the model crashed", "server_error")
        if mode == "TOOLONG":
            return 400, _error("this model's maximum context length is 2048 tokens", "context_length_exceeded")
        text = json.dumps({"pairs": fake_pairs(passage, _schema_of(body), mode)}, ensure_ascii=False)
        finish = "stop"
        if mode == "TRUNCATED":
            text, finish = text[: len(text) // 2], "length"
        elif mode == "NOTJSON":
            text = PROSE
        return 200, {
            "id": f"chatcmpl-{self.answered}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": len(passage.split()), "completion_tokens": len(text.split()), "total_tokens": 0},
        }


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    """One request to the fake; the FakeTeacher is `self.server.fake`."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection without a response, as a server that died does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _admit(self, body: dict | None, route: str) -> dict | None:
        """Record the request; the record when it is to be answered, None when it was dropped or refused."""
        fake = self.server.fake
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        with fake._lock:
            fake.requests.append(record)
        if fake.dead:
            return self._drop()
        if fake.require_key is not None and self.headers.get("Authorization") != f"Bearer {fake.require_key}":
            return self._send(401, _error("Incorrect API key provided.", "invalid_api_key"))
        if self.path.rstrip("/") != route:
            return self._send(404, _error(f"no route {self.path}", "not_found"))
        return record

    def do_GET(self) -> None:
        if self._admit(None, "/v1/models") is not None:
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.server.fake.models]
            self._send(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        record = self._admit(json.loads(raw or b"{}"), "/v1/chat/completions")
        if record is None:
            return
        status, payload = fake.reply(record["body"])
        if status == 200:
            with fake._lock:
                fake.dead = fake.dead or (fake.die_after is not None and fake.answered >= fake.die_after)
                if not fake.dead:
                    fake.answered += 1
                    record["answered"] = True
            if fake.dead:
                return self._drop()
        self._send(status, payload)
