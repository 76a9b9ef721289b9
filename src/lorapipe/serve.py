"""A local HTTP API over the exported model: `lorapipe serve` (FastAPI on uvicorn).

    lorapipe serve --port 8000          # http://127.0.0.1:8000, the model models/gguf/export.json names

Routes (request bodies are the pydantic models below; a body that is not a JSON object gets 400, a
field of the wrong type or out of range 422 naming the field):
- ``GET /status``: health (always open): whether a model is loaded; with the token (if one is set),
  also the model file, the adapter's MLflow run id and params, and the state of the last /train run.
- ``POST /query`` (QueryRequest) → ``{"answer", "model", "system", "finish_reason", "usage"}``, with
  the task's system prompt from ``prompts.json``; ``constrained`` decodes under a grammar built from
  the server's JSON Schema (``--json-schema``, default the project's ``eval.json_schema``), as
  ``eval.constrained`` does; it is the default whenever the server has a schema.
- ``GET /v1/models``, ``GET /v1/models/{id}``: OpenAI's model list, the one model served (its file name).
- ``POST /v1/chat/completions`` (ChatRequest): OpenAI's chat API as far as the server can honour it
  (ChatRequest's docstring lists what is honoured, accepted without effect, or refused), streaming
  with server-sent events; ``usage`` counts the prompt's and the answer's real tokens (in a last
  chunk when ``stream_options.include_usage``), ``finish_reason`` is "length" when max_tokens cut the
  answer and "stop" otherwise; ``response_format`` json_object / json_schema decode under a llama.cpp
  grammar (json_schema without a ``schema``, which OpenAI makes optional: any JSON object). Without
  a system message, the first task's prompt is added. Under /v1 every error has
  OpenAI's body ``{"error": {"message", "type", "param", "code"}}``, an invalid request is 400 naming
  the parameter, so OpenAI clients raise it (``openai.BadRequestError``).
- ``POST /train`` (TrainRequest): ``{"params": {"lora.rank": 8, ...}}`` runs ``dvc repro`` in a
  separate git worktree, so the served model is untouched; one run at a time (409 otherwise). When it
  succeeds the server switches to the new model.

Prompts go through lorapipe's one chat encoder (``chat_encoder.encode_chat``) on both engines:
message contents are literal text, and a template without a system role gets the system prompt folded
into the first user message.

Answers, of /query and of /v1/chat/completions streamed or not, are the generated text without its
leading and trailing whitespace (``_stripped``: a stream holds whitespace back until text follows
it), so a streamed answer joins to exactly the non-streamed one.

Generation runs in FastAPI's threadpool, never on the event loop, so /status answers while an answer
is generated; each loaded model has one lock, so one llama.cpp context never runs two requests at once.

``lorapipe serve --retrieval``: every request's messages (of /query and /v1/chat/completions) are
rebuilt by ``retrieval.retrieval_messages`` from its system prompt, its last user message and the
top-k passages the BM25 index (``data/synth/index``, the synth stage's) finds for that message: the
prompt the knowledge evaluation measured. A request without a system message gets the system prompt
of the task ``synth.task`` (``Retrieval.task``) when prompts.json has it; /status says retrieval is on.

``LORAPIPE_API_TOKEN`` set: every route but the health part of /status needs
``Authorization: Bearer <token>`` (401 otherwise). The server listens on 127.0.0.1 unless ``--host``
names another address, and refuses to do that without the token.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request  # FastAPI reads the annotations by name
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorapipe import paths, tracking
from lorapipe.artifacts import model_gguf
from lorapipe.chat_encoder import ChatTemplateError, encode_chat, hf_codec, llama_codec
from lorapipe.generation import last_user_text, span_gbnf
from lorapipe.io import read_provenance
from lorapipe.params import ANSWER_MAX_TOKENS, MAX_SEQ_LEN, ParamsError, apply_overrides, read_yaml, validate_params
from lorapipe.retrieval import Index, retrieval_messages
from lorapipe.labeled import load_json_schema
from lorapipe.llama import threads
from lorapipe.textfiles import read_text

TOKEN_ENV = "LORAPIPE_API_TOKEN"
MAX_TOKENS = MAX_SEQ_LEN  # the most tokens a request may ask for: the longest context params allow


@dataclass(frozen=True)
class Sampling:
    """How one answer is decoded. Greedy at temperature 0; above it, sampled from the temperature-scaled
    distribution cut to its top_p mass (no top-k or min-p cut, as OpenAI defines the two knobs)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these; it is not part of it
    presence_penalty: float = 0.0  # llama.cpp engine only
    frequency_penalty: float = 0.0  # llama.cpp engine only
    grammar: Any = None  # a llama_cpp.LlamaGrammar (llama.cpp engine only)


