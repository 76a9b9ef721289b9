"""Did fine-tuning help? The evaluate stages.

    from lorapipe.evaluate import evaluate_base, evaluate_models
    evaluate_base("data/dataset/val.jsonl", "models/base", "reports/eval_base.json",
                  prompts_path="data/dataset/prompts.json")
    evaluate_models("data/dataset/val.jsonl", "data/dataset/prompts.json", "models/merged", "models/gguf",
                    "reports/eval.json", base_metrics_path="reports/eval_base.json")

- validation perplexity of the base model (once: ``evaluate_base``), the merged model and every
  GGUF of the export, on the same token ids (the base tokenizer's), so the numbers compare;
- for chat rows, answers generated greedily with the task's system prompt from ``prompts.json`` by
  the base model (once) and the merged model (transformers) and the model's GGUF (llama.cpp; the one
  ``export.json`` names, as ``lorapipe.artifacts.model_gguf`` reads it), scored
  by lorapipe.scoring: exact match, ROUGE-L and, for JSON tasks, parse rate, schema validity,
  intent accuracy and slot F1;
- ``reports/samples.md``: prompts with the base and fine-tuned answers side by side.
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import faults, paths
from lorapipe.artifacts import export_ggufs, model_gguf
from lorapipe.generation import (  # noqa: F401 (chat, generate_answer, hf_answers: this module's names too)
    Generation,
    answer_all,
    answer_token_budget,
    chat,
    evaluation_requests,
    generate_answer,
    gguf_generate,
    hf_answers,
    hf_generate,
)
from lorapipe.knowledge import base_knowledge, evaluate_knowledge
from lorapipe.labeled import load_json_schema
from lorapipe.io import atomic_outputs, read_json, read_jsonl, write_json, write_text_atomic
from lorapipe.models import load_tokenizer
from lorapipe.params import DEFAULTS
from lorapipe.perplexities import choose_quant, gguf_perplexity, hf_perplexity, relative, val_sequences
from lorapipe.scoring import flat_scores, is_json_task, score_answers


def chat_rows(val_path: str | Path, max_samples: int) -> list[dict]:
    """The first `max_samples` validation rows that are conversations (the ones with an answer)."""
    return [row for row in read_jsonl(val_path) if "messages" in row][:max_samples]


def evaluate_base(
    val_path: str | Path,
    base_dir: str | Path,
    out_path: str | Path,
    *,
    prompts_path: str | Path,
    answers_path: str | Path | None = None,
    knowledge_path: str | Path | None = None,
    synth_dir: str | Path | None = None,
    eval_qa_path: str | Path | None = None,
    train_path: str | Path | None = None,
    max_samples: int = DEFAULTS.eval.max_samples,
    max_new_tokens: int | str = DEFAULTS.eval.max_new_tokens,
    knowledge_questions: int = DEFAULTS.eval.knowledge_questions,
    knowledge_max_new_tokens: int = DEFAULTS.eval.knowledge_max_new_tokens,
    retrieval_top_k: int = DEFAULTS.eval.retrieval_top_k,
) -> dict:
    """Score the base model once; experiments reuse its metrics. Writes ``{"base": {"loss", "perplexity",
    "tokens"}, "rows": n}`` (perplexity on the first `max_samples` rows of `val_path`) to `out_path`
    and returns it. With `answers_path`, also the base's greedy answers (at most `max_new_tokens`
    tokens; ``"auto"``: answer_token_budget over the train and validation rows) to the chat validation
    rows as JSON ``{"answers": [{"task", "answer", "truncated"}, ...], "max_new_tokens": n}`` (an empty
    list without chat rows; the file is never empty), which evaluate_models compares the tuned model's
    to; `prompts_path` (``prompts.json``) gives each task's system prompt. With `knowledge_path`, also
    the base's knowledge answers (lorapipe.knowledge.base_knowledge: the held-out pairs of `synth_dir`
    and the questions of `eval_qa_path`, closed-book and with retrieval; the trained documents are those
    of `train_path`, default the ``train.jsonl`` beside `val_path`) as a JSON object.

    Raises ValueError when `val_path` has no rows or an eval_qa row is malformed (naming file and line);
    the files are replaced together or not at all."""
    tokenizer = load_tokenizer(base_dir)
    sequences = val_sequences(Path(val_path), tokenizer, max_samples)
    metrics = {"base": hf_perplexity(base_dir, sequences), "rows": len(sequences)}
    train_path = train_path or Path(val_path).with_name(paths.TRAIN_ROWS.name)
    budget, reason = answer_token_budget(max_new_tokens, [train_path, val_path], tokenizer)
    knowledge = None
    if knowledge_path:
        knowledge = base_knowledge(
            base_dir,
            synth_dir=synth_dir,
            eval_qa_path=eval_qa_path,
            train_path=train_path,
            prompts_path=prompts_path,
            knowledge_questions=knowledge_questions,
            knowledge_max_new_tokens=knowledge_max_new_tokens,
            retrieval_top_k=retrieval_top_k,
        )
    faults.fault_point("mid")
    with atomic_outputs() as place:  # the answers and the metrics are replaced together
        if knowledge is not None:
            write_json(place(knowledge_path), knowledge)
        if answers_path:
            rows = chat_rows(val_path, max_samples)
            requests = evaluation_requests(rows, read_json(prompts_path)) if rows else []
            if rows:
                print(f"[evaluate_base] answers of at most {budget} tokens ({reason})", flush=True)
            answers = hf_generate(base_dir, [messages for messages, _ in requests], budget)
            # A JSON object, never an empty file (DVC warns on every command about an empty out).
            listed = [{"task": r["task"], "answer": a.text, "truncated": a.truncated} for r, a in zip(rows, answers)]
            write_json(place(answers_path), {"answers": listed, "max_new_tokens": budget})
        write_json(place(out_path), metrics)
    print(f"[evaluate_base] base perplexity {metrics['base']['perplexity']:.3f} on {len(sequences)} rows", flush=True)
    return metrics


def score_by_task(
    rows: list[dict], answers: list[str], expected: list[str], schema: dict | None, truncated: list[bool] | None = None
) -> dict:
    """score_answers per task (JSON scores only for JSON tasks); `truncated`: per answer, cut at the limit."""
    out = {}
    for task in dict.fromkeys(row["task"] for row in rows):
        chosen = [i for i, row in enumerate(rows) if row["task"] == task]
        cut = [truncated[i] for i in chosen] if truncated is not None else None
        out[task] = score_answers([answers[i] for i in chosen], [expected[i] for i in chosen], schema, cut)
    return out


def served_scores(answers: dict[str, dict], served: str) -> dict[str, dict[str, float]]:
    """The scores of system `served` (what users get: the model GGUF, under the grammar when the
    evaluation decodes as lorapipe serve does) from score_by_task's `answers`, per task under flat,
    stable names (scoring.flat_scores), so that an experiment can be picked by its task metric
    (``dvc exp show --sort-by reports/eval.json:served.<task>.slot_f1``)."""
    return {task: flat_scores(scores) for task, scores in answers.get(served, {}).items()}


def _task_metric_name(scores: dict) -> str:
    """The score a task's quantizations are compared by: slot_f1 for the intent-and-slots shape (its
    references hold slots), exact_rate for other JSON answers, rouge_l for text."""
    json_scores = scores.get("json")
    if not json_scores:
        return "rouge_l"
    return "slot_f1" if json_scores["slots"]["support"] else "exact_rate"


def task_ladder(answers: dict[str, dict], ggufs: dict[str, Path], suffix: str, tolerance: float) -> dict | None:
    """Which GGUF to ship by the task (``reports/eval.json``'s ``quant_by_task``), from score_by_task's
    `answers` of the fine-tuned (merged) model and of each GGUF in `ggufs` ({quant: path}) as served (its
    name plus `suffix`: " constrained" under the grammar). Per task one score (_task_metric_name:
    slot_f1, exact_rate or rouge_l; scoring.flat_scores) and a reference: the best of the merged model's
    and every GGUF's (the merged model answers free through transformers, a GGUF as served, often under
    the schema's grammar, which can score higher: the reference is then that GGUF). A GGUF's ``drop``
    is its largest shortfall below the reference over the tasks (a share of the reference; 0 when the
    reference is 0), and the smallest GGUF within `tolerance` ships (perplexities.choose_quant).
    ``{"metric": {task: name}, "reference": {task: {"score", "system"}}, "tolerance",
    "quants": {quant: {"scores", "drop", "bytes"}}, "chosen", "why"}``; None without the merged model's
    answers or with fewer than two GGUFs scored."""
    merged = answers.get("fine-tuned", {})
    scored = {q: path for q, path in ggufs.items() if path.name + suffix in answers}
    if not merged or len(scored) < 2:
        return None
    metric = {task: _task_metric_name(scores) for task, scores in merged.items()}
    systems = {"fine-tuned": merged, **{path.name + suffix: answers[path.name + suffix] for path in scored.values()}}
    values = {
        name: {task: flat_scores(by_task[task])[metric[task]] for task in metric} for name, by_task in systems.items()
    }
    reference = {}
    for task in metric:
        best = max(systems, key=lambda name: values[name][task])  # the merged model first among equals
        reference[task] = {"score": values[best][task], "system": best}
    quants = {}
    for quant, path in scored.items():
        mine = values[path.name + suffix]
        drops = [-relative(mine[task], reference[task]["score"]) + 0.0 for task in metric]  # + 0.0: no -0.0
        quants[quant] = {"scores": mine, "drop": max(drops), "bytes": path.stat().st_size}
    chosen, _ = choose_quant({q: {**m, "vs_merged": m["drop"]} for q, m in quants.items()}, tolerance)
    within = sum(m["drop"] <= tolerance for m in quants.values())
    shortfall = quants[chosen]["drop"]
    names = ", ".join(f"{task} {metric[task]}" for task in metric)
    why = (
        f"of the {len(quants)} GGUFs scored, {within} within {tolerance:.1%} of the best task score ({names}); "
        f"the smallest of those, {shortfall:.1%} below it"
        if within
        else f"none of the {len(quants)} GGUFs scored is within {tolerance:.1%} of the best task score ({names}); "
        f"the closest, {shortfall:.1%} below it"
    )
    return {
        "metric": metric,
        "reference": reference,
        "tolerance": tolerance,
        "quants": quants,
        "chosen": chosen,
        "why": why,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


CONTINUATION_WORDS = 60  # words of the document after a text row's opening shown as its expected answer


def samples_markdown(rows: list[dict], requests, answers: dict[str, list[str]], limit: int) -> str:
    """Prompts with each model's answer side by side, and the expected answer: a chat row's reference
    answer, or for a text row (asked to continue its first 30 words) the next `CONTINUATION_WORDS`
    words of the document, how the document itself goes on."""
    names = list(answers)
    lines = [
        "# Sample answers",
        "",
        "Greedy answers to validation rows, with each task's system prompt "
        "(`data/dataset/prompts.json`). " + ", ".join(f"`{n}`" for n in names) + ".",
        "",
    ]
    for number, (row, (messages, expected)) in enumerate(zip(rows[:limit], requests[:limit])):
        if expected is None and "text" in row:  # generation.evaluation_requests' opening: the first 30 words
            words = row["text"].split()
            expected = " ".join(words[30 : 30 + CONTINUATION_WORDS]) + (
                " …" if len(words) > 30 + CONTINUATION_WORDS else ""
            )
        lines += [
            f"## {number + 1}. {row['task']}",
            "",
            f"**System:** {messages[0]['content']}",
            "",
            f"**Prompt:** {messages[-1]['content']}",
            "",
            "| " + " | ".join(["expected", *names]) + " |",
            "|" + "---|" * (len(names) + 1),
            "| " + " | ".join(_cell(x) for x in [expected or "", *(answers[n][number] for n in names)]) + " |",
            "",
        ]
    return "\n".join(lines)


def _perplexities(sequences, merged_dir: Path, ggufs: dict[str, Path], base: dict | None) -> dict:
    """Perplexity of the merged model and each GGUF, relative to the base's (when given) and the merged one's."""
    merged = hf_perplexity(merged_dir, sequences)
    of_merged = {"vs_base": relative(merged["perplexity"], base["perplexity"])} if base else {}
    metrics = {**({"base": base} if base else {}), "merged": {**merged, **of_merged}, "gguf": {}}
    for quant, path in ggufs.items():
        score = gguf_perplexity(path, sequences)
        versus = {"vs_base": relative(score["perplexity"], base["perplexity"])} if base else {}
        metrics["gguf"][quant] = {**score, **versus, "vs_merged": relative(score["perplexity"], merged["perplexity"])}
    line = ", ".join(f"{q} {m['perplexity']:.3f}" for q, m in metrics["gguf"].items())
    of_base = f"base {base['perplexity']:.3f}, " if base else ""
    print(f"[evaluate] perplexity: {of_base}merged {merged['perplexity']:.3f}, {line}", flush=True)
    return metrics


def _constrained_answers(
    model: Path,
    rows: list[dict],
    conversations: list[list[dict]],
    expected: list,
    free: list[Generation],
    max_new_tokens: int,
    schema: dict,
    span_constraint: bool,
) -> list[Generation]:
    """`free` with the answers to JSON tasks' rows replaced by answers decoded under the schema's grammar
    (with `span_constraint`, each row's own: free strings limited to spans of its user message)."""
    json_tasks = {
        task
        for task in dict.fromkeys(r["task"] for r in rows)
        if is_json_task([e for r, e in zip(rows, expected) if r["task"] == task])
    }
    chosen = [i for i, row in enumerate(rows) if row["task"] in json_tasks]
    answers = list(free)
    chosen_conversations = [conversations[i] for i in chosen]
    for i, answer in zip(chosen, gguf_generate(model, chosen_conversations, max_new_tokens, schema, span_constraint)):
        answers[i] = answer
    return answers


def _print_scores(scores: dict[str, dict]) -> None:
    for name, tasks in scores.items():
        for task, score in tasks.items():
            json_scores = score.get("json")
            extra = (
                f", JSON parse {json_scores['json_parse_rate']:.0%}"
                + (f", intent {json_scores['intent_accuracy']:.0%}" if "intent_accuracy" in json_scores else "")
                + (f", slot F1 {json_scores['slots']['f1']:.2f}" if json_scores["slots"]["support"] else "")
                + f", exact {json_scores['exact_rate']:.0%}"
                + (
                    f" (not parsed: {json_scores['truncated_rate']:.0%} cut at the token limit, "
                    f"{json_scores['malformed_rate']:.0%} malformed)"
                    if json_scores.get("truncated_rate") or json_scores.get("malformed_rate")
                    else ""
                )
                if json_scores
                else ""
            )
            print(
                f"[evaluate] {name} on {task}: exact {score['exact_match']:.0%}, ROUGE-L {score['rouge_l']:.2f}"
                + extra,
                flush=True,
            )


def base_answers(path: Path, max_new_tokens: int) -> list[Generation]:
    """The base model's answers that evaluate_base wrote to `path` (``answers_base.json``), warning when
    they were cut at another token limit than `max_new_tokens` (the fine-tuned answers' limit): scores
    of answers cut at different lengths are not comparable."""
    base = read_json(path)
    if base.get("max_new_tokens") not in (None, max_new_tokens):
        print(
            f"[evaluate] warning: the base's answers in {path} were cut at {base['max_new_tokens']} tokens and "
            f"these are cut at {max_new_tokens}: the base and fine-tuned scores are not comparable; rerun "
            "evaluate_base with the same eval.max_new_tokens (`dvc repro` does)",
            flush=True,
        )
    return [Generation(a["answer"], bool(a.get("truncated", False))) for a in base["answers"]]


def _chat_answers(
    rows: list[dict],
    requests,
    merged_dir: Path,
    model: Path,
    base_answers_path: str | Path | None,
    max_new_tokens: int,
    schema: dict | None,
    constrained: bool,
    span_constraint: bool = False,
    other_ggufs: tuple[Path, ...] = (),
) -> dict[str, list[Generation]]:
    """Answers to the chat rows by name: the base's (read from `base_answers_path` when it exists),
    the fine-tuned (merged) model's, the model GGUF's and, with `constrained`, its answers under the
    grammar; the same for each of `other_ggufs` (the export's other quantizations)."""
    conversations = [messages for messages, _ in requests]
    answers: dict[str, list[Generation]] = {}
    if base_answers_path and Path(base_answers_path).is_file():
        answers["base"] = base_answers(Path(base_answers_path), max_new_tokens)[: len(rows)]
    answers["fine-tuned"] = hf_generate(merged_dir, conversations, max_new_tokens)
    faults.fault_point("mid")
    expected = [e for _, e in requests]
    for gguf in (model, *other_ggufs):
        answers[gguf.name] = gguf_generate(gguf, conversations, max_new_tokens)
        if constrained:
            answers[f"{gguf.name} constrained"] = _constrained_answers(
                gguf, rows, conversations, expected, answers[gguf.name], max_new_tokens, schema, span_constraint
            )
    return answers


def _knowledge(base_path: str | Path | None, merged_dir, gguf: Path, max_new_tokens: int) -> tuple[dict, str]:
    """evaluate_knowledge on the questions and base answers of evaluate_base's `base_path`."""
    if base_path is None:
        raise ValueError("the knowledge evaluation needs evaluate_base's knowledge_base.json (knowledge_base_path)")
    base = read_json(paths.require(base_path, "--reports-dir"))
    return evaluate_knowledge(base, merged_dir, gguf, knowledge_max_new_tokens=max_new_tokens)


def _selected_step(merged_dir: Path) -> int | None:
    """The step whose adapter training kept for scoring best on the validation rows, as the merge stage
    recorded it (``merge.json``'s ``selected_step``); None when none was chosen or nothing is recorded."""
    info = merged_dir / paths.MERGE_INFO_NAME
    return read_json(info).get("selected_step") if info.is_file() else None


def evaluate_models(
    val_path: str | Path,
    prompts_path: str | Path,
    merged_dir: str | Path,
    gguf_dir: str | Path,
    out_path: str | Path,
    *,
    samples_path: str | Path | None = None,
    base_metrics_path: str | Path | None = None,
    base_answers_path: str | Path | None = None,
    knowledge_base_path: str | Path | None = None,
    knowledge_path: str | Path | None = None,
    knowledge_md_path: str | Path | None = None,
    max_samples: int = DEFAULTS.eval.max_samples,
    num_generations: int = DEFAULTS.eval.num_generations,
    max_new_tokens: int | str = DEFAULTS.eval.max_new_tokens,
    json_schema: str | Path | None = DEFAULTS.eval.json_schema,
    constrained: bool | str = DEFAULTS.eval.constrained,
    span_constraint: bool = DEFAULTS.eval.span_constraint,
    knowledge_max_new_tokens: int = DEFAULTS.eval.knowledge_max_new_tokens,
    train_path: str | Path | None = None,
    quant_tolerance: float = DEFAULTS.export.quant_tolerance,
) -> dict:
    """Score the fine-tuned model against the base; write the metrics to `out_path` and return them.

    On the first `max_samples` rows of `val_path`: perplexity of the merged model and of every GGUF
    of the export in `gguf_dir` (``{"merged": …, "gguf": {quant: …}, "rows": n}``, each relative to
    the base's perplexity from `base_metrics_path` (evaluate_base's output) when given); for chat
    rows, greedy answers (at most `max_new_tokens` tokens; ``"auto"``: answer_token_budget over
    `train_path`, default the ``train.jsonl`` beside `val_path`, and `val_path`, as evaluate_base
    derives it) of the merged model, the model's GGUF
    (artifacts.model_gguf), the base (read from `base_answers_path`) and, with `constrained`, the GGUF
    under a grammar built from `json_schema` (``"auto"``: whenever `json_schema` is given, as lorapipe
    serve decodes; with `span_constraint`, free string values limited to spans of each row's user message,
    labeled.span_schema), scored per task (``"answers"``; the served system's also under ``"served"``,
    served_scores; when the export holds several GGUFs, each one's under ``"served_by_quant"``, and the
    smallest within `quant_tolerance` of the best task score under ``"quant_by_task"``: task_ladder).
    With `samples_path`, also a Markdown page of `num_generations` prompts with the answers side by side. With
    `knowledge_path` and `knowledge_md_path`, also the knowledge evaluation of the questions in
    `knowledge_base_path` (evaluate_base's, with the base's answers): the merged model closed-book and
    with retrieval, the model GGUF closed-book (lorapipe.knowledge.evaluate_knowledge; at most
    `knowledge_max_new_tokens` tokens each). Every output is replaced together.

    Raises FileNotFoundError when `gguf_dir` holds no export (naming `dvc repro export`) or
    `knowledge_base_path` is missing (naming `dvc repro evaluate_base`), ValueError when `val_path`
    has no rows, `constrained` is set without `json_schema`, or `span_constraint` without constrained
    decoding."""
    model, ggufs = model_gguf(gguf_dir), export_ggufs(gguf_dir)
    schema = load_json_schema(json_schema) if json_schema else None
    if constrained == "auto":  # as lorapipe serve: under the schema whenever there is one
        constrained = schema is not None
    if constrained and schema is None:
        raise ValueError("eval.constrained needs eval.json_schema: the grammar is built from the schema")
    if span_constraint and not constrained:
        raise ValueError("eval.span_constraint needs constrained decoding (eval.json_schema, eval.constrained)")
    base = read_json(base_metrics_path)["base"] if base_metrics_path else None
    tokenizer = load_tokenizer(merged_dir)
    sequences = val_sequences(Path(val_path), tokenizer, max_samples)
    metrics = {**_perplexities(sequences, Path(merged_dir), ggufs, base), "rows": len(sequences)}
    selected = _selected_step(Path(merged_dir))
    if selected is not None:
        metrics["adapter_selected_step"] = selected
        print(
            f"[evaluate] note: training kept the adapter of step {selected} because it scored best on these "
            "validation rows (train.early_stopping_patience or train.select_metric), so the scores below are "
            "somewhat optimistic for unseen rows; the knowledge questions are not among them",
            flush=True,
        )
    prompts = read_json(prompts_path)
    rows = chat_rows(val_path, max_samples)
    train_path = train_path or Path(val_path).with_name(paths.TRAIN_ROWS.name)
    budget, reason = answer_token_budget(max_new_tokens, [train_path, val_path], tokenizer)
    metrics["max_new_tokens"] = budget
    if rows:
        print(f"[evaluate] answers of at most {budget} tokens ({reason})", flush=True)
        requests = evaluation_requests(rows, prompts)
        others = tuple(path for path in ggufs.values() if path != model)
        answers = _chat_answers(
            rows,
            requests,
            Path(merged_dir),
            model,
            base_answers_path,
            budget,
            schema,
            constrained,
            span_constraint,
            others,
        )
        expected = [answer for _, answer in requests]
        metrics["answers"] = {
            name: score_by_task(rows, [g.text for g in got], expected, schema, [g.truncated for g in got])
            for name, got in answers.items()
            if len(got) == len(rows)
        }
        suffix = " constrained" if constrained else ""
        metrics["served"] = served_scores(metrics["answers"], model.name + suffix)
        if others:  # each quantization as it would be served, beside its perplexity; which one to ship by the task
            metrics["served_by_quant"] = {
                q: served_scores(metrics["answers"], p.name + suffix) for q, p in ggufs.items()
            }
            ladder = task_ladder(metrics["answers"], ggufs, suffix, quant_tolerance)
            if ladder:
                metrics["quant_by_task"] = ladder
                chosen = ggufs[ladder["chosen"]]
                step = (
                    f"; the export serves {model.name}: to serve it instead, `lorapipe serve --gguf {chosen}`, or "
                    f"name {ladder['chosen']} first in export.quants (a list, where it is auto) and rerun export"
                    if chosen != model
                    else " (the export's model)"
                )
                print(f"[evaluate] by the task, ship {chosen.name}: {ladder['why']}{step}", flush=True)
        _print_scores(metrics["answers"])
        texts = {name: [g.text for g in got] for name, got in answers.items()}
        samples = samples_markdown(rows, requests, texts, num_generations)
    else:
        text = read_jsonl(val_path)[:num_generations]
        text_requests = evaluation_requests(text, prompts)
        faults.fault_point("mid")
        continuation = answer_all(model, [m for m, _ in text_requests], budget) if text else []
        samples = samples_markdown(text, text_requests, {model.name: continuation}, num_generations)
    knowledge = _knowledge(knowledge_base_path, merged_dir, model, knowledge_max_new_tokens) if knowledge_path else None
    with atomic_outputs() as place:  # every output is replaced together
        if knowledge is not None:
            write_json(place(knowledge_path), knowledge[0])
            if knowledge_md_path:
                write_text_atomic(place(knowledge_md_path), knowledge[1])
        if samples_path:
            write_text_atomic(place(samples_path), samples)
        write_json(place(out_path), metrics)
    return metrics
