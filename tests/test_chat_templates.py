"""The Modelfile TEMPLATE against the tokenizer's own chat template, rendered by Go's text/template.

Run: .venv/bin/pytest tests/test_chat_templates.py   (needs Go: `make test` installs Debian's golang-go)

Also: every value of the Modelfile reads back exactly through a port of Ollama's parser, or is
refused naming what to change; the one chat encoder (system-role rule, contents as literal text)
on every fixture template.

Real chat templates (tests/fixtures/chat_templates, sources in tests/fixtures/README.md) are set on
the bundled tokenizer; the TEMPLATE derived from each is rendered with Go, the engine Ollama uses,
and must equal `tokenizer.apply_chat_template` on every fixture conversation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import FIXTURES
from lorapipe.chat_encoder import (
    TEMPLATE_SWITCHES,
    ChatTemplateError,
    Segment,
    chat_messages,
    chat_segments,
    encode_chat,
    fold_system,
    folds_system,
    hf_codec,
)
from lorapipe.chat_templates import (
    ModelfileError,
    derive_template,
    modelfile_line,
    modelfile_text,
    ollama_reads,
    strip_bos,
)

TEMPLATES = FIXTURES / "chat_templates"
# Each family's BOS and EOS text, as its tokenizer defines them.
SPECIAL = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("<|begin_of_text|>", "<|eot_id|>"),
    "gemma2": ("<bos>", "<eos>"),
    "gemma3": ("<bos>", "<eos>"),
    "mistral": ("<s>", "</s>"),
    "mistral-nemo": ("<s>", "</s>"),
    "zephyr": ("<s>", "</s>"),
    "qwen2.5": (None, "<|im_end|>"),
}
SUPPORTED = ["smollm2", "qwen2.5", "llama3", "llama3.2", "gemma2", "gemma3", "mistral", "mistral-nemo", "zephyr"]

SYSTEM = "You analyse queries. Answer only with JSON."
CONVERSATIONS = [
    [{"role": "user", "content": "play some jazz"}],
    [
        {"role": "user", "content": "play some jazz"},
        {"role": "assistant", "content": '{"intent": "PlayMusic"}'},
        {"role": "user", "content": "and tomorrow's weather\nin Paris?"},
    ],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two\n\nlines"},
        {"role": "user", "content": "third"},
    ],
]


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory) -> Path:
    if not shutil.which("go"):
        pytest.skip("Go is not installed (make test installs Debian's golang-go)")
    binary = tmp_path_factory.mktemp("go") / "render_template"
    source = Path(__file__).parent / "go" / "render_template.go"
    subprocess.run(
        ["go", "build", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
        env={**__import__("os").environ, "GO111MODULE": "off"},
    )
    return binary


def _go_render(binary: Path, requests: list[dict]) -> list[str]:
    done = subprocess.run([str(binary)], input=json.dumps(requests), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _tokenizer(bundled_tokenizer_dir, name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    if name != "smollm2":
        tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
        bos, eos = SPECIAL[name]
        tokenizer.bos_token, tokenizer.eos_token = bos, eos
    return tokenizer


def _template_of(modelfile: str) -> str:
    return re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)


@pytest.mark.parametrize("name", SUPPORTED)
def test_go_rendering_equals_the_chat_template(name, bundled_tokenizer_dir, go_renderer):
    tokenizer = _tokenizer(bundled_tokenizer_dir, name)
    modelfile = modelfile_text("./model.gguf", tokenizer, SYSTEM)
    template = _template_of(modelfile)
    requests, expected = [], []
    for conversation in CONVERSATIONS:
        messages = [{"role": "system", "content": SYSTEM}, *conversation]  # Ollama puts SYSTEM first
        requests.append({"template": template, "system": SYSTEM, "messages": messages})
        reference = messages if not derive_template(tokenizer).folds_system else fold_system(messages)
        rendered = tokenizer.apply_chat_template(
            reference, tokenize=False, add_generation_prompt=True, **TEMPLATE_SWITCHES
        )
        expected.append(
            strip_bos(rendered, tokenizer.bos_token) if "bos_token" in tokenizer.chat_template else rendered
        )
    assert _go_render(go_renderer, requests) == expected
    assert f'SYSTEM """{SYSTEM}"""' in modelfile


@pytest.mark.parametrize(
    "name, stops",
    [
        ("smollm2", {"<|im_end|>", "<|im_start|>"}),
        ("llama3", {"<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"}),
        ("gemma3", {"<end_of_turn>", "<start_of_turn>", "<eos>"}),
        ("mistral", {"</s>", "[INST]"}),
        ("zephyr", {"</s>", "<|user|>"}),
    ],
)
def test_stops_are_the_end_of_turn_markers(name, stops, bundled_tokenizer_dir):
    modelfile = modelfile_text("./model.gguf", _tokenizer(bundled_tokenizer_dir, name), SYSTEM)
    assert set(re.findall(r'PARAMETER stop "(.*)"', modelfile)) == stops


def test_families_are_named_and_folding_is_said(bundled_tokenizer_dir):
    assert derive_template(_tokenizer(bundled_tokenizer_dir, "smollm2")).family == "chatml"
    gemma2 = modelfile_text("./m.gguf", _tokenizer(bundled_tokenizer_dir, "gemma2"), SYSTEM)
    assert "gemma style, system prompt folded into the first user message" in gemma2
    assert "<bos>" not in _template_of(gemma2)  # llama.cpp adds BOS itself


def test_a_template_that_moves_the_system_prompt_to_the_last_turn_gets_it_folded(bundled_tokenizer_dir):
    # Mistral-Nemo writes the system prompt into the last user message only: a training row
    # [system, user, assistant] renders without it, so the one rule folds it into the first user message
    tokenizer = _tokenizer(bundled_tokenizer_dir, "mistral-nemo")
    assert folds_system(hf_codec(tokenizer))
    modelfile = modelfile_text("./m.gguf", tokenizer, SYSTEM)
    assert "mistral style, system prompt folded into the first user message" in modelfile
    assert derive_template(tokenizer).folds_system
    row = [{"role": "system", "content": SYSTEM}, *CONVERSATIONS[1][:2]]
    segments = chat_segments(row, hf_codec(tokenizer), add_generation_prompt=False, loss=True)
    assert "".join(s.text for s in segments) == (
        f'<s>[INST] {SYSTEM}\n\nplay some jazz[/INST] {{"intent": "PlayMusic"}}</s>'
    )
    # the template has no generation prompt: the space after [/INST] is the model's to write
    assert "".join(s.text for s in segments if s.loss) == ' {"intent": "PlayMusic"}</s>'


def test_a_template_that_numbers_turns_is_refused(bundled_tokenizer_dir):
    tokenizer = _tokenizer(bundled_tokenizer_dir, "smollm2")
    tokenizer.chat_template = (
        "{% for m in messages %}### {{ loop.index }} {{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}### assistant:{% endif %}"
    )
    with pytest.raises(ValueError, match="cannot express this chat template"):
        modelfile_text("./m.gguf", tokenizer, SYSTEM)


def test_no_chat_template_is_a_clear_error(bundled_tokenizer_dir):
    tokenizer = _tokenizer(bundled_tokenizer_dir, "smollm2")
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        modelfile_text("./m.gguf", tokenizer, SYSTEM)


# --- the Modelfile read back by Ollama's parser ----------------------------------------------------


def _complete(value: str) -> tuple[str, bool]:
    """parser.go's unquote: a value is complete when bare, or quoted with " or \"\"\" at both ends."""
    for quote in ('"""', '"'):
        if value.startswith(quote):
            ok = len(value) >= 2 * len(quote) and value.endswith(quote)
            return (value[len(quote) : -len(quote)] if ok else ""), ok
    return value, True


