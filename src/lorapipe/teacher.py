"""The teachers that write question–answer pairs for the synth stage: llama.cpp on a GGUF file (the
base model's by default, so synthesis runs offline) or any OpenAI-compatible endpoint (Ollama,
llama.cpp's server, vLLM).

    from pathlib import Path
    from lorapipe.params import DEFAULTS
    from lorapipe.teacher import make_teacher, pairs_schema, parse_pairs

    passage = "LoRA adds small low-rank matrices to a frozen model; only they are trained."
    teacher = make_teacher(DEFAULTS.synth, model_name="smollm2-135m-instruct", base_dir=Path("models/base"))
    teacher.check()  # TeacherError (what is wrong and how to fix it) before any work
    try:
        reply = teacher.generate(
            [{"role": "system", "content": "Write question-answer pairs as JSON."},
             {"role": "user", "content": passage}],
            pairs_schema(2, 200, 300), max_tokens=160, temperature=0.0, seed=42)
    finally:
        teacher.close()
    pairs, problem = parse_pairs(reply)  # [{"question", "answer"}, ...], None | "truncated" | "not_json"

Errors: TeacherError (make_teacher, check: the teacher cannot be used; the message names the URL, model,
variable or file and the fix), TeacherUnavailable (mid-run: the endpoint went away after the client's
retries; what was answered is kept, a rerun resumes), TeacherRequestError (one request refused, 4xx).

Every reply is decoded under a JSON schema (pairs_schema): a llama.cpp grammar built from it, or an
endpoint's ``response_format`` ``json_schema``. An endpoint that refuses that (HTTP 400 about
response_format) is asked with ``json_object`` and then with no response_format, the schema written
into the system message instead, each step once per run and said in one line. A teacher's `identity`
(what decides its outputs: the GGUF file's sha256, or the endpoint's URL and model) keys the synth
cache; the API key is read from the environment variable that ``synth.api_key_env`` names and is never
printed, logged, written or part of an identity, description or error message.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from lorapipe import paths
from lorapipe.chat_encoder import ChatTemplateError, encode_chat, llama_codec
from lorapipe.export import convert_to_gguf, converter_dir
from lorapipe.io import atomic_outputs, hash_file
from lorapipe.llama import threads
from lorapipe.models import BUNDLED, bundled_gguf
from lorapipe.params import SynthParams

_FORMATS = ("json_schema", "json_object", "plain")  # what an endpoint is asked for, best first
_PROMPT_ALLOWANCE = 512  # tokens for the system prompt, the chat template and the request line
_CONVERTED_TYPE = "q8_0"  # a converted teacher: twice as fast as f16 on a CPU, nearly the same answers


@dataclass(frozen=True)
class Reply:
    """One completion: `text` the raw text the teacher wrote; `finish_reason` "stop" (it ended by
    itself), "length" (cut at max_tokens) or whatever else the backend says."""

    text: str
    finish_reason: str


class TeacherError(RuntimeError):
    """A teacher that cannot be used (unreachable endpoint, unknown model, unset key variable, a GGUF
    that does not load): raised by make_teacher or check(), before any work; the message says what to fix."""


class TeacherUnavailable(TeacherError):
    """The teacher went away mid-run (connection refused or lost, timeouts, HTTP 5xx or 429 after the
    client's retries): the caller keeps what it already has and can resume later."""


class TeacherRequestError(TeacherError):
    """The endpoint refused one request (an HTTP 4xx other than authentication, e.g. a prompt longer than
    its context) while it keeps serving others: the caller may count it and go on."""


@runtime_checkable
class Teacher(Protocol):
    """What synth needs of a teacher. `identity`: what decides its outputs, for the cache key
    ("gguf:<sha256>" or "endpoint:<base_url>|<model>", never the key); `description`: for messages;
    `concurrency`: requests it serves in parallel."""

    identity: str
    description: str
    concurrency: int

    def check(self) -> None: ...

    def generate(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply: ...

    def close(self) -> None: ...


def pairs_schema(n: int, max_question_chars: int, max_answer_chars: int) -> dict:
    """The JSON schema of a teacher's reply: ``{"pairs": [{"question", "answer"}, ...]}`` with 1 to `n`
    pairs, each question 1 to `max_question_chars` characters and each answer 1 to `max_answer_chars`,
    no other keys (llama.cpp's grammar honours minItems/maxItems and minLength/maxLength)."""

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


def _pairs_in(value) -> list[dict]:
    """The pairs in a decoded JSON value: ``{"pairs": [...]}``, a bare list of pairs, or one pair object;
    items without a string or number question and answer are skipped."""
    if isinstance(value, dict):
        value = value.get("pairs", [value])
    pairs = []
    for item in value if isinstance(value, list) else []:
        fields = [item.get("question"), item.get("answer")] if isinstance(item, dict) else [None]
        if all(isinstance(f, str | int | float) and not isinstance(f, bool) for f in fields):
            pairs.append({"question": str(fields[0]).strip(), "answer": str(fields[1]).strip()})
    return pairs


def parse_pairs(reply: Reply) -> tuple[list[dict], str | None]:
    """The question–answer pairs in a teacher's reply: ``([{"question": str, "answer": str}, ...], None)``,
    each string stripped, in the reply's order (``{"pairs": []}`` gives ``([], None)``: the teacher
    found nothing to ask); ``([], "not_json")`` for text that is not JSON or holds no pair. A reply cut
    at its token limit (finish_reason "length") gives ``(complete, "truncated")``: the pairs written
    whole before the cut (``{"pairs": [{...}, {...}, {"question": "Wh`` keeps two), never the cut one.
    The first JSON value that holds pairs is read, wherever it starts (after a Markdown code fence or
    prose, as models without a grammar write; inside another object): ``{"pairs": [...]}``, a bare list
    of pairs or one pair object; items without a string or number question and answer are skipped.
    Never raises."""
    if reply.finish_reason == "length":
        return _complete_pairs(reply.text), "truncated"
    decoder = json.JSONDecoder()
    for found in itertools.islice(re.finditer(r"[\[{]", reply.text), 64):  # 64 tries: bounded on long prose
        try:
            value, _ = decoder.raw_decode(reply.text, found.start())
        except ValueError:
            continue
        pairs = _pairs_in(value)
        if pairs or (isinstance(value, dict) and value.get("pairs") == []):  # none to write is an answer too
            return pairs, None
    return [], "not_json"


def _complete_pairs(text: str) -> list[dict]:
    """The pair objects written whole in the array of a reply that was cut: each item of the first
    ``[`` after ``"pairs"`` (or the first ``[``) decoded one by one until one does not decode."""
    decoder = json.JSONDecoder()
    key = text.find('"pairs"')
    start = text.find("[", key if key >= 0 else 0)
    items, at = [], start + 1
    while start >= 0 and at < len(text):
        at = len(text) - len(text[at:].lstrip(" \t\r\n,"))
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        items.append(value)
    return _pairs_in(items) if items else []


# --- llama.cpp ---------------------------------------------------------------------------------------


def _folder_hash(folder: Path) -> str:
    """sha256 (hex) of a model folder's files: names, sizes and bytes, in name order; the provenance
    file and hidden files are left out (they do not change the weights)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative == paths.PROVENANCE_NAME or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        digest.update(f"{relative}\0{path.stat().st_size}\0".encode())
        hash_file(path, digest)
    return digest.hexdigest()


def teacher_gguf(model_name: str, base_dir: Path) -> Path:
    """The GGUF file of the base model for the llama.cpp teacher: the bundled GGUF when `model_name` is a
    bundled model (models.BUNDLED); else `base_dir` converted once by llama.cpp's converter
    (export.convert_to_gguf, q8_0) into ``paths.cache_dir()/"teacher"/<sha256 of base_dir's files>.gguf``,
    reused while the folder's content is the same (written atomically: a killed conversion leaves none).

    Raises TeacherError when `base_dir` is not a folder or the conversion fails (the message says what
    to use instead); FileNotFoundError from models.bundled_gguf when the bundled package is missing."""
    if model_name in BUNDLED:
        return bundled_gguf(model_name)
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise TeacherError(f"the base model folder {base_dir} is missing: run `dvc repro base` first")
    out = paths.cache_dir() / "teacher" / f"{_folder_hash(base_dir)}.gguf"
    if out.is_file():
        return out
    print(f"[synth] converting {base_dir} to GGUF once for the llama.cpp teacher (cached as {out})", flush=True)
    try:
        with atomic_outputs() as place:
            convert_to_gguf(base_dir, place(out), _CONVERTED_TYPE, converter_dir())
    except Exception as exc:  # noqa: BLE001 - the converter's RuntimeError, pip's CalledProcessError, OSError
        raise TeacherError(
            f"{base_dir} could not be converted to GGUF for the llama.cpp teacher ({type(exc).__name__}: {exc}); "
            "set synth.teacher to the path of a GGUF file of a chat model, or synth.base_url and synth.model to "
            "an OpenAI-compatible endpoint"
        ) from None
    return out


class LlamaTeacher:
    """llama.cpp (llama-cpp-python) on a GGUF file, one request at a time. Prompts are encoded with the
    GGUF's own chat template (chat_encoder.encode_chat over llama_codec, as generation.answer_all does),
    decoded under a grammar built from the schema, ended at the model's EOS; each request is evaluated
    from an empty cache, so a reply does not depend on the requests before it. The context holds
    `n_ctx` tokens and grows when a prompt plus its max_tokens needs more.

    Raises TeacherError when the file is missing; check() when it does not load or has no chat template."""

    concurrency = 1

    def __init__(self, gguf_path: str | Path, *, n_ctx: int = 2048) -> None:
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise TeacherError(f"the teacher GGUF {self.path} does not exist")
        self.identity = f"gguf:{hash_file(self.path).hexdigest()}"
        self.description = f"llama.cpp on {self.path}"
        self._n_ctx = n_ctx
        self._llm = self._codec = self._eos = None
        self._grammars: dict[str, object] = {}
        self._lock = threading.Lock()

    def _load(self, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.close()
        try:
            self._llm = Llama(str(self.path), n_ctx=n_ctx, n_threads=threads(), verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise TeacherError(
                f"llama.cpp cannot load the teacher {self.path} ({exc}): synth.teacher must be 'base' or the path "
                "of a GGUF file of a chat model"
            ) from None
        try:
            self._codec = llama_codec(self._llm, name=f"the chat template of {self.path.name}")
            encode_chat([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], self._codec)
        except ChatTemplateError as exc:
            self.close()
            raise TeacherError(f"the teacher {self.path} cannot be prompted: {exc}; use a chat model's GGUF") from None
        self._eos = self._llm._model.token_get_text(self._llm.token_eos())

    def check(self) -> None:
        """Load the model (once). Raises TeacherError when it does not load or has no usable chat template."""
        with self._lock:
            if self._llm is None:
                self._load(self._n_ctx)

    def _grammar(self, schema: dict):
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self._grammars[key]

    def generate(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply:
        """One completion of `messages` under `schema`'s grammar: at most `max_tokens` tokens, sampled
        at `temperature` with `seed` (0: greedy, the same text every time). Raises TeacherError as check()."""
        with self._lock:
            if self._llm is None:
                self._load(self._n_ctx)
            ids = encode_chat(messages, self._codec)
            if len(ids) + max_tokens > self._llm.n_ctx():
                self._load(-(-(len(ids) + max_tokens) // 256) * 256)
            # Forget the previous prompt: llama-cpp-python would reuse its cached prefix (the shared system
            # prompt), and logits computed in other batches differ in the last bits, enough to change a
            # greedy token; so each reply depends on its own request only, in any order or run.
            self._llm.reset()
            out = self._llm.create_completion(
                ids,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                grammar=self._grammar(schema),
                stop=[self._eos],
            )
        choice = out["choices"][0]
        return Reply(choice["text"], choice.get("finish_reason") or "stop")

    def close(self) -> None:
        """Free the model (a later check() or generate() loads it again)."""
        if self._llm is not None:
            self._llm.close()
        self._llm = self._codec = None


class _TeacherActor:
    """What one Ray actor of RayLlamaTeacher holds: a LlamaTeacher on the GGUF `model` (its bytes, from
    Ray's object store) written as ``<temporary folder>/<name>`` on the actor's node."""

    def __init__(self, model: bytes, name: str, n_ctx: int) -> None:
        from lorapipe.cluster import scratch_folder

        self._folder = scratch_folder("teacher")  # removed by close(), or by the next actor if this one is killed
        try:
            path = self._folder / name
            path.write_bytes(model)
            del model
            self.teacher = LlamaTeacher(path, n_ctx=n_ctx)
            self.teacher.check()
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise

    def identity(self) -> str:
        return self.teacher.identity

    def generate(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply:
        return self.teacher.generate(messages, schema, max_tokens, temperature, seed)

    def close(self) -> None:
        self.teacher.close()
        shutil.rmtree(self._folder, ignore_errors=True)


START_TIMEOUT_S = 900.0  # seconds for the teacher's actors to receive the GGUF and load it


class RayLlamaTeacher:
    """LlamaTeacher on a Ray cluster (``synth.executor: ray``): one actor per live node of the cluster
    that `address` or RAY_ADDRESS names (else a local Ray started for the run; lorapipe.cluster), each
    holding one of the node's CPUs for Ray and a LlamaTeacher on the GGUF that generates on all its
    physical cores; the GGUF's bytes travel through Ray's object store (no shared filesystem).
    `concurrency` is the number of actors; each request goes to an idle one. Its `identity` is
    LlamaTeacher's (the GGUF's sha256), so replies are cached under the same keys and equal the
    local teacher's on the same CPU type (greedy decoding, each request from an empty cache).

    An actor that dies (its node lost) is dropped and the request goes to another; when none is left,
    TeacherUnavailable (what was answered is cached). Raises TeacherError when the file is missing;
    check() when Ray is missing, the cluster does not answer, the model does not load on a node, or
    the actors do not start within `START_TIMEOUT_S` (the cluster's CPUs taken)."""

    def __init__(self, gguf_path: str | Path, *, n_ctx: int = 2048, address: str | None = None) -> None:
        local = LlamaTeacher(gguf_path, n_ctx=n_ctx)  # not loaded: the file checked and hashed as locally
        self.path, self.identity = local.path, local.identity
        self.description = f"llama.cpp on {self.path}, on Ray"
        self.concurrency = 1
        self._n_ctx, self._address = n_ctx, address
        self._session = self._ray = None
        self._actors: list = []  # every actor started, for close()
        self._idle: list = []
        self._alive = 0
        self._ready = threading.Condition()

    def check(self) -> None:
        """Join (or start) the cluster and start the actors, each with the model loaded. Raises TeacherError."""
        if self._ray is not None:
            return
        from lorapipe.cluster import ClusterError, ray_session

        session = ray_session(self._address, num_cpus=threads(), param="synth.ray_address")
        try:
            ray = session.__enter__()
        except ClusterError as exc:
            raise TeacherError(str(exc)) from None
        self._session, self._ray = session, ray
        try:
            self._start_actors(ray)
        except BaseException:
            self.close()
            raise

    def _start_actors(self, ray) -> None:
        from ray.exceptions import GetTimeoutError, RayError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) >= 1]
        model = ray.put(self.path.read_bytes())
        actor = ray.remote(max_restarts=0, max_task_retries=0)(_TeacherActor)
        actors = [
            actor.options(
                num_cpus=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            ).remote(model, self.path.name, self._n_ctx)
            for node in nodes
        ]
        self._actors = actors
        try:
            identities = ray.get([a.identity.remote() for a in actors], timeout=START_TIMEOUT_S)
        except GetTimeoutError:
            raise TeacherError(
                f"the teacher's {len(actors)} Ray actor(s) did not start within {START_TIMEOUT_S:g} s: is every "
                "node's CPU taken by other work? (ray status)"
            ) from None
        except RayError as exc:
            cause = _ray_cause(exc)
            raise TeacherError(f"the teacher {self.path} could not start on the Ray cluster: {cause}") from None
        if any(identity != self.identity for identity in identities):
            raise TeacherError(f"the teacher GGUF {self.path} arrived changed on a Ray node")
        self._idle, self._alive, self.concurrency = actors, len(actors), len(actors)
        print(f"[synth] the teacher runs on {len(actors)} Ray actor(s), one per node", flush=True)

    def _take(self):
        with self._ready:
            while not self._idle:
                if self._alive == 0:
                    raise TeacherUnavailable(f"every Ray actor of the teacher ({self.description}) died")
                self._ready.wait()
            return self._idle.pop()

    def _give_back(self, actor, alive: bool) -> None:
        with self._ready:
            if alive:
                self._idle.append(actor)
            else:
                self._alive -= 1
            self._ready.notify_all()

    def generate(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply:
        """LlamaTeacher.generate on an idle actor; a request whose actor dies is asked again of another.
        Raises TeacherError as LlamaTeacher does, TeacherUnavailable when no actor is left."""
        self.check()
        from ray.exceptions import RayActorError, RayTaskError

        while True:
            actor = self._take()
            try:
                reply = self._ray.get(actor.generate.remote(messages, schema, max_tokens, temperature, seed))
            except RayActorError:
                self._give_back(actor, alive=False)
                continue
            except RayTaskError as exc:
                self._give_back(actor, alive=True)
                cause = exc.as_instanceof_cause()
                raise cause if isinstance(cause, TeacherError) else TeacherError(_ray_cause(exc)) from None
            self._give_back(actor, alive=True)
            return reply

    def close(self) -> None:
        """Stop the actors (their temporary model files removed) and leave the cluster (a local Ray stops)."""
        if self._ray is None:
            return
        for actor in self._actors:  # those that started remove their copy of the model; dead ones cannot
            with contextlib.suppress(Exception):
                self._ray.get(actor.close.remote(), timeout=30)
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        self._actors, self._idle, self._alive, self._ray = [], [], 0, None
        session, self._session = self._session, None
        session.__exit__(None, None, None)


def _ray_cause(exc: Exception) -> str:
    """What a Ray task or actor raised, without Ray's traceback and colours: the cause's type and first
    line, or for an actor that died in its constructor (ActorDiedError keeps only the text) the last
    ``SomeError: message`` line of that text."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception) and not hasattr(cause, "cause"):
        return f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    raised = [re.match(r"^\s*(?:\w+\.)*(\w+(?:Error|Exception)): (.*)$", line) for line in text.splitlines()]
    found = [match for match in raised if match]
    if found:
        return f"{found[-1][1]}: {found[-1][2]}"
    return f"{type(exc).__name__}: {(text.strip().splitlines() or [''])[0]}"


# --- OpenAI-compatible endpoints ---------------------------------------------------------------------


def _api_key(api_key_env: str | None) -> str | None:
    """The key in the environment variable `api_key_env` (None: no key). Raises TeacherError naming the
    variable (never its value) when it is named but unset or empty."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env, "").strip()
    if not key:
        raise TeacherError(
            f"synth.api_key_env names {api_key_env}, which is not set: export it (export {api_key_env}=...) "
            "before the run, or set synth.api_key_env to null for an endpoint without a key"
        )
    return key


def _password(url: str) -> str | None:
    """The password written into a URL (``http://user:password@host/v1``), or None."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _without_password(url: str) -> str:
    """`url` with the password of its user part (``user:password@``) written ``***``: never printed or
    stored (cache keys, stats.json, messages)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def _with_schema(messages: list[dict], schema: dict) -> list[dict]:
    """`messages` with the schema written into the system message, for an endpoint that cannot be given it
    as a response_format."""
    note = "Reply with JSON only, following this JSON schema: " + json.dumps(schema, separators=(",", ":"))
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def _response_format(mode: str, schema: dict) -> dict:
    if mode == "json_schema":
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "qa_pairs", "schema": schema, "strict": True},
            }
        }
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    return {}


