"""Does the model know the documents? The knowledge evaluation: held-out questions answered closed-book
and with retrieval, scored against reference answers (the evaluate stages call it).

    from lorapipe.knowledge import base_knowledge, evaluate_knowledge
    base = base_knowledge("models/base", synth_dir="data/synth", eval_qa_path="data/raw/eval_qa.jsonl",
                          train_path="data/dataset/train.jsonl", prompts_path="data/dataset/prompts.json")
    report, markdown = evaluate_knowledge(base, "models/merged", "models/gguf/model.Q8_0.gguf")

Question sets: ``synth``, the synth stage's pairs marked ``"split": "eval"`` (data/synth/pairs.jsonl),
and ``user``, the user's own ``data/raw/eval_qa.jsonl`` (rows ``{"question", "answer", "source"?,
"key"?}``). Each question's document is ``trained`` when data/dataset/train.jsonl has rows of it,
``control`` when it is a document of the corpus that was not trained on, ``unknown`` otherwise.
Systems: ``base`` and ``base + retrieval`` (answered once, by evaluate_base), ``fine-tuned`` and
``fine-tuned + retrieval`` (the merged model, transformers) and the model GGUF closed-book (llama.cpp).
Retrieval puts the top-k BM25 passages of data/synth/index in the prompt (lorapipe.retrieval); every
system answers the same messages, greedily. Scores (lorapipe.scoring): token F1, ROUGE-L on normalized
words, and the key hit rate over the questions that carry key strings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lorapipe import paths
from lorapipe.io import read_json, read_jsonl
from lorapipe.params import DEFAULTS
from lorapipe.retrieval import Index, load_index, retrieval_messages
from lorapipe.scoring import score_knowledge
from lorapipe.textfiles import jsonl_lines, read_text

GROUPS = ("trained", "control", "unknown")
RETRIEVAL = " + retrieval"  # a system's name with retrieval: "base + retrieval"
_NO_SOURCE = "(no source)"


def _text_field(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if name not in row else f"not a non-blank string ({json.dumps(value)[:60]})"
        raise ValueError(f'{where}: "{name}" is {got}; each row needs "question" and "answer" strings')
    return value.strip()


def _keys(row: dict, where: str) -> list[str]:
    key = row.get("key")
    if key is None:
        return []
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not all(isinstance(k, str) and k.strip() for k in key):
        raise ValueError(
            f'{where}: "key" must be a non-blank string or a list of them (strings the answer must contain), '
            f"got {json.dumps(row['key'])[:60]}"
        )
    return [k.strip() for k in key]


def _json_rows(path: str | Path):
    """``(where, row)`` of each non-blank line of a JSONL file of question objects (where: ``file:line``);
    raises ValueError naming ``file:line`` for a line that is not JSON or not an object."""
    for number, line in jsonl_lines(read_text(path)):
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f'{where}: a question is a JSON object {{"question", "answer"}}, got {line.strip()[:60]}')
        yield where, row


def read_user_questions(path: str | Path) -> list[dict]:
    """The questions of a user's JSONL file (``data/raw/eval_qa.jsonl``): ``[{"question", "answer",
    "source" (str or None), "key" (list of str)}]`` in file order; [] when the file does not exist. A
    row is an object with non-blank ``question`` and ``answer`` strings, an optional ``source`` string
    (a document's source as in the extract manifest, or its file name) and an optional ``key`` (a
    string or a list of strings). Raises ValueError naming ``file:line`` and the field for a row that is
    not JSON, not an object, or has a missing, blank or mistyped field."""
    if not Path(path).is_file():
        return []
    questions = []
    for where, row in _json_rows(path):
        source = row.get("source")
        if source is not None and (not isinstance(source, str) or not source.strip()):
            raise ValueError(f'{where}: "source" must be a document\'s source or file name, got {json.dumps(source)}')
        questions.append(
            {
                "question": _text_field(row, "question", where),
                "answer": _text_field(row, "answer", where),
                "source": source.strip() if source else None,
                "key": _keys(row, where),
            }
        )
    return questions


def read_synth_questions(pairs_path: str | Path) -> list[dict]:
    """The synth stage's held-out pairs (rows of pairs.jsonl with ``"split": "eval"``), in file order, as
    ``{"question", "answer", "source", "key": []}``. Raises ValueError naming ``file:line`` for a row
    that is not a JSON object with question and answer strings."""
    return [
        {
            "question": _text_field(row, "question", where),
            "answer": _text_field(row, "answer", where),
            "source": row.get("source") if isinstance(row.get("source"), str) else None,
            "key": [],
        }
        for where, row in _json_rows(pairs_path)
        if row.get("split") == "eval"
    ]


def _path_parts(source: str) -> list[str]:
    """A source's path components, written either way (``\\`` or ``/``, ``./`` and empty parts dropped)."""
    return [part for part in source.replace("\\", "/").split("/") if part not in ("", ".")]