@dataclass
class Generation:
    """What one answer cost and why it ended, filled in while its pieces are generated."""

    prompt_tokens: int
    completion_tokens: int = 0  # tokens the model generated, the end-of-turn token not counted
    finish_reason: str | None = None  # "length" when max_tokens cut it, else "stop" (an end token or a stop string)

    def usage(self) -> dict[str, int]:
        """OpenAI's usage object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _first_stop(text: str, stops: tuple[str, ...]) -> int:
    """Where the first stop string starts in `text`, or -1."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found, default=-1)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a stop string (not sent yet)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)


@dataclass(frozen=True)
class Retrieval:
    """Answers with retrieved passages in the prompt (``--retrieval``): the `top_k` passages `index`
    (loaded from `folder`) finds for the question. `task`: the prompts.json task whose system prompt
    a request without one gets (``synth.task``, the one the knowledge evaluation uses), else the first."""

    index: Index
    top_k: int
    task: str | None = None
    folder: Path = paths.RETRIEVAL_INDEX

    def apply(self, messages: list[dict]) -> tuple[list[dict], list[dict]]:
        """`messages` rebuilt as ``retrieval_messages(their system prompt, their last user message, the
        passages found for it)`` (no system message when they have none), and those passages (rows of
        passages.jsonl with ``score``, best first)."""
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        passages = self.index.search(question, self.top_k)
        rebuilt = retrieval_messages(system or "", question, passages)
        return (rebuilt if system is not None else rebuilt[1:]), passages

    def describe(self) -> str:
        """One line for the user: ``the top 2 of 57 passages of data/synth/index``."""
        return f"the top {self.top_k} of {len(self.index.passages)} passages of {self.folder}"

    def status(self) -> dict[str, Any]:
        """What /status reports: ``{"index", "passages", "top_k"}``."""
        return {"index": str(self.folder), "passages": len(self.index.passages), "top_k": self.top_k}