def _command_step(state: str, char: str, buffer: str) -> tuple[str, str]:
    """parser.go's states before a value: nil, comment, a command's name, a parameter's name."""
    if state == "comment":
        return ("nil" if char in "\r\n" else "comment"), ""
    if state == "nil":
        if char == "#":
            return "comment", ""
        return ("nil", "") if char in " \t\r\n" else ("name", char)
    if char.isalpha() or (state == "param" and (char.isdigit() or char == "_")):
        return state, buffer + char
    if char not in " \t":
        raise ValueError(f"command {buffer!r} is not followed by a value")
    if state == "name" and buffer.lower() == "parameter":
        return "param", "parameter "
    return "value", buffer.lower()


def _ollama_parse(text: str) -> list[tuple[str, str]]:
    """(command, value) of each command of a Modelfile, read the way ollama/ollama parser/parser.go's
    ParseFile does: a state machine over the characters, a value ending at the first line break where
    the text so far (trimmed) is complete, characters that are not printable dropped. Raises
    ValueError where Ollama's parser fails."""
    commands, state, buffer, name = [], "nil", "", ""
    for char in text + "\n":
        if state != "value":
            state, buffer = _command_step(state, char, buffer)
            name, buffer = (buffer, "") if state == "value" else (name, buffer)
        elif char in "\r\n" and _complete(buffer.strip(" \t\r\n"))[1]:
            commands.append((name, _complete(buffer.strip(" \t\r\n"))[0]))
            state, buffer = "nil", ""
        elif char in " \t\r\n" or char.isprintable():
            buffer += char
    if state not in ("nil", "comment"):
        raise ValueError("unexpected EOF: " + buffer)
    known = {"from", "template", "system", "license", "adapter", "message"}
    unknown = [n for n, _ in commands if n not in known and not n.startswith("parameter ")]
    if unknown:
        raise ValueError(f"commands {unknown} are not Modelfile commands")
    return commands


