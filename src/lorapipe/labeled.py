"""Read labeled examples (JSON or JSONL) in any of the supported shapes as chat conversations.

Formats (detected from the first row's fields, or named):
- ``query_data``: ``{"query": …, "data": {…}}``; the answer is the canonical JSON of ``data``
- ``instruction``: ``{"instruction": …, "input": …, "output": …}``
- ``messages``: ``{"messages": [{"role": …, "content": …}, …]}``
- ``conversations``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}``
- ``prompt_completion``: ``{"prompt": …, "completion": …}``

`fields` renames fields: ``{"query": "question"}`` reads the query from ``question``.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, NamedTuple

from lorapipe.textfiles import TextEncodingError, jsonl_lines, read_text

FORMATS = ("query_data", "instruction", "messages", "conversations", "prompt_completion")
_SIGNATURES = {  # canonical fields that identify each format, most specific first
    "messages": ("messages",),
    "conversations": ("conversations",),
    "query_data": ("query", "data"),
    "instruction": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


def canonical_json(data: Any) -> str:
    """The one JSON spelling of an answer: keys keep the user's order, separators are fixed,
    non-ASCII stays as is, and NaN or Infinity (not JSON) are refused."""
    return json.dumps(data, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


def is_json_schema(path: Path) -> bool:
    """A ``.json`` file holding a JSON Schema (an object with ``$schema``), not labeled examples."""
    if path.suffix.lower() != ".json":
        return False
    try:
        data = json.loads(read_text(path))
    except (json.JSONDecodeError, TextEncodingError):
        return False
    return isinstance(data, dict) and "$schema" in data


def load_json_schema(path: str | Path, key: str = "eval.json_schema", warn: str | None = None) -> dict:
    """The JSON Schema in the file `path` names (`key`: the param that named it, for the message).
    With `warn`, each keyword its draft does not define is printed to stderr as ``{warn}: …``
    (`warn_unknown_keywords`: what `lorapipe check`, the stages, `serve` and `ask` say).
    Raises ValueError naming the file when it is not JSON or not a valid JSON Schema (checked by
    jsonschema against the metaschema it declares, Draft 2020-12 when it declares none; a ``$schema``
    jsonschema does not know, or a ``$ref`` that resolves to nothing within the file, is refused), and
    FileNotFoundError when it is not there."""
    from jsonschema import exceptions, validators

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}: no such file {path}")
    try:
        schema = json.loads(read_text(path))
    except (json.JSONDecodeError, TextEncodingError) as exc:
        raise ValueError(f"{key}: {path} is not JSON ({exc}); it must hold a JSON Schema") from None
    if not isinstance(schema, dict):
        raise ValueError(f"{key}: {path} holds a JSON {type(schema).__name__}, not a JSON Schema (an object)")
    declared = schema.get("$schema")
    if declared is not None and not isinstance(declared, str):
        raise ValueError(f"{key}: {path} is not a valid JSON Schema: its $schema is {declared!r}, not a URI")
    validator = validators.Draft202012Validator if declared is None else validators.validator_for(schema, default=None)
    if validator is None:
        raise ValueError(
            f"{key}: {path} declares $schema {declared!r}, a draft jsonschema does not know; name one it does "
            "(e.g. https://json-schema.org/draft/2020-12/schema) or leave $schema out for Draft 2020-12"
        )
    try:
        validator.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "(top level)"
        raise ValueError(f"{key}: {path} is not a valid JSON Schema: {exc.message} at {where}") from None
    except RecursionError:
        raise ValueError(
            f"{key}: {path} nests its subschemas too deeply to check (past Python's recursion limit); "
            "flatten it with $defs and $ref"
        ) from None
    broken = _unresolvable_refs(schema)
    if broken:
        where, ref = broken[0]
        raise ValueError(
            f"{key}: {path} is not a valid JSON Schema: $ref {ref!r} at {where} points to nothing in the file "
            "(lorapipe reads no other file or URL)"
        )
    if warn is not None:
        warn_unknown_keywords(schema, warn)
    return schema


def schema_validator(schema: dict):
    """A jsonschema validator of `schema` under the draft its ``$schema`` declares (Draft 2020-12 when it
    declares none): what the dataset stage checks answers with and the evaluation scores them with."""
    from jsonschema import validators

    return validators.validator_for(schema, default=validators.Draft202012Validator)(schema)


# Annotations some drafts define in their text but not in the metaschema jsonschema ships (draft 7's writeOnly).
_ANNOTATIONS = {"title", "description", "default", "examples", "readOnly", "writeOnly", "deprecated", "$comment"}
# Keywords a draft's metaschema still lists, for older schemas, but that its validator no longer applies.
_SUPERSEDED = {
    "https://json-schema.org/draft/2020-12/schema": {
        "dependencies": "dependentRequired or dependentSchemas",
        "$recursiveRef": "$dynamicRef",
        "$recursiveAnchor": "$dynamicAnchor",
    },
    "https://json-schema.org/draft/2019-09/schema": {"dependencies": "dependentRequired or dependentSchemas"},
}
_DEFAULT_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _dialect(node: dict, default: str) -> str:
    """The draft URI `node` declares with ``$schema`` (normalized: no trailing ``#``), else `default`."""
    from jsonschema import validators

    declared = node.get("$schema")
    if isinstance(declared, str) and validators.validator_for({"$schema": declared}, default=None) is not None:
        return declared.rstrip("#")
    return default


class _Draft(NamedTuple):
    known: set[str]  # the keywords the draft applies or annotates with
    lowercase: dict[str, str]  # those keywords lowercased → as spelt
    superseded: dict[str, str]  # keywords its metaschema lists but its validator no longer applies → successor
    assertions: set[str]  # the keywords its validator applies (not annotations, not containers)
    ref_siblings_ignored: bool  # draft 7 and before: beside a $ref, every other keyword is ignored
    spec: object  # its `referencing` specification


@functools.cache
def _vocabulary(dialect: str) -> _Draft:
    """What draft `dialect` knows (_Draft), from the metaschemas and validators jsonschema ships."""
    from urllib.parse import urljoin

    from jsonschema import validators
    from jsonschema_specifications import REGISTRY
    from referencing.jsonschema import specification_with

    validator = validators.validator_for({"$schema": dialect})
    meta = validator.META_SCHEMA
    known = set(meta.get("properties", {})) | set(validator.VALIDATORS) | _ANNOTATIONS
    base = meta.get("$id", meta.get("id", ""))
    for part in meta.get("allOf", []):  # Draft 2019-09 on: one metaschema per vocabulary
        if isinstance(part.get("$ref"), str):
            known |= set(REGISTRY.contents(urljoin(base, part["$ref"])).get("properties", {}))
    superseded = _SUPERSEDED.get(dialect, {})
    spec = specification_with(base, default=None) or specification_with(_DEFAULT_DIALECT)
    known -= set(superseded)
    probe = {"$ref": "#/definitions/any", "definitions": {"any": {}}, "type": "string"}
    ignored = validator(probe).is_valid(0)  # the validator's own answer: is `type` beside $ref applied?
    assertions = set(validator.VALIDATORS) - set(superseded)
    return _Draft(known, {k.lower(): k for k in known}, superseded, assertions, ignored, spec)


def _draft_name(dialect: str) -> str:
    """``2020-12`` for ``https://json-schema.org/draft/2020-12/schema``, ``7`` for ``http://json-schema.org/draft-07/schema``."""
    part = dialect.rstrip("/").split("/")[-2]
    return part.removeprefix("draft-").lstrip("0") or part


def warn_unknown_keywords(schema: dict, prefix: str) -> None:
    """Print each of `unknown_keywords(schema)` to stderr as ``{prefix}: {line}`` (a warning, not a
    refusal: the schema is legal JSON Schema). What `lorapipe check`, the stages, `serve` and `ask` say."""
    import sys

    for line in unknown_keywords(schema):
        print(f"{prefix}: {line}", file=sys.stderr, flush=True)


def _ref_sites(schema: dict) -> tuple[list[tuple[tuple[str, ...], str]], bool]:
    """(``(where, $ref)`` of every reference in `schema` in the file's order, `where` the JSON-pointer
    tokens of the object holding it; whether a subschema below the top declares its own base URI
    (``$id``/``id``)). The values of data keywords (``enum``, ``const``, ``default``, …) are not walked."""
    sites: list[tuple[tuple[str, ...], str]] = []
    nested_ids = False

    def walk(node, where: tuple[str, ...]) -> None:
        nonlocal nested_ids
        if isinstance(node, dict):
            if where and isinstance(node.get("$id", node.get("id")), str):
                nested_ids = True
            if isinstance(node.get("$ref"), str):
                sites.append((where, node["$ref"]))
            for name, value in node.items():
                if name not in _DATA_KEYS:
                    walk(value, (*where, str(name)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*where, str(i)))

    walk(schema, ())
    return sites, nested_ids


def _local_refs(schema: dict) -> dict[tuple[str, ...], str]:
    """The JSON-pointer tokens of every in-file ``$ref`` (``#/…``) in `schema` → the ``$ref`` itself."""
    from urllib.parse import unquote

    return {
        tuple(unquote(t).replace("~1", "/").replace("~0", "~") for t in ref[2:].split("/")): ref
        for _, ref in _ref_sites(schema)[0]
        if ref.startswith("#/")
    }


def _resolver(schema: dict):
    """A `referencing` resolver rooted at `schema` (Draft 2020-12 unless it declares its own draft)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    return Registry().resolver_with_root(Resource.from_contents(schema, default_specification=DRAFT202012))


def unknown_keywords(schema: dict) -> list[str]:
    """One line per keyword of `schema` (or of a subschema) that its draft does not apply, such as a
    misspelt ``requried`` or draft 7's ``dependencies`` in a Draft 2020-12 schema: JSON Schema ignores
    such a keyword, so the rule it meant is silently not checked. Each line names where it is (a JSON
    pointer without the ``#/``) and the keyword it may mean (difflib, case-insensitive), or its successor.
    Also named: in a draft 4, 6 or 7 schema, a validation keyword beside a ``$ref`` (``{"$ref": …,
    "type": …}``), which those drafts ignore (jsonschema's validator is asked, not assumed).
    Not named: extension keywords spelt ``x-…``, and a container of subschemas that a ``$ref`` in the
    file points into (``$defs`` in a draft-7 schema), whose subschemas are checked instead. The
    draft's keywords are its metaschema's (and vocabularies') as jsonschema ships them, the draft the
    schema or a subschema declares with ``$schema`` (Draft 2020-12 when none); subschemas are the
    ones `referencing` finds for that draft, in the file's order (an unknown keyword's contents are
    not walked). Empty when all are known."""
    import difflib

    from referencing.exceptions import Unresolvable

    refs = _local_refs(schema)
    resolver = _resolver(schema)
    found: list[str] = []

    def walk(node: dict, at: tuple, dialect: str) -> None:
        dialect = _dialect(node, dialect)
        draft = _vocabulary(dialect)
        where = "/".join(map(str, at)) or "(top level)"
        followed: list[tuple[tuple, dict]] = []
        for keyword in node:
            if keyword in draft.known:
                if draft.ref_siblings_ignored and keyword != "$ref" and keyword in draft.assertions and "$ref" in node:
                    found.append(
                        f"keyword {keyword!r} beside $ref in the schema at {where}, which draft "
                        f"{_draft_name(dialect)} ignores (only the $ref applies there): put both under "
                        f'allOf, e.g. "allOf": [{{"$ref": ...}}, {{"{keyword}": ...}}]'
                    )
                continue
            if keyword.lower().startswith("x-"):
                continue
            here = (*map(str, at), keyword)
            inside = [r for r in refs if r[: len(here)] == here and len(r) > len(here)]
            if inside:  # a container a $ref points into: what it points at is a subschema
                for tokens in sorted(inside):
                    try:
                        target = resolver.lookup(refs[tokens]).contents
                    except Unresolvable:
                        continue
                    if isinstance(target, dict):
                        followed.append((tokens, target))
                continue
            if keyword in draft.superseded:
                hint = f": draft {_draft_name(dialect)} uses {draft.superseded[keyword]} instead"
            else:
                near = difflib.get_close_matches(keyword.lower(), sorted(draft.lowercase), n=1, cutoff=0.75)
                hint = f": did you mean {draft.lowercase[near[0]]!r}?" if near else " (not a keyword of its draft)"
            found.append(f"unknown keyword {keyword!r} in the schema at {where}, which JSON Schema ignores{hint}")
        place = _places(node)
        subs = [s for s in draft.spec.subresources_of(node) if isinstance(s, dict) and id(s) in place]
        for sub in sorted(subs, key=lambda s: place[id(s)][0]):
            walk(sub, (*at, *place[id(sub)][1]), dialect)
        for ref, target in followed:
            walk(target, ref, dialect)

    walk(schema, (), _DEFAULT_DIALECT)
    return list(dict.fromkeys(found))  # a subschema reached twice (a $ref into it) is named once


def _places(node: dict) -> dict[int, tuple[int, tuple]]:
    """id() of each dict one or two levels inside `node` → (the position of its keyword in `node`, its
    pointer tokens from `node`): where a subschema sits, in the file's order."""
    place: dict[int, tuple[int, tuple]] = {}
    for n, (keyword, value) in enumerate(node.items()):
        if isinstance(value, dict):
            place.setdefault(id(value), (n, (keyword,)))
            for name, item in value.items():
                if isinstance(item, dict):
                    place.setdefault(id(item), (n, (keyword, name)))
        elif isinstance(value, list):
            for k, item in enumerate(value):
                if isinstance(item, dict):
                    place.setdefault(id(item), (n, (keyword, k)))
    return place


def _unresolvable_refs(schema: dict) -> list[tuple[str, str]]:
    """``(path, $ref)`` of each reference in `schema` that does not resolve within the file, in order.
    Not checked (none returned) when a subschema declares its own base URI (``$id``/``id``), whose
    references resolve against that URI."""
    from referencing.exceptions import Unresolvable

    sites, nested_ids = _ref_sites(schema)
    if nested_ids or not sites:
        return []
    resolver = _resolver(schema)
    broken = []
    for where, ref in sites:
        try:
            resolver.lookup(ref)
        except Unresolvable:
            broken.append(("/".join(where) or "(top level)", ref))
    return broken


_SPAN_TOKEN = re.compile(r"\w+|[^\w\s]")
_NOT_FREE = ("enum", "const", "pattern", "format")  # a string these already pin down keeps its rule
_DATA_KEYS = ("enum", "const", "default", "examples", "required")  # keywords whose values are data, not schemas
_KEPT = ("not", "propertyNames")  # subschemas whose strings are not values: a rewrite would change their meaning
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")  # name -> schema
SPAN_MAX_TOKENS = 32  # words and marks in one span
SPAN_MAX_TEXT = 128  # words and marks in a text the span constraint accepts (at most 4,096 spans)


def query_spans(text: str, max_tokens: int = SPAN_MAX_TOKENS) -> list[str]:
    """The substrings of `text` that the span constraint allows a value to be: from the start of a word
    (a run of letters, digits or ``_``), or of a mark written against a word (``$50``, ``#1``, ``(500)
    Days``, ``"Jethro"``), to the end of that or a later word or mark, at most `max_tokens` words and
    marks long; in order of appearance, each once. A text of n words and marks gives at most
    n × `max_tokens` spans (about 57 for a Snips query, 319 at most).

    Word-aligned so that a value cannot stop inside a word: on the 700 Snips queries (bench/data) this
    holds 1,786 of the 1,787 reference slot values; the one it cannot hold is ``nearest`` of the typo
    ``thenearest``. Possessives stay reachable ("herminia" and "herminia's"), as do "lo-fi" and "5 A.M.".
    Scripts written without spaces (Chinese, Japanese, Thai) give whole runs only: leave the constraint
    off for them. Raises ValueError for a text of more than SPAN_MAX_TEXT words and marks (the grammar
    grows with the square of the text)."""
    marks = list(_SPAN_TOKEN.finditer(text))
    if len(marks) > SPAN_MAX_TEXT:
        raise ValueError(
            f"the span constraint takes messages of at most {SPAN_MAX_TEXT} words and punctuation marks; this one "
            f"has {len(marks)}: leave the span constraint off for long inputs"
        )
    spans: dict[str, None] = {}
    for i, first in enumerate(marks):
        word = first.group()[0].isalnum() or first.group()[0] == "_"
        glued = i + 1 < len(marks) and marks[i + 1].start() == first.end() and marks[i + 1].group()[0].isalnum()
        if word or glued:  # a span that starts with a mark holds the word it is written against
            for last in marks[i if word else i + 1 : i + max_tokens]:
                spans[text[first.start() : last.end()]] = None
    return list(spans)


def span_schema(schema: dict, text: str, max_tokens: int = SPAN_MAX_TOKENS, placeholder=None) -> dict:
    """`schema` with every free string value (``"type": "string"`` without enum, const, pattern or
    format) turned into an ``enum`` of query_spans(`text`), keeping only the spans its minLength and
    maxLength allow: the span constraint, for extraction tasks whose values are words of the query
    (a llama.cpp grammar built from the result lets a slot hold nothing else). Object keys, numbers,
    booleans and enums are unchanged, as are ``not`` and ``propertyNames``; definitions under ``$defs``
    are rewritten where they are defined. A free string with no span left (no words in `text`) may
    only be empty. `placeholder(spans)`, when given, returns the one enum value that stands for each
    list of spans (generation.span_gbnf writes the alternatives into the grammar itself). `schema`
    is not modified. Raises ValueError for a minLength or maxLength that is not an integer and for a
    text query_spans refuses."""
    spans = query_spans(text, max_tokens)

    def free_string(node: dict) -> dict:
        low, high = node.get("minLength", 0), node.get("maxLength")
        if not isinstance(low, int) or not isinstance(high, (int, type(None))):
            raise ValueError(f"minLength and maxLength must be integers (got {low!r}, {high!r})")
        allowed = [s for s in spans if len(s) >= low and (high is None or len(s) <= high)] or [""]
        rest = {k: v for k, v in node.items() if k not in ("type", "minLength", "maxLength")}
        return {**rest, "enum": [placeholder(allowed)] if placeholder else allowed}

    def rewrite(node):
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if isinstance(kind, list) and "string" in kind and not any(k in node for k in _NOT_FREE):
            others = [k for k in kind if k != "string"]
            string = free_string({**node, "type": "string"})
            if not others:
                return string
            rest = {k: v for k, v in node.items() if k != "type"}
            return {"anyOf": [string, rewrite({**rest, "type": others[0] if len(others) == 1 else others})]}
        if kind == "string" and not any(k in node for k in _NOT_FREE):
            return free_string(node)
        out = {}
        for key, value in node.items():
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: rewrite(sub) for name, sub in value.items()}
            else:
                out[key] = value if key in _DATA_KEYS or key in _KEPT else rewrite(value)
        return out

    return rewrite(schema)


def schema_errors(answer: str, schema: dict, most: int = 3) -> str | None:
    """Why an answer (JSON text) does not satisfy `schema`, in one line, or None when it does: each of
    its errors (by place in the answer, at most `most`, then how many more), ``; ``-separated, so that
    one pass over the data names all that a row needs fixed."""
    try:
        data = json.loads(answer)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    # by place: array positions as numbers (2 before 10), before the object keys beside them
    errors = sorted(
        schema_validator(schema).iter_errors(data),
        key=lambda e: [(isinstance(p, str), p if isinstance(p, int) else str(p)) for p in e.absolute_path],
    )
    if not errors:
        return None
    most = max(most, 1)
    said = [f"{e.message} at {'/'.join(map(str, e.absolute_path)) or '(top level)'}" for e in errors[:most]]
    return "; ".join(said + ([f"and {len(errors) - most} more"] if len(errors) > most else []))


def read_records(path: Path, on_bad_row: str = "error") -> tuple[list[tuple[int, dict]], int]:
    """``[(line number, object), …]`` from a JSONL file or a JSON array, and the count of bad rows skipped.

    The file may start with a byte-order mark and be UTF-16 (`lorapipe.textfiles.read_text`); lines
    as `lorapipe.textfiles.jsonl_lines` (a U+2028 inside a string does not split a row). Raises
    TextEncodingError (a ValueError) naming a file that is not UTF-8, ValueError naming ``path:line``
    for invalid JSON, and an item of a JSON array that is no object by its position (``item 3``);
    with `on_bad_row` ``skip`` such rows are counted instead. In a JSON array the number is the item's
    position, not a line."""
    text = read_text(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        items = data if isinstance(data, list) else [data]
        records, bad = [], 0
        for number, item in enumerate(items, 1):
            if isinstance(item, dict):
                records.append((number, item))
            elif on_bad_row == "skip":
                bad += 1
            else:
                raise ValueError(
                    f"{path}: item {number} of the JSON array is {_clip(item)}, not a JSON object (one labeled "
                    "row); fix it or set dataset.on_bad_row: skip"
                )
        return records, bad
    records, bad = [], 0
    for number, line in jsonl_lines(text):
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise json.JSONDecodeError("expected a JSON object", line, 0)
        except json.JSONDecodeError as exc:
            if on_bad_row == "skip":
                bad += 1
                continue
            raise ValueError(
                f"{path}:{number}: not a valid JSON object ({exc.msg}); fix the line or set dataset.on_bad_row: skip"
            ) from None
        records.append((number, item))
    return records, bad


def _clip(value: Any, limit: int = 60) -> str:
    """`value` as JSON, cut to `limit` characters: how a bad row is shown in a message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _get(record: dict, name: str, fields: dict[str, str]) -> Any:
    return record.get(fields.get(name, name))


def detect_format(record: dict, fields: dict[str, str], path: Path) -> str:
    for name, needed in _SIGNATURES.items():
        if all(_get(record, field, fields) is not None for field in needed):
            return name
    raise ValueError(
        f"{path}: unknown labeled format (fields {sorted(record)}); known formats: "
        f"{', '.join(FORMATS)}; name one with dataset.labeled_format or remap fields with dataset.fields"
    )


def to_messages(record: dict, fmt: str, fields: dict[str, str], where: str) -> list[dict]:
    """One record as a list of chat messages (without the task's system prompt). Raises ValueError
    naming `where` and the field when a field the format needs is missing or null (a row of a file whose
    format was detected from its first row may lack one: ``question`` written for ``query``)."""

    def get(name: str, needed: bool = True):
        value = _get(record, name, fields)
        if value is None and needed:
            key = fields.get(name, name)
            raise ValueError(
                f"{where}: no {key!r} field (format {fmt}); add it, or name the field it is in with "
                f"dataset.fields {{{name}: <its name>}}"
            )
        return value

    def text(name: str) -> str:  # a field holding the text of a turn: text (a number is written out)
        value = get(name)
        key = fields.get(name, name)
        if isinstance(value, (dict, list)):
            raise ValueError(
                f"{where}: its {key!r} field is a JSON {'object' if isinstance(value, dict) else 'array'}, not text"
            )
        if not str(value).strip():
            raise ValueError(f"{where}: its {key!r} field is empty")
        return str(value)

    if fmt == "query_data":
        data = get("data")  # outside the try: a missing field is an ordinary bad row
        try:
            answer = canonical_json(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: its data field is not JSON-serialisable ({exc})") from None
        return [{"role": "user", "content": text("query")}, {"role": "assistant", "content": answer}]
    if fmt == "instruction":
        extra = get("input", needed=False)
        prompt = f"{text('instruction')}\n\n{extra}" if extra else text("instruction")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": text("output")}]
    if fmt == "prompt_completion":
        return [
            {"role": "user", "content": text("prompt")},
            {"role": "assistant", "content": text("completion")},
        ]
    turns = get(fmt)
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: {fmt} must be a non-empty list")
    key_role, key_text = ("role", "content") if fmt == "messages" else ("from", "value")
    messages = []
    for turn in turns:
        role = _ROLES.get(str(turn.get(key_role, "")).lower())
        if role is None or not isinstance(turn.get(key_text), str):
            raise ValueError(f"{where}: a turn has role {turn.get(key_role)!r} or no text; roles: {sorted(_ROLES)}")
        messages.append({"role": role, "content": turn[key_text]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: the conversation has no assistant turn to learn from")
    return messages


def _held_json(value: Any) -> dict | list | None:
    """The JSON object or array a string holds (``"{\\"intent\\": …}"``: a value encoded as JSON twice,
    as a CSV or dataframe export writes it), else None."""
    if not isinstance(value, str) or not value.strip().startswith(("{", "[")):
        return None
    try:
        held = json.loads(value)
    except json.JSONDecodeError:
        return None
    return held if isinstance(held, (dict, list)) else None


def load_labeled(
    path: Path, fmt: str = "auto", fields: dict[str, str] | None = None, on_bad_row: str = "error"
) -> tuple[list[list[dict]], int]:
    """Conversations from one labeled file, and how many bad rows were skipped (`labeled_rows`
    without the rows' places)."""
    rows, bad = labeled_rows(path, fmt, fields, on_bad_row)
    return [messages for _, messages in rows], bad


def row_place(path: Path, number: int) -> str:
    """Where row `number` of labeled file `path` is, as messages name it: ``file:line`` in a JSONL file,
    ``file: item N`` in a JSON array."""
    return f"{path}: item {number}" if path.suffix.lower() == ".json" else f"{path}:{number}"


def labeled_rows(
    path: Path, fmt: str = "auto", fields: dict[str, str] | None = None, on_bad_row: str = "error"
) -> tuple[list[tuple[int, list[dict]]], int]:
    """``[(line, conversation), …]`` from one labeled file (the line in a JSONL file, the item's
    position in a JSON array), and how many bad rows were skipped. Each turn's text is Unicode NFC (as
    extracted documents are). In the query_data format a ``data``
    field that is a string holding a JSON object or array (JSON written twice over) is read as the JSON
    it holds, and the count of such rows is printed. Raises ValueError naming ``file:line`` and the fix
    for a bad row unless `on_bad_row` is ``skip``."""
    fields = fields or {}
    records, bad = read_records(path, on_bad_row)
    if not records:
        return [], bad
    if fmt == "auto":
        fmt = detect_format(records[0][1], fields, path)
    elif fmt not in FORMATS:
        raise ValueError(f"{path}: unknown labeled format {fmt!r}; known formats: {', '.join(FORMATS)}")
    conversations = []
    held, data_key = 0, fields.get("data", "data")
    for number, record in records:
        where = row_place(path, number)
        if fmt == "query_data" and (decoded := _held_json(record.get(data_key))) is not None:
            record, held = {**record, data_key: decoded}, held + 1  # JSON text in a string: the JSON it holds
        try:
            messages = to_messages(record, fmt, fields, where)
            # NFC, as extracted documents are: "é" written as e + U+0301 and as one character are one text
            conversations.append(
                (number, [{**m, "content": unicodedata.normalize("NFC", m["content"])} for m in messages])
            )
        except (ValueError, TypeError, AttributeError) as exc:
            if on_bad_row == "skip" and "JSON-serialisable" not in str(exc):
                bad += 1
                continue
            raise ValueError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    if held:
        print(
            f"[dataset] {path}: {held} row(s) hold their data as JSON text in a string (JSON written twice "
            "over); read as the JSON it holds",
            flush=True,
        )
    return conversations, bad
