"""Validation perplexity of the base model, the merged model and every GGUF (the evaluate stages).

    from lorapipe import evaluate_base, evaluate_models
    evaluate_base("data/dataset/val.jsonl", "models/base", "reports/eval_base.json")

All models are scored on the same token ids (the base tokenizer's), so the numbers compare.
"""

from __future__ import annotations

import math
from pathlib import Path

from lorapipe import paths
from lorapipe.export import gguf_logits
from lorapipe.io import read_json, read_jsonl, write_json, write_text_atomic
from lorapipe.models import load_causal_lm, load_tokenizer, sequence_nll
from lorapipe.rows import IGNORE, tokenize_row


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


def evaluate_base(
    val_path: str | Path = paths.VAL_ROWS,
    base_dir: str | Path = paths.BASE_MODEL,
    out_path: str | Path = paths.EVAL_BASE,
    max_samples: int = 32,
) -> dict:
    """Score the base model once; experiments reuse ``eval_base.json``."""
    sequences = _val_sequences(Path(val_path), load_tokenizer(base_dir), max_samples)
    metrics = {"base": hf_perplexity(base_dir, sequences), "rows": len(sequences)}
    write_json(out_path, metrics)
    print(f"[evaluate_base] base perplexity {metrics['base']['perplexity']:.3f} on {len(sequences)} rows", flush=True)
    return metrics


def chat(gguf_path: str | Path, system_prompt: str, question: str, max_tokens: int = 64) -> str:
    """One greedy answer from a GGUF under llama.cpp, using the chat template stored in the file."""
    return answer_all(gguf_path, [[{"role": "system", "content": system_prompt},
                                   {"role": "user", "content": question}]], max_tokens)[0]


def answer_all(gguf_path: str | Path, requests: list[list[dict]], max_tokens: int = 64) -> list[str]:
    """Greedy answers to several conversations, loading the model once."""
    from llama_cpp import Llama

    llm = Llama(str(gguf_path), n_ctx=2048, verbose=False)
    answers = [llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
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
) -> dict:
    """Perplexity of the merged model and each GGUF against the base, plus sample answers."""
    base = read_json(base_metrics_path)["base"]
    sequences = _val_sequences(Path(val_path), load_tokenizer(merged_dir), max_samples)
    merged = hf_perplexity(merged_dir, sequences)
    metrics = {"base": base, "merged": {**merged, "vs_base": _relative(merged["perplexity"], base["perplexity"])},
               "gguf": {}, "rows": len(sequences)}
    ggufs = sorted(Path(gguf_dir).glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in {gguf_dir}: run the export stage first")
    for path in ggufs:
        quant = path.name.rsplit(".", 2)[-2]
        score = gguf_perplexity(path, sequences)
        metrics["gguf"][quant] = {**score, "vs_base": _relative(score["perplexity"], base["perplexity"]),
                                  "vs_merged": _relative(score["perplexity"], merged["perplexity"])}
    line = ", ".join(f"{q} {m['perplexity']:.3f}" for q, m in metrics["gguf"].items())
    print(f"[evaluate] perplexity: base {base['perplexity']:.3f}, merged {merged['perplexity']:.3f}, {line}", flush=True)

    prompts = read_json(prompts_path)
    rows = read_jsonl(val_path)[:num_generations]
    requests = evaluation_requests(rows, prompts)
    answers = answer_all(ggufs[0], [messages for messages, _ in requests], max_new_tokens) if requests else []
    lines = ["# Sample answers", "", f"Model: `{ggufs[0].name}` (llama.cpp, greedy).", ""]
    for row, (messages, expected), answer in zip(rows, requests, answers):
        lines += [f"## {row['task']}: {Path(row['source']).name}", "", f"**System:** {messages[0]['content']}", "",
                  f"**Prompt:** {messages[-1]['content']}", "", f"**Answer:** {answer}", ""]
        if expected is not None:
            lines += [f"**Expected:** {expected}", ""]
    write_text_atomic(samples_path, "\n".join(lines))
    write_json(out_path, metrics)
    return metrics
