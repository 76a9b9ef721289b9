"""Scores of generated answers against the expected ones (the evaluate stages).

    from lorapipe.scoring import score_answers
    score_answers(['{"intent": "PlayMusic", "slots": {}}'], ['{"intent": "PlayMusic", "slots": {}}'])

- every chat answer: exact match (after collapsing whitespace) and ROUGE-L (F-measure of the
  longest common subsequence of words);
- JSON answers (tasks whose expected answers are JSON objects, such as ``{"query", "data"}`` rows):
  the share that parses as JSON, the share valid against a JSON Schema when one is given, intent
  accuracy, and precision, recall and F1 per slot and over all slots. A slot counts as right when
  its name and value (whitespace collapsed, case kept) both match;
- knowledge answers (the knowledge evaluation): token F1 and ROUGE-L on SQuAD-normalized words
  (``answer_tokens``), and whether every key string of the question appears in the answer.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(answer: str, expected: str) -> bool:
    return normalize(answer) == normalize(expected)


def rouge_l(answer: str, expected: str) -> float:
    """F-measure of the longest common subsequence of whitespace-separated words."""
    a, b = answer.split(), expected.split()
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1]))
        previous = current
    common = previous[-1]
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def parse_json(text: str) -> Any | None:
    """The JSON value of an answer, allowing a Markdown code fence around it; None if it does not parse."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    try:
        return json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return None


def is_json_task(expected: list[str]) -> bool:
    """A task is scored as JSON when every expected answer is a JSON object."""
    return bool(expected) and all(isinstance(parse_json(e), dict) for e in expected)


def _slots(data: Any) -> Counter:
    """(slot, value) pairs of an analysis ``{"intent", "slots": {name: value or [values]}}``."""
    slots = data.get("slots") if isinstance(data, dict) else None
    pairs: Counter = Counter()
    if isinstance(slots, dict):
        for name, value in slots.items():
            for item in value if isinstance(value, list) else [value]:
                pairs[(str(name), normalize(str(item)))] += 1
    return pairs


def _prf(right: int, predicted: int, expected: int) -> dict[str, float]:
    precision = right / predicted if predicted else 0.0
    recall = right / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": expected}


def _other_fields(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in ("intent", "slots")}


def score_json(
    answers: list[str], expected: list[str], schema: dict | None = None, truncated: list[bool] | None = None
) -> dict[str, Any]:
    """JSON-parse rate, schema-valid rate, intent accuracy and slot precision/recall/F1 (intent accuracy
    only when every expected answer has an ``intent``: without one, any answer would match). With `truncated`
    (per answer: cut at the token limit, generation.Generation.truncated), an answer that does not parse
    is counted as ``truncated`` when it was cut and as ``malformed`` otherwise (shares of all answers):
    a cut answer says the token limit was too low, a malformed one that the model wrote bad JSON."""
    validator = None
    if schema is not None:
        from lorapipe.labeled import schema_validator

        validator = schema_validator(schema)
    parsed = [parse_json(a) for a in answers]
    truth = [parse_json(e) for e in expected]
    right, predicted, wanted = Counter(), Counter(), Counter()
    for guess, gold in zip(parsed, truth):
        guess_slots, gold_slots = _slots(guess), _slots(gold)
        for (name, _), n in guess_slots.items():
            predicted[name] += n
        for (name, _), n in gold_slots.items():
            wanted[name] += n
        for (name, _), n in (guess_slots & gold_slots).items():
            right[name] += n
    n = max(len(answers), 1)
    out: dict[str, Any] = {
        "json_parse_rate": round(sum(p is not None for p in parsed) / n, 4),
        # the whole analysis right: the intent and every slot, none missing, none extra, and any other
        # field of the shape equal too (a shape without intent and slots is exact only when equal)
        "exact_rate": round(
            sum(
                isinstance(p, dict)
                and isinstance(g, dict)
                and p.get("intent") == g.get("intent")
                and _slots(p) == _slots(g)
                and _other_fields(p) == _other_fields(g)
                for p, g in zip(parsed, truth)
            )
            / n,
            4,
        ),
        "slots": _prf(sum(right.values()), sum(predicted.values()), sum(wanted.values())),
        "per_slot": {name: _prf(right[name], predicted[name], wanted[name]) for name in sorted(wanted | predicted)},
    }
    if truth and all(isinstance(g, dict) and "intent" in g for g in truth):  # else every answer "matches" None
        out["intent_accuracy"] = round(
            sum(isinstance(p, dict) and p.get("intent") == g["intent"] for p, g in zip(parsed, truth)) / n, 4
        )
    if truncated is not None:
        cut = [t and p is None for p, t in zip(parsed, truncated)]
        out["truncated_rate"] = round(sum(cut) / n, 4)
        out["malformed_rate"] = round(sum(p is None and not c for p, c in zip(parsed, cut)) / n, 4)
    if validator is not None:
        out["schema_valid_rate"] = round(sum(p is not None and validator.is_valid(p) for p in parsed) / n, 4)
    return out


