"""Did fine-tuning help? The evaluate stages.

    from lorapipe import evaluate_base, evaluate_models
    evaluate_base("data/dataset/val.jsonl", "models/base", "reports/eval_base.json")

- validation perplexity of the base model (once: ``evaluate_base``), the merged model and every
  GGUF, on the same token ids (the base tokenizer's), so the numbers compare;
- for chat rows, answers generated greedily with the task's system prompt from ``prompts.json`` by
  the base model (once) and the merged model (transformers) and the first GGUF (llama.cpp), scored
  by lorapipe.scoring: exact match, ROUGE-L and, for JSON tasks, parse rate, schema validity,
  intent accuracy and slot F1;
- ``reports/samples.md``: prompts with the base and fine-tuned answers side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lorapipe import faults, paths
from lorapipe.export import gguf_logits
from lorapipe.io import atomic_outputs, read_json, read_jsonl, write_json, write_jsonl, write_text_atomic
from lorapipe.models import load_causal_lm, load_tokenizer, sequence_nll
from lorapipe.rows import IGNORE, tokenize_row
from lorapipe.scoring import is_json_task, score_answers


def _val_sequences(val_path: Path, tokenizer, max_samples: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of the first `max_samples` validation rows: text rows score every token, chat
    rows the assistant's answers only."""
    rows = read_jsonl(val_path)[:max_samples]
    if not rows:
        raise ValueError(f"{val_path} has no rows to evaluate")
    return [tokenize_row(row, tokenizer) for row in rows]


def _summary(nll: float, count: int) -> dict[str, float]:
    loss = nll / max(count, 1)
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50)), 4), "tokens": count}


def hf_perplexity(model_dir: str | Path, sequences: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    return _summary(*sequence_nll(load_causal_lm(model_dir).eval(), sequences))


def gguf_perplexity(gguf_path: str | Path, sequences: list[tuple[list[int], list[int]]]) -> dict[str, float]:
    import numpy as np

    nll, count = 0.0, 0
    for (ids, labels), logits in zip(sequences, gguf_logits(gguf_path, [ids for ids, _ in sequences])):
        shifted = logits[:-1].astype(np.float64)
        shifted -= shifted.max(-1, keepdims=True)
        logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        targets = np.array(labels[1:])
        scored = np.nonzero(targets != IGNORE)[0]
        nll -= float(logprobs[scored, targets[scored]].sum())
        count += len(scored)
    return _summary(nll, count)


def chat_rows(val_path: str | Path, max_samples: int) -> list[dict]:
    """The first `max_samples` validation rows that are conversations (the ones with an answer)."""
    return [row for row in read_jsonl(val_path) if "messages" in row][:max_samples]


def generate_answer(tokenizer, model, messages: list[dict], max_new_tokens: int, temperature: float = 0.0) -> str:
    """A loaded transformers model's answer to a conversation, through its chat template; greedy at
    temperature 0, sampled above."""
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def hf_answers(model_dir: str | Path, requests: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy answers of a Hugging Face model folder to conversations, through its chat template."""
    if not requests:
        return []
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    answers = []
    for number, messages in enumerate(requests, 1):
        answers.append(generate_answer(tokenizer, model, messages, max_new_tokens).strip())
        if number % 8 == 0:
            print(f"[evaluate] {number}/{len(requests)} answers from {model_dir}", flush=True)
    return answers


def evaluate_base(
    val_path: str | Path = paths.VAL_ROWS,
    base_dir: str | Path = paths.BASE_MODEL,
    out_path: str | Path = paths.EVAL_BASE,
    max_samples: int = 32,
    prompts_path: str | Path = paths.PROMPTS,
    answers_path: str | Path | None = None,
    max_new_tokens: int = 64,
) -> dict:
    """Score the base model once; experiments reuse ``eval_base.json``. With `answers_path`, also
    the base's answers to the chat validation rows (what evaluate_models compares the tuned one to)."""
    sequences = _val_sequences(Path(val_path), load_tokenizer(base_dir), max_samples)
    metrics = {"base": hf_perplexity(base_dir, sequences), "rows": len(sequences)}
    faults.fault_point("mid")
    with atomic_outputs() as place:  # the answers and the metrics are replaced together
        if answers_path:
            rows = chat_rows(val_path, max_samples)
            requests = evaluation_requests(rows, read_json(prompts_path)) if rows else []
            answers = hf_answers(base_dir, [messages for messages, _ in requests], max_new_tokens)
            write_jsonl(place(answers_path), [{"task": row["task"], "answer": answer}
                                              for row, answer in zip(rows, answers)])
        write_json(place(out_path), metrics)
    print(f"[evaluate_base] base perplexity {metrics['base']['perplexity']:.3f} on {len(sequences)} rows", flush=True)
    return metrics


def chat(gguf_path: str | Path, system_prompt: str, question: str, max_tokens: int = 64) -> str:
    """One greedy answer from a GGUF under llama.cpp, using the chat template stored in the file."""
    return answer_all(gguf_path, [[{"role": "system", "content": system_prompt},
                                   {"role": "user", "content": question}]], max_tokens)[0]


def answer_all(gguf_path: str | Path, requests: list[list[dict]], max_tokens: int = 64,
               json_schema: dict | None = None) -> list[str]:
    """Greedy answers to several conversations, loading the model once. With `json_schema`, decoding
    follows a llama.cpp grammar built from it, so every complete answer parses and fits the schema."""
    from llama_cpp import Llama, LlamaGrammar

    grammar = LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False) if json_schema else None
    llm = Llama(str(gguf_path), n_ctx=2048, verbose=False)
    answers = [llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, grammar=grammar)
               ["choices"][0]["message"]["content"].strip() for messages in requests]
    llm.close()
    return answers


