"""Rows → tokens: chat rows rendered with the tokenizer's own template, loss on the answers only.

Run: .venv/bin/pytest tests/test_rows.py
"""

from lorapipe.models import load_tokenizer
from lorapipe.rows import IGNORE, tokenize_chat, tokenize_row

CONVERSATION = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "Play some jazz"},
    {"role": "assistant", "content": '{"intent": "PlayMusic", "slots": {"genre": "jazz"}}'},
    {"role": "user", "content": "And tomorrow's weather?"},
    {"role": "assistant", "content": '{"intent": "GetWeather", "slots": {"timeRange": "tomorrow"}}'},
]


def _spans(ids, labels):
    spans, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def test_loss_tokens_decode_to_exactly_the_assistant_contents(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, labels = tokenize_chat(CONVERSATION, tokenizer)
    decoded = [tokenizer.decode(span, skip_special_tokens=True) for span in _spans(ids, labels)]
    assert decoded == [CONVERSATION[2]["content"], CONVERSATION[4]["content"]]
    # the end-of-turn token is learned too, so the model stops
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert all(span[-1] == eot for span in _spans(ids, labels))


def test_tokens_are_the_chat_template_rendering(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, _ = tokenize_chat(CONVERSATION, tokenizer)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids) == rendered
    assert "<|im_start|>system\nAnswer with JSON only.<|im_end|>" in rendered


def test_text_rows_carry_loss_everywhere(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, labels = tokenize_row({"text": "Plain text to absorb."}, tokenizer)
    assert ids == labels and len(ids) > 3