def score_answers(
    answers: list[str], expected: list[str], schema: dict | None = None, truncated: list[bool] | None = None
) -> dict[str, Any]:
    """Exact match and ROUGE-L for any answers, plus the JSON scores when the expected answers are JSON;
    with `truncated` (per answer), also the share of answers cut at the token limit (``truncated``)."""
    n = max(len(answers), 1)
    scores: dict[str, Any] = {
        "answers": len(answers),
        **({"truncated": round(sum(truncated) / n, 4)} if truncated is not None else {}),
        "exact_match": round(sum(exact_match(a, e) for a, e in zip(answers, expected)) / n, 4),
        "rouge_l": round(sum(rouge_l(a, e) for a, e in zip(answers, expected)) / n, 4),
    }
    if is_json_task(expected):
        scores["json"] = score_json(answers, expected, schema, truncated)
    return scores


# flat_scores' names: the task metrics an experiment is sorted by and training can select on
# (train.select_metric, the same names in lorapipe.params.SELECT_METRICS). JSON ones only for JSON tasks.
_FLAT_JSON = ("json_parse_rate", "schema_valid_rate", "intent_accuracy", "exact_rate", "truncated_rate")


def flat_scores(scores: dict[str, Any]) -> dict[str, float]:
    """score_answers' output for one task under flat, stable names (shares, 0-1): exact_match and
    rouge_l, and for JSON tasks slot_f1 (micro F1 over slot name and value pairs, when the expected
    answers have slots), json_parse_rate, intent_accuracy (when they have an intent), exact_rate (every
    field right), and schema_valid_rate and truncated_rate where scored."""
    row = {"exact_match": scores["exact_match"], "rouge_l": scores["rouge_l"]}
    json_scores = scores.get("json")
    if json_scores:
        if json_scores["slots"]["support"]:  # a shape without slots has no slot F1 to sort by
            row["slot_f1"] = json_scores["slots"]["f1"]
        row.update({k: json_scores[k] for k in _FLAT_JSON if k in json_scores})
    return row


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_tokens(text: str) -> list[str]:
    """SQuAD's answer normalization, as words: lowercase, punctuation removed (any Unicode punctuation,
    so ``low-rank`` is ``lowrank``), the English articles a/an/the dropped, split on whitespace."""
    lowered = "".join(c for c in text.lower() if not unicodedata.category(c).startswith("P"))
    return _ARTICLES.sub(" ", lowered).split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's token F1 of `answer` against `reference` on ``answer_tokens`` (0.0 to 1.0): harmonic mean of
    the shares of shared words (with multiplicity) in each; 1.0 when both have no words, 0.0 when one has."""
    a, b = answer_tokens(answer), answer_tokens(reference)
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def answer_rouge_l(answer: str, reference: str) -> float:
    """`rouge_l` on the ``answer_tokens`` words of both (case, punctuation and articles ignored)."""
    return rouge_l(" ".join(answer_tokens(answer)), " ".join(answer_tokens(reference)))


def _key_text(text: str) -> str:
    """`text` for key matching: NFKC, casefolded, every dash (hyphen, en or em dash, minus...) a space,
    whitespace runs collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return normalize("".join(" " if unicodedata.category(c) == "Pd" or c == "\u2212" else c for c in text))


