"""Build training rows from documents and labeled examples (the dataset stage).

    from lorapipe import build_dataset
    stats = build_dataset("data/extracted_text", "models/base", "data/dataset", labeled_dir="data/raw/labeled")

Rows are text chunks (``{"text"}``, every token carries loss) or conversations (``{"messages"}``,
rendered with the tokenizer's chat template, loss on the assistant turns only); every row carries
``source`` and ``task``. Each task has one system prompt, resolved into ``prompts.json``: the only
place later stages, the Modelfile and the server read it from.

Text is cut into windows of `max_seq_len` tokens of the base tokenizer that overlap by
`overlap_tokens`; a window ends at a paragraph or sentence break in its last quarter where there is
one. Exact and near duplicates (MinHash over word 5-grams) are removed before the split, which is
deterministic by `seed`: by document (no validation chunk comes from a training document) or by chunk.

The synth stage's question–answer pairs (``data/synth/pairs.jsonl``) become one more chat task
(``synth.task``, "qa", with ``synth.system_prompt``), held out by construction: a pair marked
``"split": "eval"`` (a knowledge-evaluation question) is in neither file, and every pair of a
document the text task put in validation goes to ``val.jsonl``, never to ``train.jsonl``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from lorapipe import augment, faults, paths
from lorapipe.chat_encoder import ChatTemplateError, folds_system, hf_codec, literal_offsets
from lorapipe.chat_templates import ModelfileError, modelfile_line
from lorapipe.io import atomic_outputs, read_jsonl, write_json, write_jsonl
from lorapipe.labeled import is_json_schema, labeled_rows, load_json_schema, row_place, schema_errors
from lorapipe.models import load_tokenizer
from lorapipe.param_files import prompt_text
from lorapipe.params import DEFAULTS, DatasetParams, TaskParams
from lorapipe.rows import loss_tokens, text_ids, tokenize_row
from lorapipe.textfiles import jsonl_lines, read_text

_BREAK = re.compile(r"\n\n|[.!?][\s\"')\]]")
LABELED_SUFFIXES = (".jsonl", ".json")


@dataclass
class Task:
    """One kind of training data with its own system prompt."""

    name: str
    kind: str  # "text" (document chunks) or "chat" (labeled examples)
    system_prompt: str
    sources: list[str] = field(default_factory=lambda: ["*"])  # glob patterns of file names or paths
    format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)


def _special_count(tokenizer) -> int:
    """Tokens the tokenizer adds around a text (BOS/EOS), reserved inside every window."""
    return len(text_ids(tokenizer, "a")) - len(text_ids(tokenizer, "a", add_special_tokens=False))


def chunk_text(text: str, tokenizer, max_seq_len: int, overlap_tokens: int) -> list[str]:
    """Cut `text` into pieces of at most `max_seq_len` tokens (the BOS/EOS the tokenizer adds included),
    counted as the text's literal characters (rows.text_ids): special-token-looking text is text."""
    offsets = literal_offsets(tokenizer, text)
    # 2 tokens of slack: a piece re-tokenized on its own can merge differently at its edges.
    window = max(1, max_seq_len - _special_count(tokenizer) - 2)
    chunks, start = [], 0
    while start < len(offsets):
        end = min(start + window, len(offsets))
        if end < len(offsets):
            # Prefer to end at a break in the window's last quarter, so chunks end on whole sentences.
            floor = start + (3 * window) // 4
            for cut in range(end - 1, floor, -1):
                if _BREAK.search(text[offsets[cut - 1][0] : offsets[cut][1]]):  # a break between the two tokens
                    end = cut
                    break
        piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        while end - start > 1 and len(text_ids(tokenizer, piece)) > max_seq_len:
            end -= 1
            piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        if piece:
            chunks.append(piece)
        if end >= len(offsets):
            break
        start = max(end - overlap_tokens, start + 1)
    return chunks


