"""Question–answer pairs about the documents, written by a teacher model (the synth stage).

    from lorapipe import synthesize
    stats = synthesize("data/extracted_text", "models/base", "data/synth", questions_per_passage=2)

The extracted text is cut into passages of `passage_tokens` tokens of the base tokenizer (the
dataset stage's `chunk_text`); a teacher (`lorapipe.teacher`) writes up to `questions_per_passage`
pairs per passage under a JSON schema. Each reply is cached the moment it arrives, by everything
that decides it (the passage, the prompt, the teacher's identity, the schema, the token limit, the
temperature; the seed when sampling), so adding a document asks only about its passages and a run
that was killed or lost its teacher resumes where it stopped. The filters (reply format, lengths,
grounding in the passage, near-duplicate questions) and the seeded evaluation split run on the
cached replies at every run: changing them asks the teacher nothing.

Outputs, one folder written as a whole (``data/synth``): ``passages.jsonl`` (the retrieval
corpus, always), ``index/`` (its BM25 index), ``pairs.jsonl`` (the kept pairs) and ``stats.json``
(what each filter removed, per document).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

from lorapipe import faults, paths
from lorapipe.dataset import chunk_text, deduplicate
from lorapipe.io import atomic_dir, read_jsonl, write_json, write_jsonl
from lorapipe.models import load_tokenizer
from lorapipe.param_files import prompt_text
from lorapipe.params import DEFAULTS, SynthParams
from lorapipe.retrieval import build_index
from lorapipe.scoring import token_f1
from lorapipe.teacher import (
    Reply,
    Teacher,
    TeacherError,
    TeacherRequestError,
    TeacherUnavailable,
    make_teacher,
    pairs_schema,
    parse_pairs,
)
from lorapipe.textfiles import read_text

TEACHER_PROMPT = (
    "You write quiz questions about one passage of a document. Write up to as many question-answer pairs "
    "as asked. Each question must be answerable from the passage alone: name what it asks about, never "
    '"the passage" or "the text". Each answer is short and taken from the passage, in its words. '
    "Write in the language of the passage. "
    'Reply with JSON only: {"pairs": [{"question": "...", "answer": "..."}]}'
)

# What each filter counts: replies without pairs (not_json, truncated), or pairs (the others).
FILTERS = ("not_json", "truncated", "too_short", "too_long", "echo", "ungrounded", "duplicate")
# An answer whose words are (nearly) the question's says nothing: a pair with this word overlap (SQuAD's
# token F1, lorapipe.scoring.token_f1) or more is left out ("echo"), e.g. a heading copied into both.
ECHO_F1 = 0.8
# Stats keys that describe this run, not its outputs: they differ between a run that asked the
# teacher and one served from the cache, so they are returned and printed but kept out of stats.json.
RUN_FIELDS = ("asked", "cached", "seconds", "passages_per_s", "pairs_per_s")
# A filter's removals, and what to change when it removed every pair (the zero-kept message).
_FIXES = {
    "not_json": "the teacher did not write JSON: use a larger teacher (synth.teacher, or synth.base_url and "
    "synth.model) or a clearer synth.prompt",
    "truncated": "the teacher's replies were cut at synth.max_new_tokens ({max_new_tokens}): raise it, or lower "
    "synth.questions_per_passage",
    "too_short": "the questions had fewer than 2 words or the answers none: use a larger teacher or a clearer "
    "synth.prompt",
    "too_long": "the questions or answers ran to synth.max_question_chars ({max_question_chars}) or "
    "synth.max_answer_chars ({max_answer_chars}), where the schema cuts them: raise those, or use a larger teacher",
    "echo": "the answers repeated their questions: use a larger teacher or a clearer synth.prompt",
    "ungrounded": "the answers' words were not found in their passages: lower synth.min_grounding ({min_grounding})",
    "duplicate": "the questions were near duplicates of each other: raise synth.dedup_threshold ({dedup_threshold})",
}

_WORD = re.compile(r"\w+")
# Function words of English, German, French and Spanish: what an answer shares with any text.
STOPWORDS = frozenset(
    """
    a an the and or but nor so yet if then than that this these those there here it its it's is are was were be been
    being am do does did done have has had having of in on at by for with from to into onto over under about as
    up down out off not no yes very too also just only can could will would shall should may might must i you he
    she we they me him her us them my your his our their what which who whom whose when where why how all any
    each both either neither some such own same other more most s t
    der die das den dem des ein eine einer eines einem einen und oder aber nicht ist sind war waren sein wird
    werden wurde hat haben mit von zu zum zur im in am an auf aus bei für fur über uber unter nach vor durch als
    wie auch es er sie wir ihr ich du man sich dass daß so noch nur schon
    le la les un une des du de et ou mais ne pas est sont était été être a ont avoir avec pour par dans sur sous
    au aux ce cet cette ces il elle ils elles nous vous je tu on se qui que quoi dont où plus
    el los las una unos unas y o pero no es son era fue ser está están ha han con para por en sobre entre al del
    lo su sus se que quien cual como más muy ya
    """.split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def grounding(answer: str, passage: str) -> float:
    """The share (0–1) of the answer's content words found in the passage: its lowercased ``\\w+`` words,
    stopwords (English, German, French, Spanish) left out, each occurrence counted, compared exactly
    (no stemming) with the passage's words. An answer without content words ("Yes.", "") is 0.0.

    ``grounding("Two thin matrices.", "LoRA trains two thin matrices.")`` is 1.0."""
    content = [word for word in _words(answer) if word not in STOPWORDS]
    if not content:
        return 0.0
    found = set(_words(passage))
    return sum(word in found for word in content) / len(content)


def passages_of(text_dir: str | Path, tokenizer, passage_tokens: int, overlap_tokens: int) -> list[dict]:
    """The passages of every ok document of the extract stage's output `text_dir` (its
    ``manifest.jsonl``): ``{"id": "<source>#<n>", "source", "passage": n, "text"}``, in manifest order,
    then n (0-based), each at most `passage_tokens` tokens of `tokenizer` with `overlap_tokens` shared
    by neighbours (`lorapipe.dataset.chunk_text`). Raises FileNotFoundError naming the manifest (and
    the extract stage) when it is missing."""
    text_dir = Path(text_dir)
    manifest = paths.require(text_dir / paths.MANIFEST_NAME, "--text-dir", "extract")
    rows = []
    for entry in read_jsonl(manifest):
        if entry.get("status") != "ok":
            continue
        text = read_text(text_dir / entry["output"])
        for n, piece in enumerate(chunk_text(text, tokenizer, passage_tokens, overlap_tokens)):
            rows.append({"id": f"{entry['source']}#{n}", "source": entry["source"], "passage": n, "text": piece})
    return rows


def _system_prompt(prompt: str | None) -> str:
    """The teacher's instructions: TEACHER_PROMPT, or synth.prompt's text (or the file it names)."""
    return TEACHER_PROMPT if prompt is None else prompt_text(prompt)


def _messages(system: str, passage: str, n: int) -> list[dict]:
    ask = f"Write up to {n} question-answer pair{'s' if n != 1 else ''} about this passage, as JSON."
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Passage:\n\n{passage}\n\n{ask}"}]


def cache_key(messages: list[dict], identity: str, request: dict) -> str:
    """The cache key of one request (64 hex characters): sha256 of the messages (the passage and the
    prompt), the teacher's identity and the request's schema, max_tokens and temperature; its seed
    only when it samples (temperature > 0), since greedy decoding does not read it."""
    key = {"messages": messages, "teacher": identity, **request, "temperature": float(request["temperature"])}
    if key["temperature"] == 0:
        key.pop("seed", None)
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class _Cache:
    """One JSON file per request's reply, named by its `cache_key`: ``{"pairs", "problem", "text",
    "finish_reason"}`` (parse_pairs' result and the raw reply it was parsed from)."""

    def __init__(self, folder: Path, read: bool):
        self.folder, self.read = folder, read

    def get(self, key: str) -> dict | None:
        path = self.folder / f"{key}.json"
        if not self.read or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a damaged entry: asked again
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            return None  # not written by put (or damaged): asked again
        if not isinstance(entry.get("finish_reason"), str):
            return None
        # parsed again, so that a change to parse_pairs applies to the cached replies without asking
        entry["pairs"], entry["problem"] = parse_pairs(Reply(entry["text"], entry["finish_reason"]))
        return entry

    def put(self, key: str, reply: Reply) -> dict:
        pairs, problem = parse_pairs(reply)
        entry = {"pairs": pairs, "problem": problem, "text": reply.text, "finish_reason": reply.finish_reason}
        write_json(self.folder / f"{key}.json", entry)
        return entry


class _Job(NamedTuple):
    """One request: the passages (indices) that share its messages, its cache key and the messages."""

    indices: list[int]
    key: str
    messages: list[dict]


class _Progress:
    """The bar over passages (cached ones counted from the start) with pairs so far; reports failures."""

    def __init__(self, total: int, cached: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=cached, desc="[synth]", unit="passage", mininterval=1.0)
        self.pairs = 0

    def done(self, job: _Job, entry: dict | None, error: Exception | None = None) -> None:
        if error is not None:
            self.bar.write(
                f"[synth] the request about {len(job.indices)} passage(s) (passage {job.indices[0]} first) failed "
                f"({error}); skipped, asked again next run",
                file=sys.stderr,
            )
        self.pairs += len(entry["pairs"]) * len(job.indices) if entry else 0
        self.bar.set_postfix_str(f"{self.pairs} pairs", refresh=False)
        self.bar.update(len(job.indices))


def _completed(one, jobs: list[_Job], workers: int) -> Iterator[tuple[_Job, Future]]:
    """Run ``one(job)`` for each job and yield (job, its finished future) as each ends: in order in
    this thread with one worker (a local model, or an endpoint asked one at a time), else from a pool
    of `workers` threads in completion order. Closed early (an error, a kill point), the requests not
    started are cancelled and those in flight are waited for."""
    if workers <= 1:
        for job in jobs:
            future: Future = Future()
            try:
                future.set_result(one(job))
            except Exception as exc:
                future.set_exception(exc)
            yield job, future
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="synth") as pool:
        futures = {pool.submit(one, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                yield futures[future], future
        except BaseException:  # GeneratorExit too
            for future in futures:
                future.cancel()
            raise


def _ask(teacher, jobs: list[_Job], cache: _Cache, request: dict, progress: _Progress) -> dict[int, dict]:
    """Ask the teacher each job, `teacher.concurrency` at a time; each reply is cached as it arrives.
    Returns the entries by passage index; a request that fails on its own (TeacherRequestError, or an
    error that is no TeacherError) is reported and left out, to be asked again next run. A TeacherError
    (TeacherUnavailable: the teacher went away) is raised once the requests in flight have ended,
    a TeacherUnavailable with ``answered`` (the passages this run answered) set on it."""
    entries: dict[int, dict] = {}
    answered: list[int] = []  # appended by the workers as each reply is cached

    def one(job: _Job) -> dict:
        entry = cache.put(job.key, teacher.generate(messages=job.messages, **request))
        answered.extend(job.indices)
        return entry

    try:
        with contextlib.closing(_completed(one, jobs, min(teacher.concurrency, len(jobs)))) as results:
            for done, (job, future) in enumerate(results, 1):
                _collect(future, job, entries, progress)
                if done == max(1, len(jobs) // 2):
                    faults.fault_point("mid")  # half the requests answered (and cached), the others not
    except TeacherUnavailable as exc:
        exc.answered = len(answered)
        raise
    return entries


def _collect(future, job: _Job, entries: dict[int, dict], progress: _Progress) -> None:
    """Take one finished request's entry for its passages (a failed one is reported, not taken)."""
    try:
        entry = future.result()
    except TeacherRequestError as exc:  # the endpoint refused this request (a prompt over its context, …)
        progress.done(job, None, exc)
        return
    except TeacherError:  # gone (TeacherUnavailable), or no longer usable (a key refused): stop here
        raise
    except Exception as exc:  # any other failure of one request
        progress.done(job, None, exc)
        return
    entries.update(dict.fromkeys(job.indices, entry))
    progress.done(job, entry)


def _answers(passages: list[dict], teacher, cache: _Cache, system: str, n: int, request: dict) -> tuple[list, dict]:
    """The cache entry of each passage (None: its request failed) and how each was had: ``{"status":
    {index: "cached" | "asked" | "failed"}, "seconds": time spent asking}``. Passages with the same
    text are asked once. Raises TeacherUnavailable saying how far it got and how to resume."""
    jobs: dict[str, _Job] = {}
    entries: dict[int, dict] = {}
    for index, passage in enumerate(passages):
        messages = _messages(system, passage["text"], n)
        key = cache_key(messages, teacher.identity, request)
        entry = cache.get(key)
        if entry is not None:
            entries[index] = entry
        else:
            jobs.setdefault(key, _Job([], key, messages)).indices.append(index)
    cached = set(entries)
    started = time.monotonic()
    progress = _Progress(len(passages), len(cached))
    try:
        entries.update(_ask(teacher, list(jobs.values()), cache, request, progress))
    except TeacherUnavailable as exc:
        done = len(cached) + getattr(exc, "answered", 0)
        reason = str(exc) if "teacher" in str(exc) else f"the teacher ({teacher.description}) went away ({exc})"
        raise TeacherUnavailable(
            f"after {done} of {len(passages)} passages, {reason}; what it wrote is cached: rerun `dvc repro synth` "
            "(or `lorapipe synth`) to resume"
        ) from exc
    finally:
        progress.bar.close()
    seconds = time.monotonic() - started
    status = {i: "cached" if i in cached else "asked" if i in entries else "failed" for i in range(len(passages))}
    return [entries.get(i) for i in range(len(passages))], {"status": status, "seconds": seconds}


def _new_counts() -> dict:
    return {
        "passages": 0,
        "asked": 0,
        "cached": 0,
        "failed_requests": 0,
        "pairs_generated": 0,
        "removed": dict.fromkeys(FILTERS, 0),
        "kept": 0,
        "train": 0,
        "eval": 0,
    }


def _reject(question: Any, answer: Any, passage: str, limits: dict) -> str | None:
    """Which per-pair filter removes a pair (None: none does); `limits`: the length and grounding knobs."""
    if not isinstance(question, str) or not isinstance(answer, str):
        return "not_json"
    if len(_words(question)) < 2 or not _words(answer):
        return "too_short"
    # The schema's maxLength stops a field at the limit, so one that reaches it was cut there (one
    # character short: the cut may end in a space, stripped by parse_pairs).
    if len(question) >= limits["max_question_chars"] - 1 or len(answer) >= limits["max_answer_chars"] - 1:
        return "too_long"
    if token_f1(answer, question) >= ECHO_F1:
        return "echo"
    if grounding(answer, passage) < limits["min_grounding"]:
        return "ungrounded"
    return None


def _candidates(passages: list[dict], entries: list, status: dict, documents: dict, limits: dict) -> list[dict]:
    """The pairs that pass the reply and per-pair filters, in output order (document, passage, reply
    order), each removal counted in its document's counts."""
    rows = []
    for index, (passage, entry) in enumerate(zip(passages, entries)):
        counts = documents[passage["source"]]
        counts["passages"] += 1
        how = status.get(index)
        counts["cached" if how == "cached" else "asked"] += how is not None
        counts["failed_requests"] += how == "failed"
        if entry is None:
            continue
        if entry.get("problem"):  # the reply (not_json) or its last, cut pair (truncated) is lost
            counts["removed"][entry["problem"] if entry["problem"] in FILTERS else "not_json"] += 1
        for pair in entry["pairs"]:  # the complete pairs before a cut are kept
            counts["pairs_generated"] += 1
            question, answer = pair.get("question"), pair.get("answer")
            question = " ".join(question.split()) if isinstance(question, str) else question
            answer = answer.strip() if isinstance(answer, str) else answer
            reason = _reject(question, answer, passage["text"], limits)
            if reason:
                counts["removed"][reason] += 1
                continue
            row = {"question": question, "answer": answer, "source": passage["source"], "passage_id": passage["id"]}
            rows.append({**row, "split": "train"})
    return rows


def _deduplicated(rows: list[dict], documents: dict, threshold: float) -> list[dict]:
    """The rows whose question is not a (near) duplicate of an earlier one, across all documents (so
    no question is both trained and held out); word 3-grams of the lowercased words, MinHash."""
    keys = [" ".join(_words(row["question"])) for row in rows]
    keep = set(deduplicate(keys, threshold, shingle=3)[0])
    for i, row in enumerate(rows):
        if i not in keep:
            documents[row["source"]]["removed"]["duplicate"] += 1
    return [row for i, row in enumerate(rows) if i in keep]


def _split_eval(rows: list[dict], documents: dict, eval_fraction: float, seed: int) -> None:
    """Mark a seeded share of each document's kept pairs ``"split": "eval"`` (random.Random of
    ``"{seed}:{source}"``): round(eval_fraction × kept), at least 1 and at most kept − 1 when the
    document has 2 or more and eval_fraction > 0; none for a document with 1."""
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    for source, group in by_source.items():
        n = len(group)
        count = min(n - 1, max(1, round(eval_fraction * n))) if eval_fraction > 0 and n >= 2 else 0
        for i in random.Random(f"{seed}:{source}").sample(range(n), count):
            group[i]["split"] = "eval"
        documents[source].update(kept=n, train=n - count, eval=count)


def _stats(documents: dict, identity: str | None, seconds: float, asked_pairs: int) -> dict:
    """stats.json: the totals of the per-document counts, the documents, the teacher and the speed."""
    totals = _new_counts()
    for counts in documents.values():
        for key, value in counts.items():
            if key == "removed":
                for name in FILTERS:
                    totals["removed"][name] += value[name]
            else:
                totals[key] += value
    return {
        **totals,
        "documents": documents,
        "teacher": identity,
        "seconds": round(seconds, 2),
        "passages_per_s": round(totals["asked"] / seconds, 3) if seconds > 0 else 0.0,
        "pairs_per_s": round(asked_pairs / seconds, 3) if seconds > 0 else 0.0,
    }


def without_run_fields(stats: dict) -> dict:
    """`stats` (totals and per document) without the keys of RUN_FIELDS: what stats.json holds."""
    kept = {k: v for k, v in stats.items() if k not in RUN_FIELDS}
    kept["documents"] = {
        source: {k: v for k, v in counts.items() if k not in RUN_FIELDS}
        for source, counts in stats["documents"].items()
    }
    return kept


def _write(out_dir: Path, passages: list[dict], rows: list[dict], stats: dict) -> None:
    """data/synth as a whole: passages.jsonl, index/, pairs.jsonl and stats.json."""
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / paths.PASSAGES.name, passages)
        build_index(passages, tmp / paths.RETRIEVAL_INDEX.name)
        write_jsonl(tmp / paths.PAIRS.name, rows)
        # The run's facts (asked or cached, seconds, speed) are printed and returned, not written: the
        # same inputs give byte-identical outputs, whether the teacher was asked or the cache answered.
        write_json(tmp / paths.SYNTH_STATS.name, without_run_fields(stats))


def zero_kept_message(stats: dict, knobs: dict) -> str:
    """What to change when no pair was kept: the filter that removed the most and its knob (`knobs`:
    the synth knobs by name, for their current values)."""
    removed = stats["removed"]
    worst = max(FILTERS, key=lambda name: removed[name])  # the first of FILTERS on a tie
    counts = ", ".join(f"{name} {n}" for name, n in removed.items() if n)
    if removed[worst] == 0:
        why = (
            f"{stats['failed_requests']} request(s) failed (see above)"
            if stats["failed_requests"]
            else "the teacher wrote no pairs: use a larger teacher or a clearer synth.prompt"
        )
    else:
        why = f"the {worst} filter removed the most ({counts}): {_FIXES[worst].format(**knobs)}"
    return (
        f"[synth] no question-answer pair was kept from {stats['passages']} passage(s) "
        f"({stats['pairs_generated']} generated); {why}. Training goes on with the text alone."
    )


def _report(stats: dict, out_dir: Path, knobs: dict) -> None:
    removed = ", ".join(f"{name} {n}" for name, n in stats["removed"].items() if n) or "none"
    print(
        f"[synth] {stats['kept']} pair(s) kept of {stats['pairs_generated']} generated from {stats['passages']} "
        f"passage(s) of {len(stats['documents'])} document(s) ({stats['asked']} asked, {stats['cached']} from cache, "
        f"{stats['seconds']:.1f} s); removed: {removed}; {stats['eval']} held out for evaluation; written to {out_dir}",
        flush=True,
    )
    if stats["failed_requests"]:
        print(
            f"[synth] warning: {stats['failed_requests']} request(s) failed: their passages have no pairs this time; "
            "`dvc repro --force synth` asks them again (the others come from the cache)",
            file=sys.stderr,
        )
    if knobs["questions_per_passage"] and stats["passages"] and not stats["kept"]:
        print(zero_kept_message(stats, knobs), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _teacher_for(teacher: Teacher | str | None, knobs: dict, model_name: str, base_dir: Path):
    """The teacher given (the caller checks and closes it), or one made from the synth knobs and
    `teacher` (a synth.teacher value; None: its default) by `lorapipe.teacher.make_teacher`, checked
    before any work and closed after."""
    if teacher is not None and not isinstance(teacher, str):
        yield teacher
        return
    params = SynthParams(**knobs, teacher=teacher or DEFAULTS.synth.teacher)
    own = make_teacher(params, model_name=model_name, base_dir=base_dir)
    try:
        own.check()
        yield own
    finally:
        own.close()


def synthesize(
    text_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    teacher: Teacher | str | None = None,
    questions_per_passage: int = DEFAULTS.synth.questions_per_passage,
    passage_tokens: int = DEFAULTS.synth.passage_tokens,
    overlap_tokens: int = DEFAULTS.synth.overlap_tokens,
    base_url: str | None = DEFAULTS.synth.base_url,
    model: str | None = DEFAULTS.synth.model,
    api_key_env: str | None = DEFAULTS.synth.api_key_env,
    max_new_tokens: int = DEFAULTS.synth.max_new_tokens,
    temperature: float = DEFAULTS.synth.temperature,
    concurrency: int = DEFAULTS.synth.concurrency,
    executor: str = DEFAULTS.synth.executor,
    ray_address: str | None = DEFAULTS.synth.ray_address,
    timeout_s: float = DEFAULTS.synth.timeout_s,
    prompt: str | None = DEFAULTS.synth.prompt,
    max_question_chars: int = DEFAULTS.synth.max_question_chars,
    max_answer_chars: int = DEFAULTS.synth.max_answer_chars,
    min_grounding: float = DEFAULTS.synth.min_grounding,
    dedup_threshold: float = DEFAULTS.synth.dedup_threshold,
    eval_fraction: float = DEFAULTS.synth.eval_fraction,
    resume: bool = DEFAULTS.synth.resume,
    seed: int = DEFAULTS.common.seed,
    model_name: str = DEFAULTS.model.name,
    cache_dir: str | Path | None = None,
) -> dict:
    """Write ``passages.jsonl``, ``index/``, ``pairs.jsonl`` and ``stats.json`` into `out_dir`
    (replaced as a whole, only when all is done); return the stats.

    `text_dir`: the extract stage's output (``manifest.jsonl`` and texts); `base_dir`: the model
    folder whose tokenizer cuts the passages. `teacher`: a `lorapipe.teacher.Teacher` (checked and
    closed by the caller), or None / a ``synth.teacher`` value ("base" or a GGUF path): one is made
    with `make_teacher` from these knobs, checked before any work and closed. The knobs are the
    ``synth`` section of params.yaml plus ``common.seed`` and ``model.name`` (see
    `lorapipe.params.SynthParams` for their meaning and units); `cache_dir`: where replies are
    cached (None: ``<cache>/synth``). With ``questions_per_passage`` 0 no teacher is made or asked.

    Rows: passages ``{"id", "source", "passage", "text"}``; pairs ``{"question", "answer", "source",
    "passage_id", "split": "train" | "eval"}``. Raises FileNotFoundError (no manifest or tokenizer),
    TeacherError (a teacher that cannot be used; every request failed) and TeacherUnavailable (the
    teacher went away: what it answered is cached, `out_dir` is left as it was)."""
    knobs = {k: v for k, v in locals().items() if k in SynthParams.model_fields and k != "teacher"}
    out_dir, base_dir = Path(out_dir), Path(base_dir)
    cache = _Cache(Path(cache_dir or paths.cache_dir() / "synth"), read=resume)
    asking = questions_per_passage > 0
    chosen = _teacher_for(teacher, knobs, model_name, base_dir) if asking else contextlib.nullcontext()
    with chosen as active:
        passages = passages_of(text_dir, load_tokenizer(base_dir), passage_tokens, overlap_tokens)
        if active is None:
            print("[synth] synth.questions_per_passage is 0: no teacher asked", flush=True)
            entries, run = [None] * len(passages), {"status": {}, "seconds": 0.0}
        else:
            request = {
                "schema": pairs_schema(questions_per_passage, max_question_chars, max_answer_chars),
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": seed,
            }
            system = _system_prompt(prompt)
            entries, run = _answers(passages, active, cache, system, questions_per_passage, request)
            if passages and all(entry is None for entry in entries):
                raise TeacherError(f"every request to the teacher ({active.description}) failed (see above)")
    documents = {passage["source"]: _new_counts() for passage in passages}
    rows = _candidates(passages, entries, run["status"], documents, knobs)
    rows = _deduplicated(rows, documents, dedup_threshold)
    _split_eval(rows, documents, eval_fraction, seed)
    asked_pairs = sum(len(entries[i]["pairs"]) for i, how in run["status"].items() if how == "asked")
    stats = _stats(documents, active.identity if asking else None, run["seconds"], asked_pairs)
    _write(out_dir, passages, rows, stats)
    _report(stats, out_dir, knobs)
    return stats
