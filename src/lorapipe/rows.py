"""Dataset rows → token ids and loss labels, the same way for the dataset, train and evaluate stages.

- text rows ``{"text": …}``: every token carries loss;
- chat rows ``{"messages": [...]}``: rendered with the tokenizer's own chat template through
  lorapipe.chat_encoder (one rule for templates without a system role); only the assistant turns
  (their content and end-of-turn token) carry loss, everything else is -100.

Contents and documents are always tokenized as literal text: only the template's own markers and
the BOS/EOS separators lorapipe adds are control tokens.
"""

from __future__ import annotations

from lorapipe.chat_encoder import chat_segments, hf_codec, literal_ids

IGNORE = -100  # label of a token that carries no loss


def text_ids(tokenizer, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of document text read as literal characters (chat_encoder.literal_ids): text that looks
    like a special token (``<|im_end|>`` quoted in a document) or a non-special added token
    (``<｜Assistant｜>``) stays text. With `add_special_tokens`, the BOS/EOS the tokenizer adds around
    a text (by id, never from the text)."""
    return literal_ids(tokenizer, text, add_special_tokens=add_special_tokens)


def tokenize_chat(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that keep only the assistant turns.

    The conversation goes through lorapipe.chat_encoder.chat_segments, the encoder every stage
    shares: the system prompt is folded into the first user message when the template has no system
    role; contents are literal text, so only the template's own markers are control tokens; each
    assistant turn's content and end-of-turn marker carry loss, everything else is IGNORE. Raises
    ChatTemplateError (a ValueError) when the template refuses the conversation or cannot be followed.
    """
    codec = hf_codec(tokenizer)
    ids: list[int] = []
    labels: list[int] = []
    for segment in chat_segments(messages, codec, add_generation_prompt=False, loss=True):
        piece = codec.encode(segment.text, segment.control)
        ids += piece
        labels += piece if segment.loss else [IGNORE] * len(piece)
    return ids, labels


def tokenize_row(row: dict, tokenizer) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one dataset row, not truncated."""
    if "messages" in row:
        return tokenize_chat(row["messages"], tokenizer)
    ids = text_ids(tokenizer, row["text"])
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
        return text_ids(tokenizer, source), text_ids(tokenizer, messages[last]["content"])
    ids = text_ids(tokenizer, row["text"], add_special_tokens=False)
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