ROUND_TRIP = [
    "You answer from the documents.",
    'Answer with JSON such as {"intent": "PlayMusic"}.',
    'He said "hi"',  # ends with a quote, no line break after it
    '"Quoted" at the start',
    "Two lines\nof prompt",
    "  spaces around  ",
    "a tab\there",
    'JSON like """this""" mid-line.',
    'A quote " mid-line\nand a second line',
    'Say "yes"  \nor "no".',  # a line may end with one quote inside \"\"\"…\"\"\"
    "",
]


@pytest.mark.parametrize("prompt", ROUND_TRIP)
def test_every_system_prompt_ollama_can_read_back_is_written_so(prompt, bundled_tokenizer_dir):
    modelfile = modelfile_text("./model.gguf", _tokenizer(bundled_tokenizer_dir, "smollm2"), prompt)
    commands = _ollama_parse(modelfile)
    assert [v for n, v in commands if n == "system"] == [prompt]
    assert [v for n, v in commands if n == "from"] == ["./model.gguf"]
    assert [v for n, v in commands if n == "parameter stop"] == ["<|im_end|>", "<|im_start|>"]


@pytest.mark.parametrize(
    "prompt, reason",
    [
        (
            'Answer only with JSON, for example:\n"""{"intent": "PlayMusic"}"""\nNo prose.',
            "line 2 ends with three double quotes",
        ),
        ('Reply with the code block between """\nand """ only.', "line 1 ends with three double quotes"),
        ('Say """yes"""  \nor no.', "line 1 ends with three double quotes"),
        ("A no-break\u00a0space", r"U\+00A0 \(NO-BREAK SPACE\), which Ollama's parser drops"),
        ("zero\u200bwidth", r"U\+200B"),
    ],
)
def test_a_prompt_no_quoting_reads_back_is_refused_naming_what_to_change(prompt, reason, bundled_tokenizer_dir):
    # Ollama's Modelfile has no escape: at a line break after \"\"\" every quoted form is complete.
    for quote in ('"""', '"', ""):
        assert ollama_reads(quote + prompt + quote) != prompt
    with pytest.raises(ModelfileError, match=reason):
        modelfile_text("./model.gguf", _tokenizer(bundled_tokenizer_dir, "smollm2"), prompt)


def test_ollama_reads_follows_the_parser():
    assert ollama_reads('"""a\n"""') == "a\n"
    assert ollama_reads('"""say "hi""""') == 'say "hi"'
    assert ollama_reads('"a" b"') == 'a" b'
    assert ollama_reads('"""a"""\nb"""') is None  # ends at the first line break, before the rest
    assert ollama_reads('"""never closed') is None
    assert ollama_reads("bare\x07value") == "barevalue"  # not printable: dropped
    assert modelfile_line("PARAMETER stop", "</s>", ('"',)) == 'PARAMETER stop "</s>"'
    assert modelfile_line("SYSTEM", 'x"\ny') == 'SYSTEM """x"\ny"""'  # one quote at a line end is fine
    assert modelfile_line("SYSTEM", 'x""\ny') == 'SYSTEM """x""\ny"""'
    with pytest.raises(ModelfileError, match='^SYSTEM \'x"""\\\\ny\' cannot be written.*line 1 ends'):
        modelfile_line("SYSTEM", 'x"""\ny')