def _same_tail(a: list[str], b: list[str]) -> bool:
    """Whether one path's components end with the other's (a tail, or an absolute path of the same file)."""
    n = min(len(a), len(b))
    return n > 0 and a[-n:] == b[-n:]


def _document(source: str | None, trained: set[str], known: set[str]) -> tuple[str | None, str]:
    """(the manifest source a question's `source` names, its group). A source written another way
    (``./data/raw/docs/a.md``, ``data\\raw\\docs\\a.md``, an absolute path), or only its tail
    (``docs/a.md``, the bare file name ``a.md``), matches the one document whose path ends with those
    components (or that its path ends with)."""
    if source is None:
        return None, "unknown"
    if source not in known:
        parts = _path_parts(source)
        named = sorted(k for k in known if parts and _same_tail(parts, _path_parts(k)))
        source = named[0] if len(named) == 1 else source
    if source in trained:
        return source, "trained"
    return source, "control" if source in known else "unknown"


def _round_robin(groups: list[list[dict]]) -> list[dict]:
    out, depth = [], max((len(g) for g in groups), default=0)
    for i in range(depth):
        out += [g[i] for g in groups if i < len(g)]
    return out


def select_questions(questions: list[dict], limit: int, mix: bool) -> list[dict]:
    """At most `limit` questions, deterministically. `mix` false: the first ones in order. `mix` true:
    trained and control questions alternate (then the rest), and within a group the documents take
    turns (each document's questions in order), so a few questions cover many documents."""
    if not mix:
        return questions[:limit]
    by_group = []
    for group in GROUPS:
        documents: dict[str | None, list[dict]] = {}
        for q in questions:
            if q["group"] == group:
                documents.setdefault(q["source"], []).append(q)
        by_group.append(_round_robin(list(documents.values())))
    return _round_robin(by_group)[:limit]


def _qa_task(prompts: dict[str, str], train_rows: list[dict]) -> str:
    """The task whose system prompt the questions are asked with: the synth pairs' task (the trained rows
    with a ``passage_id``), else ``synth.task``'s default when prompts.json has it, else the first task."""
    task = next((row.get("task") for row in train_rows if "passage_id" in row), None)
    if task in prompts:
        return task
    return DEFAULTS.synth.task if DEFAULTS.synth.task in prompts else next(iter(prompts))


def prepare_questions(
    *,
    synth_dir: str | Path | None,
    eval_qa_path: str | Path | None,
    train_path: str | Path,
    prompts_path: str | Path,
    knowledge_questions: int = DEFAULTS.eval.knowledge_questions,
    retrieval_top_k: int = DEFAULTS.eval.retrieval_top_k,
) -> list[dict]:
    """The questions every system answers: per set, at most `knowledge_questions` (``select_questions``;
    synth mixed, user in file order), each ``{"set", "question", "answer", "key", "source", "group",
    "messages", "retrieval_messages", "passages"}`` with the closed-book and the retrieval conversation
    (top `retrieval_top_k` passages of ``<synth_dir>/index``; their ids in ``"passages"``). Without
    `synth_dir` there is no synth set and no retrieval. Raises ValueError for a malformed eval_qa row,
    FileNotFoundError naming the missing file (and the stage that writes it: a synth folder without
    pairs or index, `dvc repro synth`)."""
    train_rows = read_jsonl(paths.require(train_path))
    prompts = read_json(paths.require(prompts_path))
    system = prompts[_qa_task(prompts, train_rows)]
    trained = {row["source"] for row in train_rows if isinstance(row.get("source"), str)}
    index = load_index(Path(synth_dir) / paths.RETRIEVAL_INDEX.name) if synth_dir else Index(passages=[])
    known = trained | {p["source"] for p in index.passages}
    sets = {"synth": read_synth_questions(paths.require(Path(synth_dir) / paths.PAIRS.name)) if synth_dir else []}
    sets["user"] = read_user_questions(eval_qa_path) if eval_qa_path else []
    chosen = []
    for name, questions in sets.items():
        for q in questions:
            q["source"], q["group"] = _document(q["source"], trained, known)
        chosen += [{"set": name, **q} for q in select_questions(questions, knowledge_questions, name == "synth")]
    for q in chosen:
        q["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": q["question"]}]
        if synth_dir:
            hits = index.search(q["question"], retrieval_top_k)
            q["retrieval_messages"] = retrieval_messages(system, q["question"], hits)
            q["passages"] = [hit["id"] for hit in hits]
    return chosen


