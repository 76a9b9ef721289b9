"""Greedy answers from a model: a Hugging Face folder under transformers, or a GGUF under llama.cpp.

    from lorapipe.generation import answer_all, hf_answers
    hf_answers("models/merged", [[{"role": "user", "content": "What is LoRA?"}]], 32)   # ["..."]
    answer_all("models/gguf/lorapipe.Q4_K_M.gguf", [[{"role": "user", "content": "What is LoRA?"}]], 32)

Both encode prompts with lorapipe's one chat encoder (chat_encoder.encode_chat), as training does.
Shared by the evaluate stages, the knowledge evaluation and ``lorapipe ask``; its own module so that
the knowledge evaluation and evaluate do not import each other.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

from lorapipe.chat_encoder import encode_chat, hf_codec, llama_codec
from lorapipe.io import read_jsonl
from lorapipe.labeled import span_schema
from lorapipe.llama import threads
from lorapipe.models import load_causal_lm, load_tokenizer
from lorapipe.params import ANSWER_MAX_TOKENS


# eval.max_new_tokens: auto. A reference answer's tokens plus this share of them (at least
# AUTO_MARGIN_MIN tokens): room for a model that words the same answer a little longer; without chat
# rows (continuations of text only) AUTO_TEXT_TOKENS.
AUTO_MARGIN, AUTO_MARGIN_MIN, AUTO_TEXT_TOKENS = 0.25, 8, 64


def answer_token_budget(max_new_tokens: int | str, row_files: list[str | Path], tokenizer) -> tuple[int, str]:
    """The token limit of generated answers and how it was chosen: `max_new_tokens` when it is a number;
    for ``"auto"``, the longest reference answer (the last assistant turn of each chat row of
    `row_files`, JSONL files that may be absent: train and validation, so that every stage that answers
    derives the same limit) in tokens of `tokenizer`, plus AUTO_MARGIN of it (at least AUTO_MARGIN_MIN
    tokens), so no answer as long as a reference is cut by the evaluator; AUTO_TEXT_TOKENS without chat
    rows. Returns ``(tokens, reason)``."""
    if max_new_tokens != "auto":
        return int(max_new_tokens), "eval.max_new_tokens"
    longest = 0
    for path in row_files:
        if not Path(path).is_file():
            continue
        for row in read_jsonl(path):
            answers = [m["content"] for m in row.get("messages", []) if m["role"] == "assistant"]
            if answers:
                longest = max(longest, len(tokenizer(answers[-1], add_special_tokens=False)["input_ids"]))
    if not longest:
        return AUTO_TEXT_TOKENS, "eval.max_new_tokens auto: no chat rows"
    margin = max(AUTO_MARGIN_MIN, math.ceil(longest * AUTO_MARGIN))
    return longest + margin, f"eval.max_new_tokens auto: the longest reference answer, {longest} tokens, + {margin}"


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


class Generation(NamedTuple):
    """One generated answer: its text (stripped) and whether it was cut at the token limit (max_new_tokens
    spent without an end-of-generation token), so a cut answer is told apart from a malformed one."""

    text: str
    truncated: bool


def generate_answer(tokenizer, model, messages: list[dict], max_new_tokens: int, temperature: float = 0.0) -> str:
    """A loaded transformers model's answer to a conversation, through its chat template; greedy at
    temperature 0, sampled above. The prompt is chat_encoder.encode_chat's, as in training: the
    system prompt folded into the first user message when the template has no system role, contents
    as literal text. Raises ChatTemplateError when the template refuses the conversation."""
    import torch

    ids = torch.tensor([encode_chat(messages, hf_codec(tokenizer))])
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _end_ids(model, tokenizer) -> set[int]:
    """The token ids that end an answer: the generation config's EOS ids (one or a list) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ends | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def hf_answers(
    model_dir: str | Path, requests: list[list[dict]], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """The texts of `hf_generate`'s answers."""
    return [g.text for g in hf_generate(model_dir, requests, max_new_tokens, batch_size)]