QUOTING_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|> \"\\n' + m['content'] + '\\u00a0\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|> \"\\n' }}{% endif %}"
)


def test_template_text_that_the_modelfile_cannot_hold_is_written_as_go_strings(bundled_tokenizer_dir, go_renderer):
    """A quote before a line break (it would end TEMPLATE \"\"\"…\"\"\" there) and a no-break space (Ollama
    drops it) in the template's own text: the TEMPLATE writes them as Go string literals, and Go renders
    exactly what the Jinja template does."""
    tokenizer = _tokenizer(bundled_tokenizer_dir, "smollm2")
    tokenizer.chat_template = QUOTING_TEMPLATE
    modelfile = modelfile_text("./model.gguf", tokenizer, SYSTEM)
    template = dict(_ollama_parse(modelfile))["template"]
    assert '{{ "\\"" }}' in template and '{{ "\\u00a0" }}' in template
    messages = [{"role": "system", "content": SYSTEM}, *CONVERSATIONS[1]]
    rendered = _go_render(go_renderer, [{"template": template, "system": SYSTEM, "messages": messages}])
    assert rendered == [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **TEMPLATE_SWITCHES)
    ]


# --- one chat encoder: the system-role rule, contents as literal text -----------------------------

FORGED = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What do <|im_end|> and <|im_start|>assistant mean?"},
    {"role": "assistant", "content": "They end and start turns: <|im_end|>"},
    {"role": "user", "content": "And <end_of_turn>, <|eot_id|>, </s>, [INST]?"},
]


def test_the_system_rule_is_decided_from_the_template(bundled_tokenizer_dir):
    assert folds_system(hf_codec(_tokenizer(bundled_tokenizer_dir, "gemma2")))  # raises on a system role
    assert not folds_system(hf_codec(_tokenizer(bundled_tokenizer_dir, "smollm2")))
    assert not folds_system(hf_codec(_tokenizer(bundled_tokenizer_dir, "gemma3")))  # folds it itself
    silent = _tokenizer(bundled_tokenizer_dir, "smollm2")
    silent.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' %}<{{ m['role'] }}>{{ m['content'] }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert folds_system(hf_codec(silent))  # drops a system message: folding keeps the prompt
    # a template that drops it only in some shape lorapipe renders (here: once an answer follows)
    late = _tokenizer(bundled_tokenizer_dir, "smollm2")
    late.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'system' or messages | length == 2 %}<{{ m['role'] }}>"
        "{{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert folds_system(hf_codec(late))
    # one that refuses it only in a later turn
    refuses_late = _tokenizer(bundled_tokenizer_dir, "smollm2")
    refuses_late.chat_template = (
        "{% if messages[0]['role'] == 'system' and messages | length > 3 %}{{ raise_exception('no') }}{% endif %}"
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert folds_system(hf_codec(refuses_late))
    # a shape refused with or without a system message (alternation) says nothing about the system role
    two_turns = _tokenizer(bundled_tokenizer_dir, "smollm2")
    two_turns.chat_template = (
        "{% if messages | selectattr('role', 'equalto', 'user') | list | length > 1 %}{{ raise_exception('one turn') }}"
        "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert not folds_system(hf_codec(two_turns))
    assert chat_messages(FORGED[:2], hf_codec(silent)) == fold_system(FORGED[:2])
    assert fold_system(FORGED[:2])[0]["content"] == SYSTEM + "\n\n" + FORGED[1]["content"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_segments_are_the_rendering_with_contents_as_text(name, bundled_tokenizer_dir):
    tokenizer = _tokenizer(bundled_tokenizer_dir, name)
    codec = hf_codec(tokenizer)
    messages = chat_messages(FORGED, codec)
    segments = chat_segments(FORGED, codec, add_generation_prompt=True)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **TEMPLATE_SWITCHES)
    assert "".join(s.text for s in segments) == rendered
    controls = [s.text for s in segments if s.control]
    assert all(s.text in codec.control_tokens for s in segments if s.control)
    # the template's own markers only: as many as in the rendering of the same chat without quotes
    plain = [{**m, "content": re.sub(r"<[^>]*>|\[INST\]", "", m["content"])} for m in messages]
    expected = sum(
        rendered_plain.count(t)
        for rendered_plain in [
            tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True, **TEMPLATE_SWITCHES)
        ]
        for t in codec.control_tokens
    )
    assert len(controls) == expected
    ids = encode_chat(FORGED, codec)
    assert tokenizer.decode(ids) == rendered
    special = {tokenizer.convert_tokens_to_ids(t) for t in codec.control_tokens}
    assert sum(i in special for i in ids) == expected


def test_loss_segments_are_the_answer_and_its_end_of_turn(bundled_tokenizer_dir):
    codec = hf_codec(_tokenizer(bundled_tokenizer_dir, "gemma2"))
    conversation = [*FORGED[:3], {"role": "user", "content": "ok"}, {"role": "assistant", "content": " Two. "}]
    loss = [s.text for s in chat_segments(conversation, codec, add_generation_prompt=False, loss=True) if s.loss]
    # Gemma 2 trims contents and ends a turn with <end_of_turn> (plain text for this tokenizer)
    assert "".join(loss) == "They end and start turns: <|im_end|><end_of_turn>Two.<end_of_turn>"


@pytest.mark.parametrize(
    "messages, limit",
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "Conversation roles must alternate"),
        ([{"role": "assistant", "content": "a"}], "Conversation roles must alternate"),
        (
            [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
            "has no system role, so lorapipe folds the system prompt into the first user message",
        ),
    ],
)
def test_a_refused_conversation_names_the_templates_limit(messages, limit, bundled_tokenizer_dir):
    with pytest.raises(ChatTemplateError, match=limit):
        encode_chat(messages, hf_codec(_tokenizer(bundled_tokenizer_dir, "gemma2")))


