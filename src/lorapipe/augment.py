"""Span substitution: more training rows for extraction tasks, whose answers copy words of the query.

A labeled row such as ``Add gareth gates to my autumn playlist`` →
``{"intent": "AddToPlaylist", "slots": {"artist": "gareth gates", "playlist": "autumn"}}`` teaches the
model where the values sit in the query; a small task shows each sentence shape with one set of values
only, and a small model learns the values instead of the shape (on the Snips queries of bench/data, half
of the held-out slot values never occur in the 531 training rows). Slot substitution (Louvan & Magnini
2020, "Simple is Better! Lightweight Data Augmentation for Low Resource Slot Filling and Intent
Classification", PACLIC) writes copies of a training row in which every value that is a span of the
query is swapped, in the query and in the answer alike, for a value of the same key from another
training row: ``Add Ayaka Iida to my ejercicio playlist``.

Only the training rows are copied (never the validation rows, which must stay real), and only rows of
one user message and one JSON answer whose spelling lorapipe can write again exactly. A value counts as
a span when it occurs once in the query, at word boundaries; a value that occurs twice (``my`` in ``add
my song to my playlist``) is left as it is, since the copy could not say which occurrence it names.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Callable

from lorapipe.labeled import canonical_json

_SPELLINGS: tuple[Callable[[Any], str], ...] = (  # the JSON spellings an answer is written again in
    canonical_json,
    lambda data: json.dumps(data, ensure_ascii=False),
    lambda data: json.dumps(data),
    lambda data: json.dumps(data, ensure_ascii=False, separators=(",", ":")),
    lambda data: json.dumps(data, ensure_ascii=False, indent=2),
)
_WORD = re.compile(r"\w")


def _spelling(answer: str) -> tuple[Any, Callable[[Any], str]] | None:
    """(the JSON object of `answer`, the function that spells it exactly so), or None."""
    try:
        data = json.loads(answer)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return next(((data, spell) for spell in _SPELLINGS if spell(data) == answer), None)


def _leaves(data: Any, path: tuple = ()) -> list[tuple[tuple, str]]:
    """Every string value of `data` with its key path (a list's items share the path ``(…, "*")``)."""
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(data, list):
        return [(path + ("*",), value) for value in data if isinstance(value, str)] + [
            leaf for value in data if not isinstance(value, str) for leaf in _leaves(value, path + ("*",))
        ]
    return [(path, data)] if isinstance(data, str) else []


def _occurrences(text: str, value: str) -> list[int]:
    """Starts of `value` in `text` that begin and end at word boundaries."""
    starts, at = [], text.find(value)
    while value and at != -1:
        before = at == 0 or not (_WORD.match(text[at - 1]) and _WORD.match(value[0]))
        end = at + len(value)
        after = end == len(text) or not (_WORD.match(text[end]) and _WORD.match(value[-1]))
        if before and after:
            starts.append(at)
        at = text.find(value, at + 1)
    return starts


def _replace_leaves(data: Any, new: dict[tuple, dict[str, str]], path: tuple = ()) -> Any:
    """`data` with the string values `new[path][old]` in place of `old` at their key paths."""
    if isinstance(data, dict):
        return {key: _replace_leaves(value, new, (*path, key)) for key, value in data.items()}
    if isinstance(data, list):
        return [_replace_leaves(value, new, path + ("*",)) for value in data]
    if isinstance(data, str):
        return new.get(path, {}).get(data, data)
    return data


def _spans(query: str, leaves: list[tuple[tuple, str]]) -> list[tuple[int, int, tuple, str]] | None:
    """The leaves that are spans of `query` (once, at word boundaries) as (start, end, path, value), or
    None when two of them overlap (the copy could not replace one without the other)."""
    spans = []
    for path, value in leaves:
        starts = _occurrences(query, value)
        if len(starts) == 1:
            spans.append((starts[0], starts[0] + len(value), path, value))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return spans


def _parts(messages: list[dict]) -> tuple[int, int] | None:
    """(index of the user message, index of the assistant message) of a single-turn conversation."""
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if len(users) != 1 or len(answers) != 1 or answers[0] < users[0]:
        return None
    return users[0], answers[0]


def span_substitution(rows: list[dict], copies: int, seed: str | int) -> tuple[list[dict], dict[str, int]]:
    """Up to `copies` new rows per row of `rows` (dataset rows of one chat task: ``{"messages": […], …}``),
    each with the span values of its JSON answer swapped for values of the same key path from other
    rows of `rows`, in the user message and in the answer alike; and counts: ``rows`` copied, ``copies``
    written, ``skipped_not_json`` (not one user message and one JSON object answer spelled as lorapipe
    can write it again), ``skipped_no_span`` (no value is a span of the query with another value to
    take its place), ``skipped_overlap`` (two span values overlap). A copy that repeats a query of
    `rows` or another copy is not written. Deterministic for a given `seed` (a ``random.Random`` seed).
    The method: slot substitution, Louvan & Magnini 2020 (PACLIC), the module's docstring."""
    rng = random.Random(seed)
    counts = dict.fromkeys(("rows", "copies", "skipped_not_json", "skipped_no_span", "skipped_overlap"), 0)
    if copies <= 0:
        return [], counts
    parsed = []  # (row, user index, answer index, data, spelling, spans)
    pool: dict[tuple, list[str]] = {}
    for row in rows:
        parts = _parts(row["messages"])
        spelled = _spelling(row["messages"][parts[1]]["content"]) if parts else None
        if spelled is None:
            counts["skipped_not_json"] += 1
            continue
        data, spell = spelled
        spans = _spans(row["messages"][parts[0]]["content"], _leaves(data))
        if spans is None:
            counts["skipped_overlap"] += 1
            continue
        for _, _, path, value in spans:
            pool.setdefault(path, [])
            if value not in pool[path]:
                pool[path].append(value)
        parsed.append((row, parts, data, spell, spans))
    seen = {row["messages"][parts[0]]["content"] for row, parts, *_ in parsed}
    new_rows = []
    for row, (user, answer), data, spell, spans in parsed:
        swappable = [s for s in spans if len(pool[s[2]]) > 1]
        if not swappable:
            counts["skipped_no_span"] += 1
            continue
        query, written = row["messages"][user]["content"], 0
        swapped = {(path, value) for _, _, path, value in spans}
        kept = {value for path, value in _leaves(data) if (path, value) not in swapped and value in query}
        for _ in range(copies):
            new: dict[tuple, dict[str, str]] = {}
            text, end = [], len(query)
            for start, stop, path, value in reversed(spans):
                others = [v for v in pool[path] if v != value]
                taken = new.setdefault(path, {}).get(value) or (rng.choice(others) if others else value)
                new[path][value] = taken
                text += [query[stop:end], taken]
                end = start
            text.append(query[:end])
            copy = "".join(reversed(text))
            if copy in seen or any(value not in copy for value in kept):
                continue  # a repeat, or a value left as it was lost its words (it overlapped a swapped one)
            seen.add(copy)
            messages = [dict(m) for m in row["messages"]]
            messages[user]["content"] = copy
            messages[answer]["content"] = spell(_replace_leaves(data, new))
            new_rows.append({**row, "messages": messages})
            written += 1
        counts["rows"] += written > 0
        counts["copies"] += written
    return new_rows, counts