def evaluation_requests(rows: list[dict], prompts: dict[str, str]) -> list[tuple[list[dict], str | None]]:
    """The conversation sent to the model for each validation row, with its task's system prompt
    from ``prompts.json``, and the expected answer (None for text rows)."""
    requests = []
    for row in rows:
        system = {"role": "system", "content": prompts[row["task"]]}
        if "messages" in row:
            last = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
            turns = [m for m in row["messages"][:last] if m["role"] != "system"]
            requests.append(([system, *turns], row["messages"][last]["content"]))
        else:
            opening = " ".join(row["text"].split()[:30])
            requests.append(([system, {"role": "user", "content": f"Continue this text: {opening}"}], None))
    return requests


def _relative(value: float, reference: float) -> float:
    return round((value - reference) / reference, 6) if reference else 0.0


def score_by_task(rows: list[dict], answers: list[str], expected: list[str], schema: dict | None) -> dict:
    """score_answers per task (JSON scores only for JSON tasks)."""
    out = {}
    for task in dict.fromkeys(row["task"] for row in rows):
        chosen = [i for i, row in enumerate(rows) if row["task"] == task]
        out[task] = score_answers([answers[i] for i in chosen], [expected[i] for i in chosen], schema)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def samples_markdown(rows: list[dict], requests, answers: dict[str, list[str]], limit: int) -> str:
    """Prompts with each model's answer side by side, and the expected answer."""
    names = list(answers)
    lines = ["# Sample answers", "", "Greedy answers to validation rows, with each task's system prompt "
             "(`data/dataset/prompts.json`). " + ", ".join(f"`{n}`" for n in names) + ".", ""]
    for number, (row, (messages, expected)) in enumerate(zip(rows[:limit], requests[:limit])):
        lines += [f"## {number + 1}. {row['task']}", "", f"**System:** {messages[0]['content']}", "",
                  f"**Prompt:** {messages[-1]['content']}", "",
                  "| " + " | ".join(["expected", *names]) + " |", "|" + "---|" * (len(names) + 1),
                  "| " + " | ".join(_cell(x) for x in [expected or "", *(answers[n][number] for n in names)]) + " |",
                  ""]
    return "\n".join(lines)