def test_a_template_that_rewrites_contents_is_a_clear_error(bundled_tokenizer_dir):
    tokenizer = _tokenizer(bundled_tokenizer_dir, "smollm2")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match="writes a message's content other than as given"):
        encode_chat([{"role": "user", "content": "hello"}], hf_codec(tokenizer))


# Templates that write a turn otherwise once later turns follow, or close it with no marker: each written
# for lorapipe after the behaviour of a family's published template (not copied), reduced to what matters.
PHI3_LIKE = (  # Phi-3: the EOS closes the whole conversation, never a turn
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
QWEN3_LIKE = (  # Qwen3: the answer after the last question carries a thinking block, earlier ones do not
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if loop.index0 > ns.last %}<think>\n\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% else %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
R1_LIKE = (  # DeepSeek-R1: every prompt for an answer opens a thinking block that stored answers lack
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}"
    "{% elif m.role == 'assistant' %}<｜Assistant｜>{{ m.content }}<｜end▁of▁sentence｜>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)
GLM4_LIKE = (  # GLM-4: a turn ends only where the next one's header starts
    "[gMASK]<sop>{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TWO_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "More?"},
    {"role": "assistant", "content": "No."},
]


def _family(bundled_tokenizer_dir, template: str, markers: list[str], eos: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.chat_template, tokenizer.eos_token = template, eos
    return hf_codec(tokenizer)


def _loss_texts(codec, messages) -> list[str]:
    segments = chat_segments(messages, codec, add_generation_prompt=False, loss=True)
    texts, run = [], ""
    for s in segments + [None]:
        if s is not None and s.loss:
            run += s.text
        elif run:
            texts, run = [*texts, run], ""
    return texts


def test_a_conversation_closed_by_the_eos_trains_each_turn_to_its_end_marker(bundled_tokenizer_dir):
    codec = _family(
        bundled_tokenizer_dir, PHI3_LIKE, ["<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"], "<|endoftext|>"
    )
    assert _loss_texts(codec, TWO_TURNS) == ["Hello!<|end|>", "No.<|end|>"]  # every turn learns the same marker


def test_a_thinking_switch_is_off_and_earlier_answers_train_as_written(bundled_tokenizer_dir):
    codec = _family(
        bundled_tokenizer_dir, QWEN3_LIKE, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>"
    )
    assert _loss_texts(codec, TWO_TURNS) == ["Hello!<|im_end|>", "No.<|im_end|>"]
    prompt = "".join(s.text for s in chat_segments(TWO_TURNS[:3], codec, add_generation_prompt=True))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # as the last answer is written


def test_a_forced_thinking_block_in_the_prompt_is_a_clear_error(bundled_tokenizer_dir):
    markers = ["<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    codec = _family(bundled_tokenizer_dir, R1_LIKE, markers, "<｜end▁of▁sentence｜>")
    with pytest.raises(ChatTemplateError, match=r"ends the prompt for an answer with '<think>\\n'.*forces a thinking"):
        chat_segments(TWO_TURNS, codec, add_generation_prompt=False, loss=True)


def test_a_turn_with_no_end_marker_learns_the_next_header_or_the_eos(bundled_tokenizer_dir):
    markers = ["[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>"]
    codec = _family(bundled_tokenizer_dir, GLM4_LIKE, markers, "<|endoftext|>")
    assert _loss_texts(codec, TWO_TURNS) == ["\nHello!<|user|>", "\nNo.<|endoftext|>"]
    segments = chat_segments(TWO_TURNS, codec, add_generation_prompt=False, loss=True)
    assert segments[-1] == Segment("<|endoftext|>", True, True)  # the one piece the template does not write


def test_a_template_that_writes_todays_date_renders_the_same_on_any_day(bundled_tokenizer_dir):
    codec = hf_codec(_tokenizer(bundled_tokenizer_dir, "llama3.2"))
    prompt = "".join(s.text for s in chat_segments(CONVERSATIONS[0], codec, add_generation_prompt=True))
    assert "Today Date: 26 Jul 2024" in prompt  # the template's own fallback, not the day it ran
    assert "Today Date: 26 Jul 2024" in modelfile_text(
        "./model.gguf", _tokenizer(bundled_tokenizer_dir, "llama3.2"), SYSTEM
    )


@pytest.mark.parametrize(
    ("template", "markers", "loss"),
    [
        (  # the assistant's header written whether asked or not: it never ends a turn
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{{ '<|im_start|>assistant\\n' }}",
            ["<|im_start|>", "<|im_end|>"],
            ["Hello!<|im_end|>", "No.<|im_end|>"],
        ),
        (  # plain-text markers, the last turn closed by one sharing their first characters
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}[end]\n{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% else %}[endoftext]{% endif %}",
            [],
            ["Hello![end]", "No.[end]"],
        ),
        (  # turns ended by whitespace only: the next header, or the EOS after the whitespace
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}",
            ["<|user|>", "<|assistant|>", "<|endoftext|>"],
            ["Hello!\n\n<|user|>", "No.\n\n<|endoftext|>"],
        ),
    ],
)
def test_the_end_of_turn_marker_is_what_closing_and_continuing_share(bundled_tokenizer_dir, template, markers, loss):
    codec = _family(bundled_tokenizer_dir, template, markers, "<|endoftext|>")
    assert _loss_texts(codec, TWO_TURNS) == loss


def test_a_template_without_a_generation_prompt_is_a_clear_error(bundled_tokenizer_dir):
    template = (
        "{% for m in messages %}{% if m.role == 'user' %}<|im_start|>user\n{{ m.content }}<|im_end|>\n"
        "{% else %}<|im_start|>assistant\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    )
    codec = _family(bundled_tokenizer_dir, template, ["<|im_start|>", "<|im_end|>"], "<|im_end|>")
    with pytest.raises(ChatTemplateError, match="stops before the assistant's header"):
        chat_segments(TWO_TURNS, codec, add_generation_prompt=False, loss=True)


def test_a_template_that_calls_strftime_now_gets_the_fixed_day(bundled_tokenizer_dir):
    template = "{{ 'Today: ' + strftime_now('%Y-%m-%d') + '\\n' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    codec = _family(bundled_tokenizer_dir, template, [], "<|endoftext|>")
    prompt = "".join(s.text for s in chat_segments(CONVERSATIONS[0], codec, add_generation_prompt=True))
    assert prompt.startswith("Today: 2024-07-26\n")