class Backend:
    """The model being served: a GGUF under llama.cpp, or a merged folder under transformers. Not
    thread-safe: the server runs it under its LoadedModel's lock."""

    def __init__(self, model_path: Path, engine: str = "llama.cpp", n_ctx: int = 2048):
        self.path, self.engine, self.n_ctx, self.codec = Path(model_path), engine, n_ctx, None
        if engine == "llama.cpp":
            import llama_cpp

            self.llm = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, n_threads=threads(), verbose=False)
            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            self.is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        else:
            from lorapipe.models import load_causal_lm, load_tokenizer

            self.tokenizer, self.model = load_tokenizer(self.path), load_causal_lm(self.path).eval()
            self.n_ctx = getattr(self.model.config, "max_position_embeddings", n_ctx)

    def encode(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: `messages` through the model's chat template with the generation
        prompt, by lorapipe's one chat encoder (``chat_encoder.encode_chat``), for both engines: a
        template without a system role gets the system prompt folded into the first user message,
        and contents are literal text (``<|im_end|>`` typed by a user is no end of turn). Raises
        ChatTemplateError when the template refuses the conversation or the model has none."""
        if self.codec is None:  # built once: llama_codec reads every token's attributes
            self.codec = llama_codec(self.llm) if self.engine == "llama.cpp" else hf_codec(self.tokenizer)
        return encode_chat(messages, self.codec)

    def generate(self, prompt: list[int], sampling: Sampling, done: Generation) -> Iterator[str]:
        """The answer's text pieces (an iterator, so callers can stream them); `done` gets its token
        count and finish reason as it goes. A stop string is never sent, not even in part."""
        pieces = self._llama(prompt, sampling, done) if self.engine == "llama.cpp" else self._hf(prompt, sampling, done)
        yield from pieces

    def _llama(self, prompt: list[int], sampling: Sampling, done: Generation) -> Iterator[str]:
        llm, stops = self.llm, sampling.stop
        llm.set_seed(sampling.seed % 2**32 if sampling.seed is not None else secrets.randbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")("ignore")  # a character split across tokens waits
        text, sent, done.finish_reason = "", 0, "length"
        # No reuse of the previous prompt's cached start: llama.cpp's logits for reused positions differ
        # in the last bits, enough to flip a greedy token, so an answer would depend on the request before.
        llm.reset()
        tokens = llm.generate(
            prompt,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            grammar=sampling.grammar,
        )
        for token in tokens:
            if self.is_end(token):
                done.finish_reason = "stop"
                break
            done.completion_tokens += 1
            text += decoder.decode(llm.detokenize([token]))
            cut = _first_stop(text, stops)
            if cut >= 0:
                text, done.finish_reason = text[:cut], "stop"
                break
            if done.completion_tokens >= sampling.max_tokens:
                break
            ready = len(text) - _held_back(text, stops)
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        if len(text) > sent:
            yield text[sent:]

    def _hf(self, prompt: list[int], sampling: Sampling, done: Generation) -> Iterator[str]:
        import torch

        tokenizer = self.tokenizer
        options: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        if sampling.stop:
            options |= {"stop_strings": list(sampling.stop), "tokenizer": tokenizer}
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=sampling.max_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **options,
            )
        new = out[0, len(prompt) :].tolist()
        ends = self.model.generation_config.eos_token_id
        ends = {ends} if isinstance(ends, int) else set(ends or [tokenizer.eos_token_id])
        ended = bool(new) and new[-1] in ends
        new = new[:-1] if ended else new
        text = tokenizer.decode(new, skip_special_tokens=True)
        cut = _first_stop(text, sampling.stop)
        done.completion_tokens = len(new)
        done.finish_reason = "length" if cut < 0 and not ended and len(new) >= sampling.max_tokens else "stop"
        yield text[:cut] if cut >= 0 else text

    def complete(self, messages: list[dict], max_tokens: int, temperature: float = 0.0, grammar=None) -> Iterator[str]:
        """The answer to `messages` as text pieces (greedy at temperature 0)."""
        prompt = self.encode(messages)
        yield from self.generate(prompt, Sampling(max_tokens, temperature, grammar=grammar), Generation(len(prompt)))

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


SpanConstraint = Annotated[
    bool | None,
    Field(
        description=(
            "free string values of the JSON answer (slot values) may only be spans of the user's message "
            "(labeled.span_schema); default: the server's (--span-constraint, params.yaml's eval.span_constraint) "
            "whenever the answer is decoded under the server's schema"
        )
    ),
]


class QueryRequest(_Body):
    # lorapipe's own route: a field it does not know ("temperature") is a mistake to name, not to ignore
    model_config = _Body.model_config | {"extra": "forbid"}

    prompt: Annotated[Text, AfterValidator(_has_text)] = Field(description="the question")
    task: str | None = Field(
        None, description="the task of prompts.json whose system prompt is used; default: the first"
    )
    max_tokens: int = Field(ANSWER_MAX_TOKENS, ge=1, le=MAX_TOKENS, description="tokens to generate at most")
    constrained: bool | None = Field(
        None,
        description=(
            "decode under the grammar of the server's JSON Schema (--json-schema, default the project's "
            "eval.json_schema); default: whenever the server has one and serves a GGUF"
        ),
    )
    span_constraint: SpanConstraint = None


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_parameter", message)


def _text_parts(value: Any) -> Any:
    """Message content as OpenAI clients send it: a string, or a list of text parts (joined by a newline)."""
    if not isinstance(value, list):
        return value
    texts = []
    for number, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            raise _unsupported(f"part {number} is {kind!r}: the served model reads text only (parts of type 'text')")
        texts.append(part["text"])
    return "\n".join(texts)


class Message(_Body):
    # a message as clients send it back: `name`, `refusal` and `annotations` have no place in a chat
    # template and change nothing; tool calls and audio would, and are refused
    model_config = _Body.model_config | {"extra": "forbid"}

    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: Annotated[Text, BeforeValidator(_text_parts)]
    name: str | None = Field(None, description="accepted and not used: chat templates have no place for it")
    refusal: str | None = None
    annotations: list[Any] | None = None
    tool_calls: list[Any] | None = None
    function_call: Any = None
    audio: Any = None

    @field_validator("role", mode="before")
    @classmethod
    def _no_tools(cls, role: Any) -> Any:
        if role in ("tool", "function"):
            raise _unsupported(f"{role} messages carry tool results, and lorapipe's server has no tool calling")
        return role

    @field_validator("tool_calls", "function_call", "audio")
    @classmethod
    def _nothing_it_cannot_read(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise _unsupported(
                f"lorapipe's server has no tool calling or audio; send the message without {info.field_name}"
            )
        return value


class StreamOptions(_Body):
    model_config = _Body.model_config | {"extra": "forbid"}

    include_usage: bool | None = Field(None, description="end the stream with a chunk carrying `usage`")
    include_obfuscation: bool | None = Field(None, description="accepted and not used (it pads chunks)")


class JSONSchemaFormat(_Body):
    model_config = _Body.model_config | {"extra": "forbid", "populate_by_name": True}

    name: str
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(
        None, alias="schema", description="the JSON Schema the answer must follow; none: any JSON object"
    )
    strict: bool | None = Field(None, description="the answer always follows the schema, strict or not")


class ResponseFormat(_Body):
    model_config = _Body.model_config | {"extra": "forbid"}

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('json_schema is given with "type": "json_schema", and only then')
        return self


# OpenAI's chat parameters the server cannot honour: when a request sets one to anything but its
# neutral value, it is refused (400 naming it) rather than silently ignored.
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v in (None, 1), "the server returns one choice per request; send n: 1 (or several requests)"),
    "logprobs": (lambda v: not v, "the server does not return log probabilities"),
    "top_logprobs": (lambda v: v is None, "the server does not return log probabilities"),
    "logit_bias": (lambda v: not v, "the server does not bias tokens"),
    "tools": (lambda v: not v, "the server has no tool calling"),
    "functions": (lambda v: not v, "the server has no function calling"),
    "tool_choice": (lambda v: v in (None, "none"), "the server has no tool calling"),
    "function_call": (lambda v: v in (None, "none"), "the server has no function calling"),
    "modalities": (lambda v: v in (None, ["text"]), "the model answers with text only"),
    "audio": (lambda v: v is None, "the model answers with text only"),
    "reasoning_effort": (lambda v: v is None, "the served model has no reasoning effort to set"),
    "verbosity": (lambda v: v is None, "the served model has no verbosity to set"),
    "web_search_options": (lambda v: v is None, "the server cannot search the web"),
    "moderation": (lambda v: v is None, "the server does not moderate"),
}


class ChatRequest(_Body):
    """OpenAI's chat completion request. Honoured: messages, max_tokens (or max_completion_tokens),
    temperature, top_p, seed, stop, presence/frequency_penalty (llama.cpp engine), stream and
    stream_options.include_usage, response_format (llama.cpp engine; json_schema without a schema is
    any JSON object, as json_object), n = 1. Answers are stripped of leading and trailing whitespace,
    streamed or not. Accepted and not used,
    since they do not change the answer: model (the server has one), user, safety_identifier,
    metadata, store, service_tier, prediction, prompt_cache_*, parallel_tool_calls. REFUSED lists the
    rest; any other field is refused as unknown (400 naming it)."""

    model_config = _Body.model_config | {"extra": "forbid"}

    messages: list[Message] = Field(min_length=1)
    model: str | None = Field(None, description="accepted whatever it names: the server has one model")
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="tokens to generate at most; default 256")
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="the same as max_tokens")
    temperature: float | None = Field(None, ge=0, le=2, description="0 (the default): greedy")
    top_p: float | None = Field(None, gt=0, le=1, description="sample from this top probability mass; default 1")
    seed: int | None = Field(None, description="the same seed and request give the same answer")
    stop: str | list[str] | None = Field(None, description="up to 4 strings that end the answer (not included)")
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool | None = Field(False, description="send the answer as server-sent events")
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: decode under a grammar"
    )
    task: str | None = Field(
        None, description="the task whose system prompt is added when no system message is given; default: the first"
    )
    constrained: bool | None = Field(
        None,
        description=(
            "decode under the grammar of the server's JSON Schema; default: whenever the server has one, "
            "serves a GGUF and the request has no response_format"
        ),
    )
    span_constraint: SpanConstraint = None
    # accepted and not used: they change nothing in the answer
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prediction: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_options: Any = None
    prompt_cache_retention: str | None = None
    parallel_tool_calls: bool | None = None
    # refused unless neutral (REFUSED)
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    modalities: list[Any] | None = None
    audio: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    moderation: Any = None

    @field_validator(*REFUSED)
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        accepted, why = REFUSED[info.field_name]
        if not accepted(value):
            raise _unsupported(f"{why}; leave {info.field_name} out")
        return value

    @field_validator("messages")
    @classmethod
    def _has_prompt(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise ValueError("the prompt is empty: give a user message with text")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or not all(stops):
            raise ValueError("give at most 4 stop strings, none of them empty")
        return stop

    # fields are validated in the order they are declared: info.data holds the ones above
    @field_validator("max_completion_tokens")
    @classmethod
    def _one_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        if None not in (value, info.data.get("max_tokens")) and value != info.data["max_tokens"]:
            raise ValueError("differs from max_tokens: give one of them")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("is only allowed with stream: true")
        return value

    @field_validator("constrained")
    @classmethod
    def _one_grammar(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        if value and info.data.get("response_format") is not None:
            raise ValueError("give response_format or constrained, not both")
        return value


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


class APIError(HTTPException):
    """An HTTP error that names the request parameter at fault and a code, as OpenAI's errors do."""

    def __init__(self, status_code: int, detail: str, *, param: str | None = None, code: str | None = None):
        super().__init__(status_code, detail)
        self.param, self.code = param, code


def _openai_route(request: Request) -> bool:
    return request.url.path == "/v1" or request.url.path.startswith("/v1/")


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None, headers=None
) -> JSONResponse:
    """OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``, which its clients raise
    as exceptions (a 400 as ``openai.BadRequestError`` with ``.param`` and ``.code``). An invalid
    request is a 400 there, where lorapipe's own routes answer 413 or 422."""
    status = 400 if status in (413, 422) else status
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's ``{"detail": ...}`` on lorapipe's routes; OpenAI's error body under /v1, an unknown
    route there included."""
    if not _openai_route(request):
        return await http_exception_handler(request, exc)
    message, code = str(exc.detail), getattr(exc, "code", None)
    if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
        message = (
            f"no route {request.method} {request.url.path}: lorapipe serves GET /v1/models, "
            "GET /v1/models/{id} and POST /v1/chat/completions"
        )
        code = "unknown_url"
    elif exc.status_code == 401:
        code = "invalid_api_key"
    return openai_error(exc.status_code, message, param=getattr(exc, "param", None), code=code, headers=exc.headers)


def _field(error: dict) -> str:
    loc = error["loc"][1:] if error["loc"][:1] == ("body",) else error["loc"]
    return ".".join(str(part) for part in loc)


def _problem(error: dict) -> dict[str, str]:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown parameter: lorapipe's server does not know it; leave it out"
    return {"field": _field(error), "message": message, "type": error["type"]}


async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not a JSON object; 422 naming each bad field otherwise (under /v1,
    400 in OpenAI's error body with the first bad field as its ``param``).

    A body is read as JSON only with ``Content-Type: application/json`` (FastAPI's strict content
    type): a web page can send text/plain to 127.0.0.1 without asking, but not JSON."""
    errors, openai = exc.errors(), _openai_route(request)
    message = None
    if any(e["type"] == "json_invalid" for e in errors):
        message = "the request body is not valid JSON"
    elif any(tuple(e["loc"]) == ("body",) and e["type"] != "value_error" for e in errors):
        sent_json = "json" in request.headers.get("content-type", "")
        message = "the request body must be a JSON object" + (
            "" if sent_json else ", sent with Content-Type: application/json"
        )
    if message:
        return openai_error(400, message) if openai else JSONResponse({"detail": message}, status_code=400)
    problems = [_problem(e) for e in errors]
    detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    if openai:
        unsupported = problems[0]["type"] in ("extra_forbidden", "unsupported_parameter")
        code = "unsupported_parameter" if unsupported else "invalid_value"
        return openai_error(400, detail, param=problems[0]["field"], code=code)
    return JSONResponse({"detail": detail, "errors": problems}, status_code=422)


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
        retrieval: Retrieval | None = None,
        span_constraint: bool = False,
    ):
        self.project, self.root, self.engine, self.token, self.schema = project, project, engine, token, schema
        self.span_constraint = span_constraint
        self.backend_factory, self.retrieval = backend_factory, retrieval
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

    def grammar(
        self,
        constrained: bool | None,
        response_format: ResponseFormat | None = None,
        span_constraint: bool | None = None,
        query: str = "",
    ):
        """The llama.cpp grammar a request asks for, else None: the server's JSON Schema for
        ``constrained`` (None, the default: constrained whenever the server has a schema, serves a GGUF
        and no `response_format` is given, so served answers are decoded as the evaluation's
        constrained ones); any JSON object for ``response_format`` json_object and for json_schema
        without a ``schema`` (optional in OpenAI's API); the request's own schema for json_schema.
        With `span_constraint` (None: the server's setting, for answers under the server's schema), the
        schema's free strings may only be spans of `query`, the user's message (labeled.span_schema).
        Raises APIError (422) naming the parameter when the engine cannot constrain
        decoding (transformers), span_constraint is asked without a schema, or no grammar can be built."""
        if constrained is None:
            constrained = self.schema is not None and self.engine == "llama.cpp" and response_format is None
        kind = response_format.type if response_format else "text"
        has_schema = constrained or (kind == "json_schema" and response_format.json_schema.json_schema is not None)
        if span_constraint and self.engine != "llama.cpp":
            raise APIError(
                422,
                "span_constraint needs decoding under a grammar, which only the llama.cpp engine does: serve the "
                "GGUF (lorapipe serve without --transformers) or leave it out",
                param="span_constraint",
            )
        if span_constraint and not has_schema:
            raise APIError(
                422,
                "span_constraint limits the strings of a JSON Schema's grammar: decode under the server's schema "
                "(constrained) or give response_format json_schema with a schema",
                param="span_constraint",
            )
        if span_constraint is None:
            span_constraint = self.span_constraint and constrained
        if not constrained and kind == "text":
            return None
        param = "constrained" if constrained else "response_format"
        if self.engine != "llama.cpp":
            raise APIError(
                422,
                f"{param} needs decoding under a grammar, which only the llama.cpp engine does: serve the "
                "GGUF (lorapipe serve without --transformers) or leave it out",
                param=param,
            )
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        if not constrained and (kind == "json_object" or response_format.json_schema.json_schema is None):
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)  # its root is an object
        if constrained and self.schema is None:
            raise APIError(
                422, "constrained decoding needs a schema: start the server with --json-schema FILE", param=param
            )
        schema = self.schema if constrained else response_format.json_schema.json_schema
        param = param if constrained else "response_format.json_schema.schema"
        try:
            if span_constraint:
                return LlamaGrammar.from_string(span_gbnf(schema, query), verbose=False)
            return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except ValueError as exc:
            if span_constraint and "span constraint" in str(exc):  # a message too long for it
                raise APIError(422, str(exc), param="span_constraint") from None
            raise APIError(
                422, f"no grammar can be built from this JSON Schema: {exc}; simplify the schema", param=param
            ) from None
        except Exception as exc:  # noqa: BLE001 - llama.cpp's converter asserts on what it cannot express
            raise APIError(
                422, f"no grammar can be built from this JSON Schema: {exc}; simplify the schema", param=param
            ) from None

    def with_system(self, messages: list[dict], task: str | None) -> list[dict]:
        """`messages` led by the task's system prompt from prompts.json, unless they start with one."""
        if messages and messages[0]["role"] == "system":
            return messages
        known = self.prompts()
        if task is not None and task not in known:
            raise APIError(422, f"unknown task {task!r}; known: {sorted(known)}", param="task")
        if task is None and self.retrieval and self.retrieval.task in known:
            task = self.retrieval.task  # the prompt the knowledge evaluation measured with retrieval
        system = known.get(task) if task else next(iter(known.values()), None)
        return ([{"role": "system", "content": system}] if system else []) + messages

    def request_messages(self, messages: list[dict], task: str | None) -> tuple[list[dict], list[dict]]:
        """The messages a request's are answered with: led by the task's system prompt (with_system),
        then, with retrieval on, rebuilt around the passages found for the last user message (which
        are returned too; [] without retrieval)."""
        messages = self.with_system(messages, task)
        return self.retrieval.apply(messages) if self.retrieval else (messages, [])