def _minhash(text: str, num_perm: int = 64, shingle: int = 5):
    """MinHash signature of a text's word `shingle`-grams (deterministic: CRC32 shingles, fixed permutations)."""
    import numpy as np

    words = text.lower().split()
    grams = {" ".join(words[i : i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
    values = np.array([zlib.crc32(g.encode()) for g in grams], dtype=np.uint64)
    rng = np.random.default_rng(1)
    a = rng.integers(1, 2**31 - 1, num_perm, dtype=np.uint64)
    b = rng.integers(0, 2**31 - 1, num_perm, dtype=np.uint64)
    return ((values[None, :] * a[:, None] + b[:, None]) % np.uint64(2**31 - 1)).min(axis=1)


def deduplicate(keys: list[str], threshold: float, shingle: int = 5) -> tuple[list[int], int, int]:
    """Indices of the rows to keep, and the counts of exact and near duplicates dropped.

    Near duplicates: estimated Jaccard similarity of word `shingle`-grams (5: document chunks; 3: short
    texts such as questions) at least `threshold`, found with locality-sensitive hashing (16 bands of
    4), so the cost grows with the rows, not their pairs.
    """
    keep, exact, near = [], 0, 0
    seen: set[str] = set()
    buckets: dict[tuple, list[int]] = {}
    signatures: dict[int, Any] = {}
    for i, key in enumerate(keys):
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in seen:
            exact += 1
            continue
        seen.add(digest)
        if threshold < 1:
            signature = _minhash(key, shingle=shingle)
            bands = [(band, signature[band * 4 : band * 4 + 4].tobytes()) for band in range(16)]
            candidates = {j for band in bands for j in buckets.get(band, [])}
            if any((signatures[j] == signature).mean() >= threshold for j in candidates):
                near += 1
                continue
            signatures[i] = signature
            for band in bands:
                buckets.setdefault(band, []).append(i)
        keep.append(i)
    return keep, exact, near


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(Path(path).name, p) for p in patterns)


def resolve_tasks(
    mode: str,
    tasks: list[dict] | None,
    system_prompt: str,
    has_text: bool,
    has_labeled: bool,
    labeled_format: str = "auto",
    fields: dict[str, str] | None = None,
) -> list[Task]:
    """The tasks to build: `tasks` from params, or one per kind of data present (by `mode`)."""
    if tasks:
        resolved = [
            Task(
                t["name"],
                t["kind"],
                prompt_text(t.get("system_prompt") or system_prompt),
                list(t.get("sources") or ["*"]),
                t.get("format") or labeled_format,
                dict(t.get("fields") or fields or {}),
            )
            for t in tasks
        ]
        wrong = [t.name for t in resolved if mode != "auto" and t.kind != mode]
        if wrong:
            raise ValueError(f"dataset.mode is {mode!r} but tasks {wrong} are of another kind; use mode auto")
        return resolved
    prompt = prompt_text(system_prompt)
    resolved = []
    if mode == "text" or (mode == "auto" and has_text):
        resolved.append(Task("text", "text", prompt))
    if mode == "chat" or (mode == "auto" and has_labeled):
        resolved.append(Task("chat", "chat", prompt, format=labeled_format, fields=dict(fields or {})))
    if not resolved:
        raise ValueError("no text was extracted and no labeled examples were found: nothing to build a dataset from")
    return resolved


def has_extracted_text(text_dir: str | Path) -> bool:
    """Whether `text_dir`'s ``manifest.jsonl`` (the extract stage's) lists a document whose text was
    extracted; False when there is no manifest, or it is empty (no documents: labeled rows alone)."""
    manifest_path = Path(text_dir) / paths.MANIFEST_NAME
    return manifest_path.is_file() and any(entry.get("status") == "ok" for entry in read_jsonl(manifest_path))


def _text_rows(
    task: Task, text_dir: Path, tokenizer, max_seq_len: int, overlap_tokens: int, min_tokens: int, counts: dict
) -> list[dict]:
    manifest_path = text_dir / paths.MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run the extract stage first")
    entries = read_jsonl(manifest_path)
    if not any(entry.get("status") == "ok" for entry in entries):  # has_extracted_text, on the rows read once
        raise ValueError(
            f"task {task.name!r} is a text task but {manifest_path} lists no extracted document: put documents "
            f"into {paths.RAW_DOCS} (or the folder you extract) and run `dvc repro extract`, or train on labeled "
            "rows alone (dataset.mode: chat, and no text task in dataset.tasks)"
        )
    rows = []
    for entry in entries:
        if entry["status"] != "ok" or not _matches(entry["source"], task.sources):
            continue
        text = read_text(text_dir / entry["output"])
        for piece in chunk_text(text, tokenizer, max_seq_len, overlap_tokens):
            if len(text_ids(tokenizer, piece)) < min_tokens:
                counts["dropped_short"] += 1
                continue
            rows.append({"text": piece, "source": entry["source"], "task": task.name})
    return rows


def labeled_files(labeled_dir: Path | None) -> list[Path]:
    """The JSON/JSONL files of labeled examples; JSON Schema files beside them are skipped, not read as rows."""
    if labeled_dir is None or not labeled_dir.is_dir():
        return []
    return sorted(
        p
        for p in labeled_dir.rglob("*")
        if p.suffix.lower() in LABELED_SUFFIXES and p.is_file() and not is_json_schema(p)
    )


def _chat_row(
    task: Task, path: Path, number: int, messages: list[dict], tokenizer, knobs: tuple[int, str, str], counts: dict
) -> dict | None:
    """One labeled conversation as a row with the task's system prompt; None when dropped or skipped.
    `knobs`: max_seq_len, on_overflow, on_bad_row."""
    max_seq_len, on_overflow, on_bad_row = knobs
    if any(m["role"] == "system" for m in messages):
        counts["system_prompts_replaced"] += 1  # the task's prompt is the single source of truth
    messages = [{"role": "system", "content": task.system_prompt}, *(m for m in messages if m["role"] != "system")]
    row = {"messages": messages, "source": str(path), "task": task.name}
    try:
        ids, labels = tokenize_row(row, tokenizer)
    except ChatTemplateError as exc:
        if on_bad_row == "skip":
            counts["bad_rows_skipped"] += 1
            return None
        raise ChatTemplateError(f"{row_place(path, number)}: {exc} (or set dataset.on_bad_row: skip)") from None
    if len(ids) > max_seq_len:
        counts["overflowed"] += 1
        counts["overflow_longest_tokens"] = max(counts["overflow_longest_tokens"], len(ids))
        if on_overflow == "error":
            raise ValueError(
                f"{row_place(path, number)}: the row has {len(ids)} tokens, more than dataset.max_seq_len "
                f"({max_seq_len}); raise it or set dataset.on_overflow to drop or truncate"
            )
        if on_overflow == "drop" or not loss_tokens(labels[:max_seq_len]):
            counts["dropped_overflow"] += 1  # truncating would leave no answer token to learn from
            return None
    return row


def _chat_rows(
    task: Task,
    labeled_dir: Path | None,
    tokenizer,
    knobs: tuple[int, str, str],
    schema: tuple[str, dict] | None,
    counts: dict,
) -> list[dict]:
    on_bad_row = knobs[2]
    if labeled_dir is None:
        raise FileNotFoundError(f"task {task.name!r} is a chat task, but no folder of labeled examples was given")
    files = [p for p in labeled_files(labeled_dir) if _matches(str(p.relative_to(labeled_dir)), task.sources)]
    if not files:
        raise FileNotFoundError(
            f"task {task.name!r}: no labeled JSON/JSONL file in {labeled_dir} matches {task.sources}"
        )
    hf_codec(tokenizer)  # a tokenizer without a chat template fails here, once, with what to do
    rows = []
    for path in files:
        conversations, bad = labeled_rows(path, task.format, task.fields, on_bad_row)
        counts["bad_rows_skipped"] += bad
        for number, messages in conversations:
            row = _chat_row(task, path, number, messages, tokenizer, knobs, counts)
            if row is not None:
                rows.append((row_place(path, number), row))
    return _schema_valid(task, rows, schema, on_bad_row, counts)


def _substituted(task: Task, split: tuple[list, list], copies: tuple[int, int], seed: int, checks: tuple) -> list[dict]:
    """augment.span_substitution's copies of a chat task's training rows (`copies`:
    dataset.span_substitution and dataset.rare_key_oversampling; `split`: its training and validation
    rows, the validation queries never rebuilt), said with what
    it left out: copies longer than max_seq_len, or whose answers break the task's JSON Schema
    (`checks`: tokenizer, max_seq_len, and eval.json_schema's (file, content) or None)."""
    rows, held = split
    tokenizer, max_seq_len, schema = checks
    avoid = [m["content"] for row in held for m in row["messages"] if m["role"] == "user"]
    (each, rare), seeded = copies, f"{seed}:{task.name}:span_substitution"
    made, why = augment.span_substitution(rows, each, seeded, avoid, rare_factor=rare)
    fits = [row for row in made if len(tokenize_row(row, tokenizer)[0]) <= max_seq_len]
    valid = [row for row in fits if schema is None or not schema_errors(_answer(row), schema[1])]
    skipped = {
        k.removeprefix("skipped_").replace("_", " "): v for k, v in why.items() if k.startswith("skipped_") and v
    }
    left = {
        "repeating a row or losing a value's words": why["not_written"],
        "longer than dataset.max_seq_len": len(made) - len(fits),
        "breaking eval.json_schema": len(fits) - len(valid),
    }
    print(
        f"[dataset] task {task.name}: {len(valid)} span-substituted copies of {len(rows)} training rows "
        f"(dataset.span_substitution: up to {each} each"
        + (
            f"; up to {each * rare} for {why['rare_rows']} rows with a rare key, dataset.rare_key_oversampling)"
            if rare > 1
            else ")"
        )
        + (f"; rows not copied: {', '.join(f'{v} {k}' for k, v in skipped.items())}" if skipped else "")
        + "".join(f"; {n} copies {what} left out" for what, n in left.items() if n),
        flush=True,
    )
    return valid


def _answer(row: dict) -> str:
    return [m["content"] for m in row["messages"] if m["role"] == "assistant"][-1]


def _schema_valid(
    task: Task, rows: list[tuple[str, dict]], schema: tuple[str, dict] | None, on_bad_row: str, counts: dict
) -> list[dict]:
    """The rows of a JSON task whose answers satisfy the schema (`schema`: its file and content,
    eval.json_schema); every other row is named (file and row, and why), then refused together
    (on_bad_row error: ValueError) or skipped and counted (``schema_invalid``). A task is a JSON
    task when any of its answers is a JSON object; the others pass untouched."""
    if schema is None or not any(isinstance(_json_object(_answer(row)), dict) for _, row in rows):
        return [row for _, row in rows]
    file, content = schema
    invalid = [(where, why) for where, row in rows if (why := schema_errors(_answer(row), content))]
    if invalid:
        listed = "\n".join(f"  {where}: {why}" for where, why in invalid[:10])
        more = f"\n  … and {len(invalid) - 10} more" if len(invalid) > 10 else ""
        what = f"task {task.name!r}: {len(invalid)} of {len(rows)} answers do not satisfy eval.json_schema ({file})"
        if on_bad_row == "error":
            raise ValueError(f"{what}:\n{listed}{more}\nfix them, or set dataset.on_bad_row: skip to leave them out")
        print(f"[dataset] {what}, left out (dataset.on_bad_row: skip):\n{listed}{more}", flush=True)
        counts["schema_invalid"] += len(invalid)
    bad = {where for where, _ in invalid}
    return [row for where, row in rows if where not in bad]


def _json_object(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def check_prompts(tasks: list[Task], tokenizer) -> None:
    """Refuse, before any work, a system prompt that the export's Ollama Modelfile could not hold
    exactly (chat_templates.modelfile_line: a line ending with a quote, a character Ollama drops),
    naming the task and what to change; and say when the chat template has no system role, so that
    every stage folds the prompt into the first user message. Raises ValueError."""
    for task in tasks:
        try:
            modelfile_line("SYSTEM", task.system_prompt)
        except ModelfileError as exc:
            raise ValueError(
                f"task {task.name!r}: its system prompt (dataset.system_prompt, the task's system_prompt or the "
                f"prompt file it names) cannot go into the Ollama Modelfile that export writes: {exc}"
            ) from None
    if any(t.kind == "chat" for t in tasks) and getattr(tokenizer, "chat_template", None):
        if folds_system(hf_codec(tokenizer)):
            print(
                "[dataset] the chat template has no system role: every stage (rows, evaluation, serve, "
                "Modelfile) folds the system prompt into the first user message",
                flush=True,
            )


def _split(rows: list[dict], by_document: bool, val_fraction: float, rng: random.Random) -> tuple[list, list]:
    """Hold out whole groups (documents, or single rows) until `val_fraction` of the rows is reached."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["source"] if by_document else str(i), []).append(i)
    if len(groups) < 2:
        raise ValueError(
            f"task {rows[0]['task']!r} has a single document: it cannot be split by document; "
            "set dataset.split_by: chunk or add documents"
        )
    order = sorted(groups)
    rng.shuffle(order)
    held: set[int] = set()
    for key in order[:-1]:  # at least one group stays for training
        if len(held) >= val_fraction * len(rows) and held:
            break
        held.update(groups[key])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


# --- the synth stage's question–answer pairs: one more chat task, held out by construction ---------

_SPLITS = ("train", "eval")  # pairs.jsonl's marks: "eval" pairs are knowledge-evaluation questions


def _pair_problem(row: Any) -> str | None:
    """What is wrong with one row of pairs.jsonl, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in ("question", "answer", "source"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"{key!r} must be a non-empty string"
    if row.get("split") not in _SPLITS:
        return f"'split' must be one of {list(_SPLITS)}, got {row.get('split')!r}"
    if not isinstance(row.get("passage_id", ""), str):
        return "'passage_id' must be a string"
    return None


def _read_pairs(synth_dir: str | Path | None) -> tuple[Path | None, list[tuple[int, dict]]]:
    """The synth stage's pairs file in `synth_dir` and its rows with their line numbers; (None, [])
    when `synth_dir` is None or holds no ``pairs.jsonl`` (no qa task then, said in one line). Rows
    are ``{"question", "answer", "source", "passage_id", "split": "train"|"eval"}``. Raises ValueError
    naming ``file:line`` and the field for a malformed row."""
    if synth_dir is None:
        return None, []
    file = Path(synth_dir) / paths.PAIRS.name
    if not file.is_file():
        print(f"[dataset] no {file}: no question–answer task (the synth stage writes it: `dvc repro synth`)")
        return None, []
    pairs = []
    for number, line in jsonl_lines(read_text(file)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}:{number}: not valid JSON ({exc.msg}); rerun `dvc repro synth`") from None
        if problem := _pair_problem(row):
            raise ValueError(f"{file}:{number}: {problem}; the synth stage writes this file: rerun `dvc repro synth`")
        pairs.append((number, row))
    return file, pairs


def _qa_task(resolved: list[Task], mode: str, pairs: list, name: str, system_prompt: str) -> Task | None:
    """The chat task the pairs become, or None: no pairs, dataset.mode text, or a task of that name
    exists (each said in one line)."""
    if not pairs:
        return None
    if mode == "text":
        print(
            f"[dataset] dataset.mode is text: the {len(pairs)} question–answer pairs of the synth stage are not "
            f"trained (mode auto trains them as task {name!r})",
            flush=True,
        )
        return None
    if any(t.name == name for t in resolved):
        print(
            f"[dataset] dataset.tasks has a task named {name!r} already: the synth stage's question–answer pairs "
            "are not trained (set synth.task to another name)",
            flush=True,
        )
        return None
    return Task(name, "chat", prompt_text(system_prompt))


def _qa_rows(task: Task, file: Path, pairs: list[tuple[int, dict]], tokenizer, knobs: tuple, counts: dict) -> list:
    """The conversations of the pairs marked "train" (rows ``{"messages", "source", "task",
    "passage_id", "split"}``); those marked "eval" are counted in ``synth_pairs_held_out``, never rows."""
    try:
        hf_codec(tokenizer)
    except ChatTemplateError as exc:
        raise ChatTemplateError(
            f"task {task.name!r} (the synth stage's question–answer pairs in {file}): {exc}; "
            "or set synth.questions_per_passage: 0"
        ) from None
    rows = []
    for number, pair in pairs:
        if pair["split"] == "eval":
            counts["synth_pairs_held_out"] += 1  # a knowledge-evaluation question: neither trained nor validated
            continue
        messages = [{"role": "user", "content": pair["question"]}, {"role": "assistant", "content": pair["answer"]}]
        row = _chat_row(task, file, number, messages, tokenizer, knobs, counts)
        if row is not None:
            rows.append({**row, "source": pair["source"], "passage_id": pair.get("passage_id"), "split": "train"})
    if counts["synth_pairs_held_out"]:
        print(
            f"[dataset] {counts['synth_pairs_held_out']} question–answer pairs held out: the knowledge "
            "evaluation's questions, in neither split",
            flush=True,
        )
    return rows


def _qa_split(
    rows: list[dict], validation_documents: set[str] | None, by_document: bool, val_fraction: float, rng
) -> tuple[list, list]:
    """Train and validation rows of the qa task. `validation_documents` (the text task's, when it is
    split by document): their pairs are validation rows, every other pair trains. Else split like a
    chat task, by document when `by_document` and there are two or more, else row by row."""
    if validation_documents is not None:
        return (
            [r for r in rows if r["source"] not in validation_documents],
            [r for r in rows if r["source"] in validation_documents],
        )
    if len(rows) < 2:
        return rows, []
    return _split(rows, by_document and len({r["source"] for r in rows}) > 1, val_fraction, rng)


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


def _split_stats(rows: list[dict], tokenizer, max_seq_len: int) -> dict:
    lengths, loss = [], 0
    for row in rows:
        ids, labels = tokenize_row(row, tokenizer)
        lengths.append(min(len(ids), max_seq_len))
        loss += loss_tokens(labels[:max_seq_len])
    return {"rows": len(rows), "tokens": sum(lengths), "loss_tokens": loss, "length_tokens": _percentiles(lengths)}


COUNTS = (
    "dropped_short",
    "dropped_overflow",
    "overflowed",
    "deduplicated_exact",
    "deduplicated_near",
    "bad_rows_skipped",
    "system_prompts_replaced",
    "sampled_out",
    "synth_pairs_held_out",
    "schema_invalid",
    "overflow_longest_tokens",
    "span_substituted",
)  # stats.json's counters, in this order


def _deduplicated_sample(
    task: Task,
    rows: list[dict],
    dedup_threshold: float,
    max_samples: int | None,
    rng: random.Random,
    counts: dict,
    at_least: int = 2,
) -> list[dict]:
    """`rows` without exact and near duplicates (exact only for chat rows), then at most `max_samples`
    of them drawn with `rng`. Raises ValueError when fewer than `at_least` remain (2: a train and a
    validation split)."""
    keys = [r["text"] if "text" in r else repr(r["messages"]) for r in rows]
    keep, exact, near = deduplicate(keys, dedup_threshold if task.kind == "text" else 1.0)
    counts["deduplicated_exact"] += exact
    counts["deduplicated_near"] += near
    rows = [rows[i] for i in keep]
    if max_samples and len(rows) > max_samples:
        counts["sampled_out"] += len(rows) - max_samples
        rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), max_samples))]
    if len(rows) < at_least:
        lost = {
            "duplicates": exact + near,
            "longer than dataset.max_seq_len": counts.get("dropped_overflow", 0),
            "bad rows skipped": counts.get("bad_rows_skipped", 0),
            "against the schema": counts.get("schema_invalid", 0),
        }
        said = ", ".join(f"{n} {why}" for why, n in lost.items() if n)
        where = (
            f"the labeled files matching {task.sources}"
            if task.kind == "chat"
            else "the extracted text (dataset.min_tokens and dataset.max_seq_len decide its chunks)"
        )
        raise ValueError(
            f"task {task.name!r} has {len(rows)} row(s) from {where}"
            + (f" (left out so far: {said})" if said else "")
            + ": at least 2 are needed for a train and a validation split; add rows"
        )
    return rows


