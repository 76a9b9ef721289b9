"""Dataset rows → token ids and loss labels, the same way for the dataset, train and evaluate stages.

- text rows ``{"text": …}``: every token carries loss;
- chat rows ``{"messages": [...]}``: rendered with the tokenizer's own chat template; only the
  assistant turns (their content and end-of-turn token) carry loss, everything else is -100.
"""

from __future__ import annotations

IGNORE = -100  # label of a token that carries no loss


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only the assistant turns.

    The conversation is rendered turn by turn: each turn contributes the text its message adds to
    the rendering, so the pieces join to exactly the whole rendering.
    """
    if not tokenizer.chat_template:
        raise ValueError("chat rows need a tokenizer with a chat template")
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = _render(tokenizer, messages[:i], generation_prompt=True)
            piece = _ids(tokenizer, prompt[len(rendered) :])
            ids += piece
            labels += [IGNORE] * len(piece)
            rendered = prompt
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full.startswith(rendered):
            raise ValueError("the chat template does not render conversations incrementally; cannot mask the loss")
        delta = full[len(rendered) :]
        if message["role"] == "assistant":
            # Loss on the answer and its end-of-turn token, not on the whitespace after it.
            body = delta.rstrip()
            piece, tail = _ids(tokenizer, body), _ids(tokenizer, delta[len(body) :]) if delta[len(body) :] else []
            ids += piece + tail
            labels += piece + [IGNORE] * len(tail)
        else:
            piece = _ids(tokenizer, delta)
            ids += piece
            labels += [IGNORE] * len(piece)
        rendered = full
    return ids, labels


def tokenize_row(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one dataset row, not truncated."""
    if "messages" in row:
        return tokenize_chat(row["messages"], tokenizer)
    ids = tokenizer(row["text"])["input_ids"]
    return ids, list(ids)


def truncate(ids: list[int], labels: list[int], max_seq_len: int) -> tuple[list[int], list[int]]:
    return ids[:max_seq_len], labels[:max_seq_len]


def loss_tokens(labels: list[int]) -> int:
    return sum(label != IGNORE for label in labels)


def tokenize_seq2seq(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(encoder input ids, decoder labels) of one row, for encoder-decoder models such as FLAN-T5.

    - chat rows: the input is every message before the last assistant turn, its content joined by
      blank lines (system prompt first); the labels are that assistant turn;
    - text rows: the first half of the chunk is the input and the model learns to continue it.
    """
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise ValueError("a chat row without an assistant turn has nothing to learn")
        source = "\n\n".join(m["content"] for m in messages[:last])
        return tokenizer(source)["input_ids"], tokenizer(messages[last]["content"])["input_ids"]
    ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
    half = max(1, len(ids) // 2)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return ids[:half] + eos, ids[half:] + eos


def pack_text(sequences: list[list[int]], eos_id: int, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Text rows joined end to end, an EOS token between documents, cut into `max_seq_len` blocks
    (continued pre-training). Every token carries loss; the last block may be shorter."""
    stream: list[int] = []
    for ids in sequences:
        stream += ids if ids and ids[-1] == eos_id else [*ids, eos_id]
    blocks = [stream[i : i + max_seq_len] for i in range(0, len(stream), max_seq_len)]
    return [(block, list(block)) for block in blocks if len(block) > 1]