def _encode(model: Backend, messages: list[dict]) -> list[int]:
    """The prompt's token ids; APIError 422 naming the messages when the chat template refuses them."""
    try:
        return model.encode(messages)
    except ChatTemplateError as exc:
        raise APIError(422, str(exc), param="messages") from None


def _room(model: Backend, prompt: list[int], max_tokens: int | None, default: int) -> int:
    """The tokens to generate at most: `max_tokens`, or `default` cut to what the context has left.
    APIError 413 (code context_length_exceeded) when the prompt and `max_tokens` do not fit."""
    left = model.n_ctx - len(prompt)
    wanted = max_tokens if max_tokens is not None else min(default, left)
    if wanted > left or wanted < 1:
        raise APIError(
            413,
            f"the prompt is {len(prompt)} tokens and {max(wanted, 1)} more are asked for, but the "
            f"model's context holds {model.n_ctx}: shorten the prompt or max_tokens (a server started with "
            "--retrieval puts its passages into the prompt too: restart it with a lower --top-k)",
            param="messages",
            code="context_length_exceeded",
        )
    return wanted


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
CHAT_MAX_TOKENS = ANSWER_MAX_TOKENS  # /v1/chat/completions' default max_tokens


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
        "retrieval": state.retrieval.status() if state.retrieval else None,
        **state.run_info(),
        "train": state.training.snapshot(),
    }