def _stats(mode: str, max_seq_len: int, train_rows: int, val_rows: int, per_task: dict, counts: dict) -> dict:
    return {
        "mode": mode,
        "max_seq_len": max_seq_len,
        "rows": {"train": train_rows, "val": val_rows},
        "tokens": {s: sum(t[s]["tokens"] for t in per_task.values()) for s in ("train", "val")},
        "tasks": per_task,
        "dropped": counts["dropped_short"] + counts["dropped_overflow"],
        "deduplicated": counts["deduplicated_exact"] + counts["deduplicated_near"],
        **counts,
    }


def _write_dataset(out_dir: Path, train: list[dict], val: list[dict], prompts: dict[str, str], stats: dict) -> None:
    with atomic_outputs() as place:  # the four files are replaced together
        write_jsonl(place(out_dir / paths.TRAIN_ROWS.name), train)
        write_jsonl(place(out_dir / paths.VAL_ROWS.name), val)
        write_json(place(out_dir / paths.PROMPTS.name), prompts)
        write_json(place(out_dir / paths.DATASET_STATS.name), stats)
    print(
        f"[dataset] {len(train)} train / {len(val)} val rows of ≤{stats['max_seq_len']} tokens "
        f"({stats['tokens']['train']} train tokens); dropped {stats['dropped']} "
        f"(short {stats['dropped_short']}, overflow {stats['dropped_overflow']}), "
        f"overflowed {stats['overflowed']}, deduplicated {stats['deduplicated']}",
        flush=True,
    )
    print("[dataset] estimate training memory and time with: lorapipe plan", flush=True)