def _answers(answer, model, name: str, questions: list[dict], max_new_tokens: int) -> dict[str, list[str]]:
    """`name` and `name + retrieval` answers of one model (loaded once by `answer`, a function of
    (model, conversations, max_new_tokens) such as generation.hf_answers)."""
    closed = [q["messages"] for q in questions]
    opened = [q["retrieval_messages"] for q in questions if "retrieval_messages" in q]
    both = answer(model, closed + opened, max_new_tokens) if questions else []
    out = {name: both[: len(closed)]}
    if opened:
        out[name + RETRIEVAL] = both[len(closed) :]
    return out


def base_knowledge(
    base_dir: str | Path,
    *,
    synth_dir: str | Path | None,
    eval_qa_path: str | Path | None,
    train_path: str | Path,
    prompts_path: str | Path,
    knowledge_questions: int = DEFAULTS.eval.knowledge_questions,
    knowledge_max_new_tokens: int = DEFAULTS.eval.knowledge_max_new_tokens,
    retrieval_top_k: int = DEFAULTS.eval.retrieval_top_k,
) -> dict:
    """The base model's knowledge answers, computed once (``reports/knowledge_base.json``): ``{"questions":
    [prepare_questions' rows], "answers": {"base": [...], "base + retrieval": [...]},
    "max_new_tokens": n, "retrieval_top_k": k}``, answers in question order (greedy, at most
    `knowledge_max_new_tokens` tokens, transformers). No question: empty lists, no model loaded.
    Raises as prepare_questions does."""
    from lorapipe.generation import hf_answers

    questions = prepare_questions(
        synth_dir=synth_dir,
        eval_qa_path=eval_qa_path,
        train_path=train_path,
        prompts_path=prompts_path,
        knowledge_questions=knowledge_questions,
        retrieval_top_k=retrieval_top_k,
    )
    answers = _answers(hf_answers, base_dir, "base", questions, knowledge_max_new_tokens) if questions else {}
    result = {
        "questions": questions,
        "answers": answers,
        "max_new_tokens": knowledge_max_new_tokens,
        "retrieval_top_k": retrieval_top_k,
    }
    print_knowledge(knowledge_report(questions, answers), "evaluate_base")
    return result


def evaluate_knowledge(
    base: dict,
    merged_dir: str | Path,
    gguf_path: str | Path,
    *,
    knowledge_max_new_tokens: int = DEFAULTS.eval.knowledge_max_new_tokens,
) -> tuple[dict, str]:
    """(knowledge.json's report, knowledge.md's text) of the questions in `base` (base_knowledge's result):
    its base answers, plus the merged model's closed-book and retrieval answers (transformers) and the
    GGUF's closed-book answers (llama.cpp), each greedy at most `knowledge_max_new_tokens` tokens. No
    question: no model is loaded, the report is ``{"sets": {}}``."""
    from lorapipe.generation import answer_all, hf_answers

    questions = base["questions"]
    if base.get("max_new_tokens") not in (None, knowledge_max_new_tokens):
        print(
            f"[evaluate] note: the base answered with eval.knowledge_max_new_tokens {base['max_new_tokens']}, "
            f"now {knowledge_max_new_tokens}: rerun `dvc repro evaluate_base` for a fair comparison",
            flush=True,
        )
    answers = dict(base["answers"])
    if questions:
        answers |= _answers(hf_answers, merged_dir, "fine-tuned", questions, knowledge_max_new_tokens)
        closed = [q["messages"] for q in questions]
        answers[Path(gguf_path).name] = answer_all(gguf_path, closed, knowledge_max_new_tokens)
    report = knowledge_report(questions, answers)
    print_knowledge(report, "evaluate")
    return report, knowledge_markdown(questions, answers, report)


def knowledge_report(questions: list[dict], answers: dict[str, list[str]]) -> dict:
    """``{"sets": {set: {"questions": n, "systems": {system: {"all", "trained", "control", ["unknown"],
    "documents": {source: ...}}}}}}``, each a scoring.score_knowledge dict; "unknown" only when a question
    has that group; ``{"sets": {}}`` without questions."""
    sets: dict = {}
    for name in dict.fromkeys(q["set"] for q in questions):
        chosen = [i for i, q in enumerate(questions) if q["set"] == name]
        systems = {}
        for system, got in answers.items():
            systems[system] = _scores(questions, got, chosen)
        sets[name] = {"questions": len(chosen), "systems": systems}
    return {"sets": sets}