@router.post("/query", dependencies=AUTHORIZED)
def query(body: QueryRequest, state: State) -> dict[str, Any]:
    loaded = state.require_model()
    messages, passages = state.request_messages([{"role": "user", "content": body.prompt}], body.task)
    rules = state.grammar(body.constrained, None, body.span_constraint, body.prompt)
    with loaded.session() as model:
        prompt = _encode(model, messages)
        done = Generation(len(prompt))
        sampling = Sampling(_room(model, prompt, body.max_tokens, body.max_tokens), grammar=rules)
        answer = "".join(_stripped(model.generate(prompt, sampling, done)))
    reply = {
        "answer": answer,
        "model": model.path.name,
        "system": messages[0]["content"] if messages[0]["role"] == "system" else None,
        "finish_reason": done.finish_reason,
        "usage": done.usage(),
    }
    if state.retrieval:
        reply["passages"] = [{"id": p.get("id"), "source": p.get("source"), "score": p["score"]} for p in passages]
    return reply


def _model_card(loaded: LoadedModel) -> dict[str, Any]:
    path = loaded.backend.path
    return {"id": path.name, "object": "model", "created": int(path.stat().st_mtime), "owned_by": "lorapipe"}


@router.get("/v1/models", dependencies=AUTHORIZED)
def models(state: State) -> dict[str, Any]:
    """OpenAI's model list: the one model served (none while no model is loaded)."""
    loaded = state.loaded
    return {"object": "list", "data": [_model_card(loaded)] if loaded else []}