def hf_generate(
    model_dir: str | Path, requests: list[list[dict]], max_new_tokens: int, batch_size: int = 8
) -> list[Generation]:
    """Greedy answers (at most `max_new_tokens` tokens each, stripped; ``truncated`` when the limit was
    reached without an end-of-generation token) of a Hugging Face model folder to conversations,
    through its chat template (chat_encoder.encode_chat), in the order of `requests`.

    Up to `batch_size` conversations of similar length are decoded together, left-padded with an
    attention mask: on a CPU a decoding step of several rows costs little more than one row's
    (measured on 2 cores: the 22 knowledge answers of `make run`, 32 tokens each from the bundled
    model, in 36 s against about 80 s one by one, every answer the same). The padded positions are
    masked, so a row's greedy answer is the one it gets alone up to float rounding. An answer ends at
    the first end-of-generation token. Raises ChatTemplateError when the template refuses a
    conversation, and ValueError when a prompt and `max_new_tokens` exceed the model's context
    (config ``max_position_embeddings``), both before any generation."""
    if not requests:
        return []
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    return generate_batches(model, tokenizer, requests, max_new_tokens, batch_size, source=str(model_dir))


def generate_batches(
    model, tokenizer, requests: list[list[dict]], max_new_tokens: int, batch_size: int = 8, source: str = "the model"
) -> list[Generation]:
    """hf_generate on a loaded transformers model (in eval mode; the caller sets it), e.g. the model
    being trained (train_callbacks.TaskMetric). `source` names it in the progress lines and errors."""
    import torch

    if not requests:
        return []
    codec = hf_codec(tokenizer)
    prompts = [encode_chat(messages, codec) for messages in requests]
    limit, longest = getattr(model.config, "max_position_embeddings", None), max(map(len, prompts))
    if limit and longest + max_new_tokens > limit:  # past it the answers are garbage and memory explodes
        raise ValueError(
            f"a prompt of {longest} tokens plus {max_new_tokens} new ones is longer than {source}'s context "
            f"({limit} tokens): lower eval.retrieval_top_k or synth.passage_tokens (the retrieval prompts), or "
            "shorten the conversation"
        )
    ends = _end_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(ends, default=0)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))  # similar lengths share a batch
    answers = [Generation("", False)] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chosen)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in chosen], device=device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chosen], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        for row, i in enumerate(chosen):
            tokens = out[row, width:].tolist()
            cut = next((k for k, token in enumerate(tokens) if token in ends), None)
            text = tokenizer.decode(tokens[: len(tokens) if cut is None else cut], skip_special_tokens=True)
            answers[i] = Generation(text.strip(), cut is None and len(tokens) >= max_new_tokens)
        print(f"[evaluate] {min(start + batch_size, len(order))}/{len(order)} answers from {source}", flush=True)
    return answers