def _about_format(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("response_format", "json_schema", "json_object", "schema", "grammar"))


class EndpointTeacher:
    """A model behind an OpenAI-compatible chat-completions endpoint (the `openai` client: `timeout_s`
    seconds per request, `max_retries` retries of connection errors, timeouts, 429 and 5xx). The key comes
    from the environment variable `api_key_env` and is sent as a Bearer token only.

    Raises TeacherError when `api_key_env` is named but unset (naming the variable)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 1,
        max_retries: int = 2,
    ) -> None:
        from openai import OpenAI

        url = base_url.rstrip("/")
        self.base_url = _without_password(url)  # what messages, the identity and stats.json show
        self.model = model
        self.api_key_env = api_key_env
        self.identity = f"endpoint:{self.base_url}|{model}"
        self.description = f"{model} at {self.base_url}"
        self.concurrency = concurrency
        self._key = _api_key(api_key_env)
        self._secrets = [secret for secret in (self._key, _password(url)) if secret]
        self._client = OpenAI(
            base_url=url, api_key=self._key or "not-needed", timeout=timeout_s, max_retries=max_retries
        )
        self._format = 0  # index into _FORMATS: lowered once per refusal, for the rest of the run
        self._lock = threading.Lock()

    def _clean(self, text: str) -> str:
        """`text` without the key, should a server ever echo it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _reason(self, exc: Exception) -> str:
        """What went wrong with a connection: the underlying error's text (the client's own is "Connection
        error."), without the key."""
        cause = exc.__cause__ or exc.__context__
        return self._clean(f"{exc} {cause}" if cause and str(cause) else str(exc))

    def _refused(self, exc) -> TeacherError:
        """The TeacherError for an HTTP status error that is not a refused response_format."""
        from openai import AuthenticationError, InternalServerError, PermissionDeniedError, RateLimitError

        message = re.sub(r"^Error code: \d+ - ", "", exc.message)  # the client's prefix; the status is said here
        detail = self._clean(f"HTTP {exc.status_code}: {message}")
        if isinstance(exc, InternalServerError | RateLimitError):
            return TeacherUnavailable(f"the teacher at {self.base_url} went away ({detail}, after retries)")
        if isinstance(exc, AuthenticationError | PermissionDeniedError):
            where = (
                f"the key in {self.api_key_env}"
                if self.api_key_env
                else "a request without a key (synth.api_key_env is null)"
            )
            return TeacherError(
                f"{self.base_url} refused {where} ({detail}): set synth.api_key_env to the variable that holds a "
                "valid key, and export it"
            )
        return TeacherRequestError(
            f"{self.description} refused a request ({detail}); if the prompt is longer than the model's context, "
            "lower synth.passage_tokens or synth.max_new_tokens"
        )

    def check(self) -> None:
        """Ask the endpoint which models it serves (GET {base_url}/models). Raises TeacherError naming the
        URL when it cannot be reached or refuses the key, and naming synth.model and the served models when
        the model is not among them."""
        import openai

        try:
            served = [m.id for m in self._client.models.list()]
        except openai.APIConnectionError as exc:
            raise TeacherError(
                f"the teacher endpoint {self.base_url} cannot be reached ({self._reason(exc)}): start the "
                "server or fix synth.base_url"
            ) from None
        except openai.NotFoundError:
            raise TeacherError(
                f"{self.base_url}/models does not exist: synth.base_url must be the API root of an "
                "OpenAI-compatible server, usually ending in /v1 (Ollama: http://127.0.0.1:11434/v1)"
            ) from None
        except openai.APIStatusError as exc:
            raise self._refused(exc) from None
        if self.model not in served and f"{self.model}:latest" not in served:
            raise TeacherError(
                f"synth.model {self.model!r} is not served at {self.base_url}; it serves: "
                f"{', '.join(served) or '(no model)'}: set synth.model to one of them or load the model there"
            )

    def _lower_format(self, tried: int) -> None:
        with self._lock:
            if self._format == tried:
                self._format += 1
                print(
                    f"[synth] {self.base_url} does not accept response_format {_FORMATS[tried]}: asking with "
                    f"{_FORMATS[self._format].replace('plain', 'the schema in the prompt')} from now on",
                    flush=True,
                )

    def generate(self, messages: list[dict], schema: dict, max_tokens: int, temperature: float, seed: int) -> Reply:
        """One chat completion of `messages` (at most `max_tokens` tokens, `temperature`, `seed`) decoded
        under `schema` as far as the endpoint allows (see the module docstring).

        Raises TeacherUnavailable when the endpoint cannot be reached, times out or answers 5xx/429 after
        the client's retries; TeacherError when it refuses the key; TeacherRequestError for another 4xx."""
        import openai

        while True:
            mode = self._format
            try:
                completion = self._client.chat.completions.create(
                    model=self.model,
                    messages=messages if mode == 0 else _with_schema(messages, schema),
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    **_response_format(_FORMATS[mode], schema),
                )
            except openai.APIConnectionError as exc:  # APITimeoutError too
                raise TeacherUnavailable(
                    f"the teacher at {self.base_url} went away ({self._reason(exc)}, after retries)"
                ) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if _FORMATS[mode] != "plain" and _about_format(exc):
                    self._lower_format(mode)
                    continue
                raise self._refused(exc) from None
            except openai.APIStatusError as exc:
                raise self._refused(exc) from None
            if not completion.choices:
                return Reply("", "stop")
            choice = completion.choices[0]
            return Reply(choice.message.content or "", choice.finish_reason or "stop")

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


