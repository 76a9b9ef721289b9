"""The Modelfile TEMPLATE against the tokenizer's own chat template, rendered by Go's text/template.

Run: .venv/bin/pytest tests/test_chat_templates.py   (needs Go: `make test` installs Debian's golang-go)

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
from lorapipe.chat_templates import derive_template, fold_system, modelfile_text, strip_bos

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
SUPPORTED = ["smollm2", "qwen2.5", "llama3", "llama3.2", "gemma2", "gemma3", "mistral", "zephyr"]

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
        rendered = tokenizer.apply_chat_template(reference, tokenize=False, add_generation_prompt=True)
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


def test_a_template_that_moves_the_system_prompt_to_the_last_turn_is_refused(bundled_tokenizer_dir):
    with pytest.raises(ValueError, match="cannot express this chat template as a Modelfile TEMPLATE"):
        modelfile_text("./m.gguf", _tokenizer(bundled_tokenizer_dir, "mistral-nemo"), SYSTEM)


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