def key_hit(answer: str, keys: list[str]) -> bool:
    """Whether every key string appears in `answer`, case-insensitive, whitespace runs collapsed on both
    sides, a dash the same as a space (``"low-rank"`` in ``"two LOW-RANK matrices"``, ``"low rank
    updates"`` and ``"low–rank"``; ``"Q4_K_M"`` in ``"q4_k_m"``). No keys: True."""
    text = _key_text(answer)
    return all((_key_text(key) or normalize(key).casefold()) in text for key in keys)


def score_knowledge(answers: list[str], references: list[str], keys: list[list[str]]) -> dict[str, Any]:
    """Mean token F1 and ROUGE-L of `answers` against `references` and the key hit rate: the share of the
    questions with keys (``keys[i]`` non-empty) whose every key is in the answer. ``{"f1", "rouge_l",
    "key_hit", "n", "keyed"}``, rounded to 4 places; a mean over nothing (no answers, no keyed
    question) is None."""
    n, keyed = len(answers), [i for i, k in enumerate(keys) if k]
    return {
        "f1": round(sum(map(token_f1, answers, references)) / n, 4) if n else None,
        "rouge_l": round(sum(map(answer_rouge_l, answers, references)) / n, 4) if n else None,
        "key_hit": round(sum(key_hit(answers[i], keys[i]) for i in keyed) / len(keyed), 4) if keyed else None,
        "n": n,
        "keyed": len(keyed),
    }


# What went wrong with a slot, in the order slot_errors tries them.
SLOT_ERRORS = (
    "missing",  # a slot of the reference that the answer lacks, its value named under no other slot
    "extra",  # a slot the answer adds whose value is in no reference slot
    "recased",  # the right slot and value but for letter case or spacing
    "partial",  # the right slot, a value that contains or is contained in the right one
    "wrong_value",  # the right slot, another value
    "confused_name",  # the right value under another slot name
)


def slot_errors(answer: Any, reference: Any, query: str | None = None) -> Counter:
    """Why an analysis's slots differ from the reference's (both ``{"intent", "slots"}``, parsed):
    one count per wrong slot in the categories of SLOT_ERRORS, plus ``invented`` for every predicted
    value that is not a substring of `query` (case-insensitive) when the query is given (a value
    the model made up or reworded: span-extraction tasks take their values from the query). An
    answer that is not an analysis counts every reference slot as ``missing``. Source: lorapipe's
    own taxonomy for issue 18's error analysis; the slot F1 of score_json counts the same pairs."""
    errors: Counter = Counter()
    gold = list(_slots(reference).elements())
    guess = list(_slots(answer).elements()) if isinstance(answer, dict) else []
    for pair in list(gold):  # right pairs leave both lists
        if pair in guess:
            guess.remove(pair)
            gold.remove(pair)

    def fold(text: str) -> str:
        return " ".join(text.casefold().split())

    if query is not None:
        errors["invented"] = (
            sum(fold(value) not in fold(query) for _, value in _slots(answer).elements())
            if isinstance(answer, dict)
            else 0
        )
    for name, value in list(gold):
        same_name = [g for g in guess if g[0] == name]
        if same_name:
            other = same_name[0][1]
            kind = (
                "recased"
                if fold(other) == fold(value)
                else "partial"
                if fold(other) in fold(value) or fold(value) in fold(other)
                else "wrong_value"
            )
            guess.remove(same_name[0])
        else:
            moved = [g for g in guess if fold(g[1]) == fold(value)]
            kind = "confused_name" if moved else "missing"
            if moved:
                guess.remove(moved[0])
        errors[kind] += 1
    errors["extra"] += len(guess)
    return +errors