def make_teacher(synth: SynthParams, *, model_name: str, base_dir: Path) -> Teacher:
    """The teacher that ``synth`` params name: an EndpointTeacher when synth.base_url is set (synth.model,
    synth.api_key_env, synth.timeout_s, synth.concurrency); else a LlamaTeacher on teacher_gguf(model_name,
    base_dir) for synth.teacher "base", or on the GGUF file synth.teacher names (a RayLlamaTeacher on it
    with synth.executor ray; an endpoint is not moved onto Ray: it scales through synth.concurrency). Not
    yet checked: call check() before any work.

    Raises TeacherError when synth.base_url has no synth.model, synth.api_key_env is named but unset, the
    synth.teacher file is missing, or the base model cannot be converted."""
    if synth.base_url:
        if synth.executor == "ray":
            print(
                "[synth] synth.executor ray: the endpoint teacher scales through the endpoint (synth.concurrency); "
                "Ray is not used",
                flush=True,
            )
        if not synth.model:
            raise TeacherError("synth.base_url needs synth.model: the name of the model at that endpoint")
        return EndpointTeacher(
            synth.base_url,
            synth.model,
            api_key_env=synth.api_key_env,
            timeout_s=synth.timeout_s,
            concurrency=synth.concurrency,
        )
    n_ctx = max(1024, synth.passage_tokens + synth.max_new_tokens + _PROMPT_ALLOWANCE)

    def local(path: Path) -> Teacher:
        if synth.executor == "ray":
            return RayLlamaTeacher(path, n_ctx=n_ctx, address=synth.ray_address)
        return LlamaTeacher(path, n_ctx=n_ctx)

    if synth.teacher == "base":
        return local(teacher_gguf(model_name, Path(base_dir)))
    path = Path(synth.teacher).expanduser()
    if not path.is_file():
        raise TeacherError(
            f"synth.teacher {synth.teacher!r}: no such GGUF file ({path.absolute()}); set it to 'base' (the base "
            "model), the path of a GGUF file, or set synth.base_url and synth.model for an endpoint"
        )
    return local(path)