def chat(gguf_path: str | Path, system_prompt: str, question: str, max_tokens: int = ANSWER_MAX_TOKENS) -> str:
    """One greedy answer (at most `max_tokens` tokens) from a GGUF under llama.cpp, using the chat
    template stored in the file: what ``lorapipe ask`` prints, without a task's schema or retrieval."""
    return answer_all(
        gguf_path, [[{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]], max_tokens
    )[0]


def answer_all(
    gguf_path: str | Path, requests: list[list[dict]], max_tokens: int = 64, json_schema: dict | None = None
) -> list[str]:
    """The texts of `gguf_generate`'s answers."""
    return [g.text for g in gguf_generate(gguf_path, requests, max_tokens, json_schema)]


def _gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal (llama.cpp's grammar syntax: backslash, quote and line breaks
    escaped; other characters as UTF-8)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def span_gbnf(json_schema: dict, text: str) -> str:
    """The GBNF grammar of labeled.span_schema(`json_schema`, `text`): llama.cpp's converter
    (llama_cpp.llama_grammar.json_schema_to_gbnf) for the schema, with each list of spans written in
    by lorapipe as alternatives of the JSON string of each span (json.dumps, non-ASCII as is). The
    converter's own enum literals do not escape a backslash, so a quote in the text would end a
    literal early (llama.cpp then fails to parse the grammar and the process dies), a backslash or a
    line break would reach the answer raw (JSON that does not parse), and characters beyond U+FFFF
    would be lost. Raises ValueError as span_schema."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    lists: list[list[str]] = []

    def placeholder(spans: list[str]) -> str:
        lists.append(spans)
        return f"LORAPIPE_SPANS_{len(lists) - 1}"

    gbnf = json_schema_to_gbnf(json.dumps(span_schema(json_schema, text, placeholder=placeholder)))
    for number, spans in enumerate(lists):
        alternatives = " | ".join(_gbnf_literal(json.dumps(span, ensure_ascii=False)) for span in spans)
        gbnf = gbnf.replace(_gbnf_literal(json.dumps(f"LORAPIPE_SPANS_{number}")), f"( {alternatives} )")
    return gbnf


def last_user_text(messages: list[dict]) -> str:
    """The text of the last user message that has any (what the span constraint takes its spans from)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"].strip()), "")


PROGRESS_EVERY_S = 30  # seconds between gguf_generate's progress lines


def gguf_generate(
    gguf_path: str | Path,
    requests: list[list[dict]],
    max_tokens: int = 64,
    json_schema: dict | None = None,
    span_constraint: bool = False,
) -> list[Generation]:
    """Greedy answers to several conversations, loading the model once (``truncated`` when llama.cpp
    stopped at `max_tokens`: finish_reason ``length``). The prompts are encoded by
    chat_encoder.encode_chat from the GGUF's own chat template (llama_codec), as the transformers
    models' are: the same system-role rule, contents as literal text. Generation ends at the model's
    end-of-generation tokens or its EOS text. With `json_schema`, decoding follows a llama.cpp grammar
    built from it, so every complete answer parses and fits the schema; with `span_constraint` too, the
    grammar is built per conversation from labeled.span_schema of its last user message, so every free
    string value is a span of that message. The context is 2048 tokens,
    larger when the longest prompt plus `max_tokens` needs it (up to the model's trained context).
    Raises ChatTemplateError when the template refuses a conversation, ValueError when a prompt
    does not fit the model's trained context or llama.cpp builds no grammar from `json_schema`."""
    from llama_cpp import Llama, LlamaGrammar

    if span_constraint and json_schema is None:
        raise ValueError("the span constraint rewrites a JSON Schema's strings: give json_schema too")
    # each conversation's span grammar, built before the model loads: a message it refuses stops nothing half-way
    spans = [span_gbnf(json_schema, last_user_text(m)) for m in requests] if span_constraint else None
    try:
        grammar = (
            LlamaGrammar.from_json_schema(json.dumps(json_schema), verbose=False) if json_schema and not spans else None
        )
    except Exception as exc:  # noqa: BLE001 - llama.cpp's converter asserts on what it cannot express
        raise ValueError(f"no grammar can be built from this JSON Schema: {exc}; simplify the schema") from None
    llm = Llama(str(gguf_path), n_ctx=2048, n_threads=threads(), verbose=False)
    try:
        prompts = [encode_chat(messages, llama_codec(llm)) for messages in requests]
        needed = max(map(len, prompts), default=0) + max_tokens
        if needed > llm.n_ctx():  # long prompts (retrieved passages): a context that holds them
            trained = llm._model.n_ctx_train() or needed  # 0: the GGUF does not say
            if needed > trained:
                raise ValueError(
                    f"a prompt of {needed - max_tokens} tokens plus {max_tokens} new ones does not fit the "
                    f"{trained}-token context of {gguf_path}: ask fewer passages (--top-k, eval.retrieval_top_k), "
                    "shorter ones (synth.passage_tokens) or fewer tokens"
                )
            llm.close()
            llm = Llama(str(gguf_path), n_ctx=min(trained, -(-needed // 256) * 256), n_threads=threads(), verbose=False)
        eos = llm._model.token_get_text(llm.token_eos())
        answers = []
        said = time.monotonic()
        for number, prompt in enumerate(prompts):
            # A fresh context per prompt: reusing the previous prompt's cached start changes the logits in
            # the last bits, enough to flip a greedy token (an answer would depend on the one before).
            llm.reset()
            rules = LlamaGrammar.from_string(spans[number], verbose=False) if spans else grammar
            completion = llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=0.0, grammar=rules, stop=[eos]
            )
            choice = completion["choices"][0]
            answers.append(Generation(choice["text"].strip(), choice.get("finish_reason") == "length"))
            done = len(answers)
            if len(prompts) > 1 and (time.monotonic() - said >= PROGRESS_EVERY_S or done == len(prompts)):
                said = time.monotonic()  # a line every PROGRESS_EVERY_S: a grammar-bound run takes minutes
                how = " under the span grammar" if spans else " under the schema" if grammar else ""
                print(f"[evaluate] {done}/{len(prompts)} answers from {Path(gguf_path).name}{how}", flush=True)
    finally:
        llm.close()
    return answers