def build_dataset(
    text_dir: str | Path,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    labeled_dir: str | Path | None = None,
    mode: str = DEFAULTS.dataset.mode,
    tasks: Sequence[TaskParams | dict] = DEFAULTS.dataset.tasks,
    max_seq_len: int = DEFAULTS.dataset.max_seq_len,
    overlap_tokens: int = DEFAULTS.dataset.overlap_tokens,
    split_by: str = DEFAULTS.dataset.split_by,
    val_fraction: float = DEFAULTS.dataset.val_fraction,
    seed: int = DEFAULTS.common.seed,
    system_prompt: str = DEFAULTS.dataset.system_prompt,
    dedup_threshold: float = DEFAULTS.dataset.dedup_threshold,
    max_samples: int | None = DEFAULTS.dataset.max_samples,
    min_tokens: int = DEFAULTS.dataset.min_tokens,
    on_overflow: str = DEFAULTS.dataset.on_overflow,
    on_bad_row: str = DEFAULTS.dataset.on_bad_row,
    labeled_format: str = DEFAULTS.dataset.labeled_format,
    fields: Mapping[str, str] = DEFAULTS.dataset.fields,
    synth_dir: str | Path | None = None,
    qa_task: str = DEFAULTS.synth.task,
    qa_system_prompt: str = DEFAULTS.synth.system_prompt,
    json_schema: str | Path | None = DEFAULTS.eval.json_schema,
    span_substitution: int = DEFAULTS.dataset.span_substitution,
    rare_key_oversampling: int = DEFAULTS.dataset.rare_key_oversampling,
) -> dict:
    """Write ``train.jsonl``, ``val.jsonl``, ``prompts.json`` and ``stats.json`` into `out_dir`.

    `text_dir`: the extract stage's output (``manifest.jsonl`` and texts); `tokenizer_dir`: a model
    folder with the tokenizer; `labeled_dir`: JSON/JSONL labeled examples, None: none. The knobs are
    the ``dataset`` section of params.yaml plus ``common.seed`` (see `lorapipe.params.DatasetParams`
    for their meaning and units); `tasks` are TaskParams or their dicts. `synth_dir`: the synth stage's
    output (``data/synth``; None or no ``pairs.jsonl`` there: no qa task): its pairs become the chat
    task `qa_task` with `qa_system_prompt` (text, or a file; ``synth.task``, ``synth.system_prompt``),
    except in mode text or when a task of that name exists; pairs marked "eval" are in neither split,
    pairs of a validation document (text task split by document) only in validation. Returns the
    stats written to ``stats.json``. Raises FileNotFoundError when a task's data is missing and
    ValueError when a task has fewer than 2 rows, the params contradict each other, a system prompt
    cannot go into the Ollama Modelfile (check_prompts), the chat template refuses a row
    (ChatTemplateError, naming the file and row; skipped and counted with on_bad_row skip), or a row
    of ``pairs.jsonl`` is malformed (naming ``file:line`` and the field). With `json_schema`
    (``eval.json_schema``, the task's JSON Schema file), the answers of JSON tasks (labeled tasks
    whose answers are JSON objects) are checked against it before any training: the rows that do not
    satisfy it are named with why, and refused (ValueError) or, with on_bad_row skip, left out and
    counted (``schema_invalid``); a file that is not a JSON Schema is refused naming it (ValueError).
    Chat rows longer than `max_seq_len` are counted (``overflowed``; ``overflow_longest_tokens``, the
    longest) and, when dropped, named with the max_seq_len that would keep them.
    `rare_key_oversampling` > 1 gives the rows of a rare answer key more span-substituted copies
    (augment.rare_key_factors); it needs `span_substitution` > 0, and both must be within
    DatasetParams' bounds (ValueError otherwise, naming the param and the fix)."""
    # the bounds and the fix params.yaml gets (DatasetParams), for callers of the API too
    DatasetParams(span_substitution=span_substitution, rare_key_oversampling=rare_key_oversampling)
    text_dir, out_dir = Path(text_dir), Path(out_dir)
    labeled_dir = Path(labeled_dir) if labeled_dir is not None else None
    schema = (str(json_schema), load_json_schema(json_schema)) if json_schema else None
    tokenizer = load_tokenizer(tokenizer_dir)
    resolved = resolve_tasks(
        mode,
        [t.model_dump() if isinstance(t, TaskParams) else t for t in tasks],
        system_prompt,
        has_extracted_text(text_dir),
        bool(labeled_files(labeled_dir)),
        labeled_format,
        fields,
    )
    pairs_file, pairs = _read_pairs(synth_dir)
    qa = _qa_task(resolved, mode, pairs, qa_task, qa_system_prompt)
    check_prompts(resolved + ([qa] if qa else []), tokenizer)
    counts = dict.fromkeys(COUNTS, 0)
    train, val, per_task = [], [], {}
    knobs = (max_seq_len, on_overflow, on_bad_row)
    for task in resolved:
        if task.kind == "text":
            rows = _text_rows(task, text_dir, tokenizer, max_seq_len, overlap_tokens, min_tokens, counts)
        else:
            rows = _chat_rows(task, labeled_dir, tokenizer, knobs, schema, counts)
        rng = random.Random(f"{seed}:{task.name}")  # samples, then splits: one stream per task
        rows = _deduplicated_sample(task, rows, dedup_threshold, max_samples, rng, counts)
        task_train, task_val = _split(rows, task.kind == "text" and split_by == "document", val_fraction, rng)
        if task.kind == "chat" and span_substitution:
            copies = (span_substitution, rare_key_oversampling)
            made = _substituted(task, (task_train, task_val), copies, seed, (tokenizer, knobs[0], schema))
            counts["span_substituted"] += len(made)
            task_train = task_train + made
        _add_task(task, task_train, task_val, (train, val, per_task), tokenizer, max_seq_len)
    if qa:
        rng = random.Random(f"{seed}:{qa.name}")
        rows = _qa_rows(qa, pairs_file, pairs, tokenizer, knobs, counts)
        rows = _deduplicated_sample(qa, rows, 1.0, max_samples, rng, counts, at_least=0)
        by_text = split_by == "document" and any(t.kind == "text" for t in resolved)
        held = {r["source"] for r in val if "text" in r} if by_text else None
        qa_train, qa_val = _qa_split(rows, held, split_by == "document", val_fraction, rng)
        _add_task(qa, qa_train, qa_val, (train, val, per_task), tokenizer, max_seq_len)
    if counts["dropped_overflow"]:
        print(
            f"[dataset] {counts['dropped_overflow']} chat row(s) longer than dataset.max_seq_len ({max_seq_len} "
            f"tokens; the longest {counts['overflow_longest_tokens']}) were left out: set dataset.max_seq_len to "
            f"{counts['overflow_longest_tokens']} to train on them (more memory per row: lorapipe plan), or "
            "dataset.on_overflow: truncate to keep their beginning",
            flush=True,
        )
    stats = _stats(mode, max_seq_len, len(train), len(val), per_task, counts)
    faults.fault_point("mid")
    prompts = {task.name: task.system_prompt for task in resolved + ([qa] if qa else [])}
    _write_dataset(out_dir, train, val, prompts, stats)
    return stats


def _add_task(task: Task, task_train: list, task_val: list, into: tuple, tokenizer, max_seq_len: int) -> None:
    """Append one task's rows to the dataset's (train, val, per-task stats) `into`, and say so."""
    train, val, per_task = into
    train += task_train
    val += task_val
    per_task[task.name] = {
        "kind": task.kind,
        "train": _split_stats(task_train, tokenizer, max_seq_len),
        "val": _split_stats(task_val, tokenizer, max_seq_len),
    }
    print(f"[dataset] task {task.name} ({task.kind}): {len(task_train)} train / {len(task_val)} val rows", flush=True)