def _scores(questions: list[dict], answers: list[str], chosen: list[int]) -> dict:
    def score(indices: list[int]) -> dict:
        picked = [questions[i] for i in indices]
        return score_knowledge([answers[i] for i in indices], [q["answer"] for q in picked], [q["key"] for q in picked])

    groups = {"all": score(chosen)}
    for group in GROUPS:
        members = [i for i in chosen if questions[i]["group"] == group]
        if members or group != "unknown":
            groups[group] = score(members)
    documents: dict[str, list[int]] = {}
    for i in chosen:
        documents.setdefault(questions[i]["source"] or _NO_SOURCE, []).append(i)
    return {**groups, "documents": {source: score(indices) for source, indices in documents.items()}}


def knowledge_metrics(report: dict | str | Path) -> dict[str, float]:
    """knowledge.json's scores (the report, or the file's path) as flat MLflow metrics:
    ``knowledge/<set>/<system>/<group>/<f1|rouge_l|key_hit>`` for the groups all, trained, control and
    unknown (scores over no question left out); " + " in a system's name is "_plus_", any other
    character MLflow refuses is "_"."""
    report = report if isinstance(report, dict) else read_json(report)
    out = {}
    for name, data in report["sets"].items():
        for system, groups in data["systems"].items():
            label = re.sub(r"[^\w\-. /]", "_", system.replace(" + ", "_plus_"))
            for group in ("all", *GROUPS):
                for metric in ("f1", "rouge_l", "key_hit"):
                    value = groups.get(group, {}).get(metric)
                    if value is not None:
                        out[f"knowledge/{name}/{label}/{group}/{metric}"] = value
    return out


def _number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if percent else f"{value:.2f}"


def print_knowledge(report: dict, stage: str) -> None:
    """One line per set and system: F1, ROUGE-L and key hit of the trained and the control questions."""
    for name, data in report["sets"].items():
        for system, groups in data["systems"].items():
            parts = [
                f"{group} F1 {_number(s['f1'])} ROUGE-L {_number(s['rouge_l'])} "
                f"key hit {_number(s['key_hit'], True)} (n {s['n']})"
                for group, s in groups.items()
                if group in GROUPS and (s["n"] or group != "unknown")
            ]
            print(f"[{stage}] knowledge {name}, {system}: " + " | ".join(parts), flush=True)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "(empty)"


_SET_TITLES = {
    "synth": "held-out pairs of the synth stage (data/synth/pairs.jsonl)",
    "user": "questions of your own (data/raw/eval_qa.jsonl)",
}


def _table(data: dict) -> list[str]:
    columns = [g for g in ("all", *GROUPS) if any(g in s for s in data["systems"].values())]
    first = next(iter(data["systems"].values()))
    header = [f"{g} (n {first[g]['n']}) {m}" for g in columns for m in ("F1", "ROUGE-L", "key hit")]
    lines = ["| system | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for system, groups in data["systems"].items():
        cells = [_number(groups[g][m], m == "key_hit") for g in columns for m in ("f1", "rouge_l", "key_hit")]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def knowledge_markdown(questions: list[dict], answers: dict[str, list[str]], report: dict) -> str:
    """reports/knowledge.md: per question set a table of systems × groups (F1, ROUGE-L, key hit), then each
    question with its document, group, reference, keys and every system's answer."""
    if not report["sets"]:
        return "# Knowledge evaluation\n\nNo questions: no held-out synth pairs and no data/raw/eval_qa.jsonl rows.\n"
    lines = [
        "# Knowledge evaluation",
        "",
        "Held-out questions answered closed-book and with the top BM25 passages of data/synth/index in the "
        "prompt (`+ retrieval`), greedily. F1: token F1 against the reference; ROUGE-L on the same "
        "normalized words; key hit: share of the questions with key strings whose every key is in the answer.",
    ]
    for name, data in report["sets"].items():
        lines += ["", f"## {name}: {data['questions']} {_SET_TITLES.get(name, 'questions')}", "", *_table(data)]
        for number, i in enumerate((i for i, q in enumerate(questions) if q["set"] == name), 1):
            q = questions[i]
            keys = " · keys: " + ", ".join(f"`{k}`" for k in q["key"]) if q["key"] else ""
            keys += " · retrieved: " + (", ".join(f"`{p}`" for p in q["passages"]) or "none") if "passages" in q else ""
            lines += [
                "",
                f"### {number}. {_cell(q['question'])}",
                "",
                f"document: `{q['source'] or _NO_SOURCE}` ({q['group']}){keys}",
                "",
                "| system | answer |",
                "|---|---|",
                f"| **reference** | {_cell(q['answer'])} |",
                *(f"| {system} | {_cell(got[i])} |" for system, got in answers.items()),
            ]
    return "\n".join(lines) + "\n"
