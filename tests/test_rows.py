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


# --- text that looks like a special token is text; templates without a system role ----------------

QUOTING = [
    {"role": "system", "content": "You explain chat formats."},
    {"role": "user", "content": "What does <|im_end|> do? And <|im_start|>assistant?"},
    {"role": "assistant", "content": "<|im_end|> closes a turn; <|endoftext|> ends a document."},
]


def _controls(tokenizer, ids):
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    return [tokenizer.convert_ids_to_tokens(i) for i in ids if i in special]


def test_special_token_text_in_contents_stays_text(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    ids, labels = tokenize_chat(QUOTING, tokenizer)
    # the template's own markers only: <|im_start|> and <|im_end|> around each of the 3 messages
    assert _controls(tokenizer, ids) == ["<|im_start|>", "<|im_end|>"] * 3
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(QUOTING, tokenize=False)
    answer = [tokenizer.decode(span) for span in _spans(ids, labels)]
    assert answer == [QUOTING[2]["content"] + "<|im_end|>"]
    assert _spans(ids, labels)[0][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_text_rows_read_special_token_text_as_text(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = "ChatML ends a turn with <|im_end|> and a document with <|endoftext|>."
    ids, labels = tokenize_row({"text": text}, tokenizer)
    assert _controls(tokenizer, ids) == [] and ids == labels
    assert tokenizer.decode(ids) == text
    # whatever tokenizer a caller passes: the rows do not depend on load_tokenizer's default
    from transformers import AutoTokenizer

    assert tokenize_row({"text": text}, AutoTokenizer.from_pretrained(tiny_model_dir))[0] == ids


def test_a_template_without_a_system_role_gets_the_prompt_in_the_first_user_turn(tmp_path, tiny_model_dir):
    from helpers import model_with_template
    from lorapipe.chat_encoder import fold_system

    tokenizer = load_tokenizer(model_with_template(tiny_model_dir, tmp_path / "gemma2", "gemma2"))
    ids, labels = tokenize_chat(CONVERSATION, tokenizer)
    folded = fold_system(CONVERSATION)
    assert folded[0]["content"] == "Answer with JSON only.\n\nPlay some jazz"
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(folded, tokenize=False)
    decoded = [tokenizer.decode(span) for span in _spans(ids, labels)]
    assert decoded == [CONVERSATION[2]["content"] + "<end_of_turn>", CONVERSATION[4]["content"] + "<end_of_turn>"]


def test_a_template_that_writes_the_system_prompt_in_the_last_turn_only_gets_it_folded(tmp_path, tiny_model_dir):
    # Mistral-Nemo: [system, user, assistant] renders without the system prompt (it goes into the last
    # user message only), so the system prompt is folded into the first user message of every row
    from helpers import model_with_template
    from lorapipe.chat_encoder import fold_system

    tokenizer = load_tokenizer(model_with_template(tiny_model_dir, tmp_path / "nemo", "mistral-nemo"))
    ids, labels = tokenize_chat(CONVERSATION, tokenizer)
    rendered = tokenizer.decode(ids)
    assert rendered == tokenizer.apply_chat_template(fold_system(CONVERSATION), tokenize=False)
    assert rendered.count("Answer with JSON only.\n\nPlay some jazz[/INST]") == 1
    decoded = [tokenizer.decode(span) for span in _spans(ids, labels)]
    eos = tokenizer.eos_token
    assert decoded == [" " + CONVERSATION[2]["content"] + eos, " " + CONVERSATION[4]["content"] + eos]
