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

Copies can also even out how often each key is seen (random oversampling of the rare classes, as for
any imbalanced classification; here a class is a key path of the answer): with ``rare_factor`` above 1,
a row whose rarest key occurs in fewer rows than the median key gets up to that many times the copies
(the median's count over its rarest key's count, rounded half up). On the Snips queries ``track`` is in
6 of the 560 rows that are not held out and ``artist`` in 82, and a model trained on equal copies gave
none of the 5 held-out ``track`` values its name (bench/MEASURED.md, issue 18).

Only the training rows are copied (never the validation rows, which must stay real), and only rows of
one user message and one JSON answer whose spelling lorapipe can write again exactly. A value counts as
a span when it occurs once in the query, at word boundaries; a value that occurs twice (``my`` in ``add
my song to my playlist``) is left as it is, since the copy could not say which occurrence it names.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import unicodedata
from collections.abc import Iterable
from typing import Any, Callable

from lorapipe.labeled import canonical_json

_SPELLINGS: tuple[Callable[[Any], str], ...] = (  # the JSON spellings an answer is written again in
    canonical_json,
    lambda data: json.dumps(data, ensure_ascii=False),
    lambda data: json.dumps(data),
    lambda data: json.dumps(data, ensure_ascii=False, separators=(",", ":")),
    lambda data: json.dumps(data, ensure_ascii=False, indent=2),
)


def _spelling(answer: str) -> tuple[Any, Callable[[Any], str]] | None:
    """(the JSON object of `answer`, the function that spells it exactly so), or None."""
    try:
        data = json.loads(answer)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for spell in _SPELLINGS:
        try:
            if spell(data) == answer:
                return data, spell
        except ValueError:  # NaN or Infinity: not JSON, and not a spelling canonical_json writes
            return None
    return None


def _wordlike(char: str) -> bool:
    """Is `char` part of a word: a letter, digit or ``_``, or a combining mark (the accent of a
    decomposed ``é``)?"""
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


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
    """Starts of `value` in `text` with no word character (or combining mark) right before or after."""
    starts, at = [], text.find(value)
    while value and at != -1:
        end = at + len(value)
        # nothing word-like on either side: "#42" in "ext#42" or "cafe" in a decomposed "café" is no span
        if (at == 0 or not _wordlike(text[at - 1])) and (end == len(text) or not _wordlike(text[end])):
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


def _key_paths(data: Any, prefix: tuple = ()) -> set[tuple]:
    """The key paths of `data` that hold a value other than an object: ``("intent",)`` and ``("slots",
    "track")`` for ``{"intent": …, "slots": {"track": …}}`` (``("slots",)`` holds an object, so it is
    not a key of its own). A list is transparent: a key holding a string, a list of strings or an empty
    list is the same key, and the keys of objects in a list are paths below the list's key. What
    rare_factor counts rows by."""
    if isinstance(data, dict):
        return {
            path
            for key, value in data.items()
            for path in (set() if isinstance(value, dict) else {(*prefix, key)}) | _key_paths(value, (*prefix, key))
        }
    if isinstance(data, list):
        return {path for value in data for path in _key_paths(value, prefix)}
    return set()


def rare_key_factors(answers: list[Any], most: int) -> list[int]:
    """How many times the copies each answer's row gets under rare_factor `most` (≥ 1): for an answer
    whose rarest key path (_key_paths) is in `n` of `answers` (JSON objects) while the median key path
    is in `m`, ``min(most, max(1, floor(m / n + 0.5)))`` (rounded half up); 1 for an answer with no key.
    The median is over the distinct key paths of all answers. Raises ValueError when `most` < 1."""
    if most < 1:
        raise ValueError(f"rare_factor must be at least 1, got {most}")
    if most == 1:  # the default: no row draws more, so no key is counted
        return [1] * len(answers)
    paths = [_key_paths(a) for a in answers]
    rows_with: dict[tuple, int] = {}
    for found in paths:
        for path in found:
            rows_with[path] = rows_with.get(path, 0) + 1
    if not rows_with:
        return [1] * len(answers)
    median = statistics.median(rows_with.values())
    return [
        min(most, max(1, math.floor(median / min(rows_with[p] for p in found) + 0.5))) if found else 1
        for found in paths
    ]