def evaluate_models(
    val_path: str | Path = paths.VAL_ROWS,
    prompts_path: str | Path = paths.PROMPTS,
    merged_dir: str | Path = paths.MERGED,
    gguf_dir: str | Path = paths.GGUF,
    base_metrics_path: str | Path = paths.EVAL_BASE,
    out_path: str | Path = paths.EVAL,
    samples_path: str | Path = paths.SAMPLES,
    max_samples: int = 32,
    num_generations: int = 3,
    max_new_tokens: int = 64,
    base_answers_path: str | Path | None = None,
    json_schema: str | Path | None = None,
    constrained: bool = False,
) -> dict:
    """Perplexity of the merged model and each GGUF against the base; answers of the base, merged and
    first GGUF to the chat validation rows, scored; sample answers side by side."""
    base = read_json(base_metrics_path)["base"]
    sequences = _val_sequences(Path(val_path), load_tokenizer(merged_dir), max_samples)
    merged = hf_perplexity(merged_dir, sequences)
    metrics = {"base": base, "merged": {**merged, "vs_base": _relative(merged["perplexity"], base["perplexity"])},
               "gguf": {}, "rows": len(sequences)}
    ggufs = sorted(Path(gguf_dir).glob("*.gguf"))
    ggufs = [g for g in ggufs if not g.name.endswith(".lora.gguf")]
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {gguf_dir}: run the export stage first")
    for path in ggufs:
        quant = path.name.rsplit(".", 2)[-2]
        score = gguf_perplexity(path, sequences)
        metrics["gguf"][quant] = {**score, "vs_base": _relative(score["perplexity"], base["perplexity"]),
                                  "vs_merged": _relative(score["perplexity"], merged["perplexity"])}
    line = ", ".join(f"{q} {m['perplexity']:.3f}" for q, m in metrics["gguf"].items())
    print(f"[evaluate] perplexity: base {base['perplexity']:.3f}, merged {merged['perplexity']:.3f}, {line}", flush=True)

    schema = read_json(json_schema) if json_schema else None
    prompts = read_json(prompts_path)
    rows = chat_rows(val_path, max_samples)
    requests = evaluation_requests(rows, prompts)
    conversations = [messages for messages, _ in requests]
    expected = [answer for _, answer in requests]
    answers: dict[str, list[str]] = {}
    if base_answers_path and Path(base_answers_path).is_file():
        answers["base"] = [a["answer"] for a in read_jsonl(base_answers_path)][: len(rows)]
    answers["fine-tuned"] = hf_answers(merged_dir, conversations, max_new_tokens)
    faults.fault_point("mid")
    answers[ggufs[0].name] = answer_all(ggufs[0], conversations, max_new_tokens) if rows else []
    if constrained and rows:
        if schema is None:
            raise ValueError("eval.constrained needs eval.json_schema: the grammar is built from the schema")
        json_tasks = {task for task in dict.fromkeys(r["task"] for r in rows)
                      if is_json_task([e for r, e in zip(rows, expected) if r["task"] == task])}
        chosen = [i for i, row in enumerate(rows) if row["task"] in json_tasks]
        constrained_answers = list(answers[ggufs[0].name])
        for i, answer in zip(chosen, answer_all(ggufs[0], [conversations[i] for i in chosen], max_new_tokens, schema)):
            constrained_answers[i] = answer
        answers[f"{ggufs[0].name} constrained"] = constrained_answers
    if rows:
        metrics["answers"] = {name: score_by_task(rows, got, expected, schema) for name, got in answers.items()
                              if len(got) == len(rows)}
        for name, tasks in metrics["answers"].items():
            for task, score in tasks.items():
                extra = (f", JSON parse {score['json']['json_parse_rate']:.0%}, intent {score['json']['intent_accuracy']:.0%}"
                         f", slot F1 {score['json']['slots']['f1']:.2f}" if "json" in score else "")
                print(f"[evaluate] {name} on {task}: exact {score['exact_match']:.0%}, ROUGE-L {score['rouge_l']:.2f}"
                      + extra, flush=True)
        samples = samples_markdown(rows, requests, answers, num_generations)
    else:
        text = read_jsonl(val_path)[:num_generations]
        text_requests = evaluation_requests(text, prompts)
        continuation = answer_all(ggufs[0], [m for m, _ in text_requests], max_new_tokens) if text else []
        samples = samples_markdown(text, text_requests, {ggufs[0].name: continuation}, num_generations)
    with atomic_outputs() as place:  # the samples and the metrics are replaced together
        write_text_atomic(place(samples_path), samples)
        write_json(place(out_path), metrics)
    return metrics