@router.get("/v1/models/{model_id:path}", dependencies=AUTHORIZED)
def model(model_id: str, state: State) -> dict[str, Any]:
    loaded = state.loaded
    if loaded is None or model_id != loaded.backend.path.name:
        served = f"the server serves {loaded.backend.path.name!r}" if loaded else "no model is loaded"
        raise APIError(404, f"no model {model_id!r}: {served} (GET /v1/models)", param="model", code="model_not_found")
    return _model_card(loaded)


def _stripped(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces of an answer without its leading and trailing whitespace: joined, exactly
    ``"".join(pieces).strip()``, the same for a streamed and a whole answer. Leading whitespace is
    dropped; whitespace after text is held back until more text follows it, so a stream never sends
    what the end strips. No piece is empty."""
    started, pending = False, ""
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = piece.rstrip()
        if text:
            yield pending + text
            pending = piece[len(text) :]
        else:
            pending += piece
    # what is still pending is trailing whitespace: dropped


def _chunk(head: dict[str, Any], delta: dict, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [choice]}) + "\n\n"


def _events(
    loaded: LoadedModel, head: dict[str, Any], prompt: list[int], sampling: Sampling, include_usage: bool
) -> Iterator[str]:
    """Server-sent events of one answer; Starlette iterates this in its threadpool. With
    `include_usage`, every chunk carries ``usage: null`` and a last chunk, with no choices, the usage."""
    head = {**head, "usage": None} if include_usage else head
    try:
        with loaded.session() as model:
            done = Generation(len(prompt))
            yield _chunk(head, {"role": "assistant", "content": ""})
            for piece in _stripped(model.generate(prompt, sampling, done)):
                yield _chunk(head, {"content": piece})
            yield _chunk(head, {}, done.finish_reason)
            if include_usage:
                usage = {**head, "object": "chat.completion.chunk", "choices": [], "usage": done.usage()}
                yield "data: " + json.dumps(usage) + "\n\n"
    except HTTPException as exc:  # the model was replaced: the status line is sent already
        yield "data: " + json.dumps({"error": {"message": exc.detail, "type": "server_error"}}) + "\n\n"
    yield "data: [DONE]\n\n"


def _chat_messages(body: ChatRequest, state: State) -> list[dict]:
    """The request's messages as the chat template takes them (developer → system), led by the
    task's system prompt when they have none; with retrieval, rebuilt around the passages found."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in body.messages]
    return state.request_messages(messages, body.task)[0]


def _engine_can(body: ChatRequest, engine: str) -> None:
    """The transformers engine has no presence or frequency penalty: refuse them (400 naming them)."""
    for param in ("presence_penalty", "frequency_penalty"):
        if engine != "llama.cpp" and getattr(body, param):
            raise APIError(
                422, f"{param} is honoured by the llama.cpp engine only: serve the GGUF or leave it out", param=param
            )


@router.post("/v1/chat/completions", dependencies=AUTHORIZED)
def chat_completions(body: ChatRequest, state: State):
    loaded = state.require_model()
    _engine_can(body, state.engine)
    messages = _chat_messages(body, state)
    query = last_user_text([{"role": m.role, "content": m.content} for m in body.messages])
    rules = state.grammar(body.constrained, body.response_format, body.span_constraint, query)
    with loaded.session() as model:  # a refusal must come before a stream starts
        prompt = _encode(model, messages)
        limit = _room(model, prompt, body.max_tokens or body.max_completion_tokens, CHAT_MAX_TOKENS)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    sampling = Sampling(
        limit,
        temperature=body.temperature or 0.0,
        top_p=body.top_p or 1.0,
        seed=body.seed,
        stop=stop,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        grammar=rules,
    )
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": model.path.name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(loaded, head, prompt, sampling, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")
    with loaded.session() as model:
        done = Generation(len(prompt))
        answer = "".join(_stripped(model.generate(prompt, sampling, done)))
    message = {"role": "assistant", "content": answer}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], "usage": done.usage()}


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
    retrieval: Retrieval | None = None,
    span_constraint: bool = False,
) -> FastAPI:
    """The FastAPI application. `model_path` defaults to the GGUF ``models/gguf/export.json`` names
    (or models/merged with the transformers engine); without one the server still starts, reports
    "no model" and answers 503. `token` defaults to LORAPIPE_API_TOKEN. With `json_schema` (a file),
    answers are decoded under a llama.cpp grammar built from it unless a request says
    ``"constrained": false`` or gives a ``response_format`` (AppState.grammar); with `span_constraint`,
    the schema's free strings limited to spans of each request's user message unless it says
    ``"span_constraint": false``. Raises ValueError for `span_constraint` without `json_schema`.
    `backend_factory(path, engine)` loads a model (tests pass a fake). `retrieval`: answer with the
    passages it finds in the prompt (``lorapipe serve --retrieval``); None: closed book."""
    project = Path(project).resolve()
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    schema = (
        load_json_schema(json_schema, "--json-schema", warn=f"[serve] warning: {json_schema}") if json_schema else None
    )
    if span_constraint and (schema is None or engine != "llama.cpp"):
        raise ValueError(
            "the span constraint limits the strings of the schema's grammar, which only the llama.cpp engine "
            "decodes under: give a JSON Schema and serve the GGUF"
        )
    state = AppState(project, engine, token, schema, backend_factory, retrieval, span_constraint)
    if schema is not None and engine == "llama.cpp":
        try:  # every request decodes under it by default: a schema llama.cpp cannot follow fails now
            state.grammar(True)
        except APIError as exc:
            raise ValueError(f"{json_schema}: {exc.detail}") from None
    state.load(Path(model_path) if model_path else state.default_model(project), project)
    app = FastAPI(title="lorapipe", description=__doc__.split("\n\n")[0])
    app.state.lorapipe = state
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
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
    retrieval: Retrieval | None = None,
    span_constraint: bool = False,
) -> None:
    """Run the API with uvicorn until interrupted. Only this machine can reach it unless `host` says
    otherwise, and then only with LORAPIPE_API_TOKEN set (every route but /status's health needs it).
    `retrieval`: every answer gets the passages it finds in its prompt (see the module docstring)."""
    import uvicorn

    if not is_local(host) and not os.environ.get(TOKEN_ENV):
        raise ValueError(
            f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could query "
            f"the model and start training runs. Set {TOKEN_ENV} to a secret, or keep the default "
            "--host 127.0.0.1"
        )
    app = create_app(
        model_path, engine=engine, json_schema=json_schema, retrieval=retrieval, span_constraint=span_constraint
    )
    if retrieval:
        print(f"[serve] retrieval on: every prompt gets {retrieval.describe()}", flush=True)
    print(
        f"[serve] http://{host}:{port} (GET /status, POST /query, GET /v1/models, POST /v1/chat/completions, "
        "POST /train)",
        flush=True,
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