def span_substitution(
    rows: list[dict], copies: int, seed: str | int, avoid: Iterable[str] = (), rare_factor: int = 1
) -> tuple[list[dict], dict[str, int]]:
    """Up to `copies` new rows per row of `rows` (dataset rows of one chat task: ``{"messages": […], …}``),
    each with the span values of its JSON answer swapped for values of the same key path from other
    rows of `rows`, in the user message and in the answer alike; and counts: ``rows`` copied,
    ``copies`` written, ``not_written`` (copies drawn but dropped, below), ``skipped_not_json`` (not
    one user message and one JSON object answer spelled as lorapipe can write it again),
    ``skipped_no_span`` (no value is a span of the query with another value to
    take its place), ``skipped_overlap`` (two span values overlap). A copy is not written when it
    repeats a query of `rows`, of `avoid` (the validation queries: a copy must not rebuild a held-out
    row) or of another copy, or when a value it put in is not once in its query (a value also written
    elsewhere in the query, or twice in one answer). With `rare_factor` > 1 a row draws
    ``copies × rare_key_factors(...)`` copies in all (its rarest key path counted over the rows that
    are JSON; count ``rare_rows``: rows that drew more): the copies of rare_factor 1, then the further
    ones, drawn with a stream of their own, so the other rows' copies are the same as without it.
    Deterministic for a given `seed` (a ``random.Random`` seed). Raises ValueError when `rare_factor` < 1.
    The method: slot substitution, Louvan & Magnini 2020 (PACLIC), the module's docstring."""
    rng = random.Random(seed)
    counts = dict.fromkeys(
        ("rows", "copies", "not_written", "rare_rows", "skipped_not_json", "skipped_no_span", "skipped_overlap"), 0
    )
    if rare_factor < 1:
        raise ValueError(f"rare_factor must be at least 1, got {rare_factor}")
    if copies <= 0:
        return [], counts
    parsed = []  # (row, (user index, answer index), data, spelling, spans)
    pool: dict[tuple, list[str]] = {}
    for row in rows:
        parts = _parts(row["messages"])
        texts = [row["messages"][i]["content"] for i in parts] if parts else []
        spelled = _spelling(texts[1]) if all(isinstance(t, str) for t in texts) and texts else None
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
    seen = {row["messages"][parts[0]]["content"] for row, parts, *_ in parsed} | set(avoid)
    factors = rare_key_factors([data for _, _, data, _, _ in parsed], rare_factor)
    new_rows: list[dict] = []
    copied = [i for i, (*_, spans) in enumerate(parsed) if any(len(pool[path]) > 1 for _, _, path, _ in spans)]
    counts["skipped_no_span"] = len(parsed) - len(copied)

    def draw(item: tuple, times: int, rng: random.Random) -> int:
        """Draw `times` copies of the parsed row `item` with `rng`; the number written."""
        row, (user, answer), data, spell, spans = item
        query, written = row["messages"][user]["content"], 0
        swapped = {(path, value) for _, _, path, value in spans}
        kept = {value for path, value in _leaves(data) if (path, value) not in swapped and value in query}
        for _ in range(times):
            new: dict[tuple, dict[str, str]] = {}
            text, end = [], len(query)
            for start, stop, path, value in reversed(spans):
                others = [v for v in pool[path] if v != value]  # spans never repeat a (path, value): they overlap
                taken = rng.choice(others) if others else value
                new.setdefault(path, {})[value] = taken
                text += [query[stop:end], taken]
                end = start
            text.append(query[:end])
            copy = "".join(reversed(text))
            if (
                copy in seen
                or any(value not in copy for value in kept)  # a value left as it was lost its words
                or any(len(_occurrences(copy, value)) != 1 for taken in new.values() for value in taken.values())
            ):
                counts["not_written"] += 1
                continue
            seen.add(copy)
            messages = [dict(m) for m in row["messages"]]
            messages[user]["content"] = copy
            messages[answer]["content"] = spell(_replace_leaves(data, new))
            new_rows.append({**row, "messages": messages})
            written += 1
        counts["copies"] += written
        return written

    written = {i: draw(parsed[i], copies, rng) for i in copied}
    # the rare rows' further copies come after all rows' first ones, from a stream of their own: every
    # row's first `copies` draws are those of rare_factor 1, whatever the factors
    more = random.Random(f"{seed}:rare_key_oversampling")
    for i in copied:
        if factors[i] > 1:
            counts["rare_rows"] += 1
            written[i] += draw(parsed[i], copies * (factors[i] - 1), more)
    counts["rows"] = sum(n > 0 for n in written.values())
    return new_rows, counts
