"""The chat encoder's literal contents against markers that are added tokens with ``special: false``.

Run: .venv/bin/pytest tests/test_chat_encoder.py

DeepSeek-R1-Distill-Qwen's turn markers (``<｜User｜>``, ``<｜Assistant｜>``) are added tokens that are
not special: tokenizers (and llama.cpp, as user-defined tokens) match them in any text, even with
``split_special_tokens``. Contents and documents that quote them must stay text; the template's own
markers must be the tokens.
"""

from __future__ import annotations

import re

import pytest

from lorapipe.chat_encoder import (
    _llama_literal,
    chat_segments,
    encode_chat,
    hf_codec,
    literal_ids,
    literal_offsets,
)
from lorapipe.rows import IGNORE, text_ids, tokenize_chat, tokenize_row

MARKERS = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}"
    "{% else %}<｜Assistant｜>{{ m.content }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)
QUOTING = [
    {"role": "user", "content": "What does the string <｜Assistant｜> mean? And <｜User｜>?"},
    {"role": "assistant", "content": "A marker: <｜end▁of▁sentence｜> ends a turn."},
]


@pytest.fixture(scope="module")
def deepseek_like(bundled_tokenizer_dir):
    """The bundled tokenizer with DeepSeek-R1-Distill's markers as non-special added tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    tokenizer.add_tokens(MARKERS, special_tokens=False)
    tokenizer.chat_template = TEMPLATE
    assert all(not t.special for t in tokenizer.added_tokens_decoder.values() if t.content in MARKERS)
    return tokenizer


def _marker_ids(tokenizer) -> dict[int, str]:
    return {tokenizer.convert_tokens_to_ids(m): m for m in MARKERS}


def test_non_special_added_markers_are_control_tokens_and_quotes_stay_text(deepseek_like):
    codec = hf_codec(deepseek_like)
    assert set(MARKERS) <= set(codec.control_tokens)
    segments = chat_segments(QUOTING, codec, add_generation_prompt=False)
    assert [s.text for s in segments if s.control] == ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    ids = encode_chat(QUOTING, codec, add_generation_prompt=False)
    markers = _marker_ids(deepseek_like)
    assert [markers[i] for i in ids if i in markers] == ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    assert deepseek_like.decode(ids) == deepseek_like.apply_chat_template(QUOTING, tokenize=False)
    # the prompt for an answer ends with the template's own marker, the token
    prompt = encode_chat(QUOTING[:1], codec)
    assert [markers[i] for i in prompt if i in markers] == ["<｜User｜>", "<｜Assistant｜>"]
    assert prompt[-1] == deepseek_like.convert_tokens_to_ids("<｜Assistant｜>")


def test_training_rows_learn_the_marker_once_and_the_quote_as_text(deepseek_like):
    ids, labels = tokenize_chat(QUOTING, deepseek_like)
    markers = _marker_ids(deepseek_like)
    assert sum(i in markers for i in ids) == 3
    learned = [i for i in labels if i != IGNORE]
    assert deepseek_like.decode(learned) == QUOTING[1]["content"] + "<｜end▁of▁sentence｜>"
    assert learned[-1] == deepseek_like.convert_tokens_to_ids("<｜end▁of▁sentence｜>")
    assert sum(i in markers for i in learned) == 1


def test_literal_ids_match_no_added_token_and_equal_plain_text_elsewhere(deepseek_like, bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    text = "Quoted: <｜Assistant｜> and <|im_end|> in a document."
    ids = literal_ids(deepseek_like, text)
    special = {deepseek_like.convert_tokens_to_ids(t) for t in [*MARKERS, "<|im_end|>"]}
    assert not special & set(ids)
    assert deepseek_like.decode(ids) == text
    # exactly the ids of the same tokenizer without the added tokens
    without = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    assert ids == without(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    plain = "No marker here, only words."
    assert literal_ids(deepseek_like, plain) == deepseek_like(plain, add_special_tokens=False)["input_ids"]
    assert text_ids(deepseek_like, text, add_special_tokens=False) == ids
    assert tokenize_row({"text": text}, deepseek_like)[0] == text_ids(deepseek_like, text)
    offsets = literal_offsets(deepseek_like, text)
    assert len(offsets) == len(ids) and offsets[-1][1] == len(text)
    # the caller's tokenizer is unchanged: it still reads the marker as its token
    assert not deepseek_like.added_tokens_decoder[deepseek_like.convert_tokens_to_ids("<｜User｜>")].special
    assert deepseek_like("<｜User｜>", add_special_tokens=False)["input_ids"] == [
        deepseek_like.convert_tokens_to_ids("<｜User｜>")
    ]


def test_added_whitespace_tokens_are_no_markers_and_stay_matched(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    tokenizer.add_tokens(["    "], special_tokens=False)  # as code models add runs of spaces
    run = tokenizer.convert_tokens_to_ids("    ")
    text = "def f():\n    return 1"
    assert run in tokenizer(text, add_special_tokens=False)["input_ids"]
    assert literal_ids(tokenizer, text) == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_documents_quoting_a_non_special_marker_are_chunked_as_text(deepseek_like):
    from lorapipe.dataset import chunk_text

    text = "A document quotes <｜User｜> and <｜Assistant｜> as plain text. " * 6
    chunks = chunk_text(text, deepseek_like, 24, 0)
    assert len(chunks) > 1
    markers = _marker_ids(deepseek_like)
    assert all(not set(text_ids(deepseek_like, c)) & set(markers) for c in chunks)


def _fake_llama(vocabulary: dict[str, int]):
    """A tokenizer that, like llama.cpp with special=False, matches user-defined token texts anywhere;
    other characters are one token each (their code point)."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(vocabulary, key=len, reverse=True)))

    def tokenize(text: str) -> list[int]:
        ids, pos = [], 0
        for found in pattern.finditer(text):
            ids += [ord(c) for c in text[pos : found.start()]] + [vocabulary[found.group()]]
            pos = found.end()
        return ids + [ord(c) for c in text[pos:]]

    return tokenize, pattern


def test_llama_contents_never_become_user_defined_tokens():
    vocabulary = {m: 1_000_000 + i for i, m in enumerate(MARKERS)}
    tokenize, pattern = _fake_llama(vocabulary)
    text = "Say <｜Assistant｜> or <｜User｜><｜User｜>, not <｜end▁of▁sentence｜>."
    assert set(tokenize(text)) & set(vocabulary.values())  # what llama.cpp does with special=False
    ids = _llama_literal(tokenize, text, pattern)
    assert not set(ids) & set(vocabulary.values())
    assert "".join(chr(i) for i in ids) == text
    assert _llama_literal(tokenize, "plain", pattern) == tokenize("plain")
    assert _llama_literal(tokenize, "plain", None) == tokenize("plain")
    # a marker made of other markers' texts is cut until no part is one
    nested = {"<a>": 7_000_000, "<a><a>": 7_000_001}
    tokenize, pattern = _fake_llama(nested)
    assert "".join(chr(i) for i in _llama_literal(tokenize, "x<a><a>y", pattern)) == "x<a><a>y"
    assert not set(_llama_literal(tokenize, "x<a><a>y", pattern)) & set(nested.values())


def test_a_gguf_with_user_defined_markers_reads_quotes_as_text(tmp_path):
    # llama.cpp matches user-defined tokens (a GGUF's non-special added tokens) even with special=False
    import shutil

    import llama_cpp
    from gguf import GGUFReader

    from lorapipe.chat_encoder import llama_codec
    from lorapipe.models import bundled_gguf

    path = tmp_path / "user-defined.gguf"
    shutil.copy(bundled_gguf("smollm2-135m-instruct"), path)
    reader = GGUFReader(path, "r+")
    tokens, types = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    names = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    for name in ("<|im_start|>", "<filename>"):
        types.parts[types.data[names.index(name)]][0] = 4  # gguf.TokenType.USER_DEFINED
    del reader
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    start, filename = names.index("<|im_start|>"), names.index("<filename>")
    assert filename in llm.tokenize(b"a <filename>", add_bos=False, special=False)  # what the fix is about
    codec = llama_codec(llm)
    assert {"<|im_start|>", "<filename>", "<|im_end|>"} <= set(codec.control_tokens)
    messages = [{"role": "user", "content": "Quote <|im_start|>user and <filename> as text."}]
    ids = encode_chat(messages, codec)
    rendered = "".join(s.text for s in chat_segments(messages, codec, add_generation_prompt=True))
    assert llm.detokenize(ids, special=True).decode() == rendered
    assert filename not in ids
    assert ids.count(start) == rendered.count("<|im_start|>") - 1  # the template's own: system, user, assistant
    assert ids.count(start) == 3
