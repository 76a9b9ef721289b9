"""Recognise a tokenizer's chat template by what it renders, and write the matching Ollama template.

Probe conversations are rendered through the tokenizer's own Jinja template; each known style
renders the same probes in Python, and a style is chosen only when its rendering equals the
tokenizer's exactly. Each style carries the Go template (Ollama's engine) that renders the same
text, and its end-of-turn stop strings. An unknown style raises instead of writing a wrong Modelfile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatStyle:
    name: str
    render: Callable[[Messages], str]  # conversation + generation prompt, without BOS
    go_template: str
    stops: tuple[str, ...]


def _chatml(messages: Messages) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _llama3(messages: Messages) -> str:
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>"
                    for m in messages)
    return turns + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _zephyr(messages: Messages) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages) + "<|assistant|>\n"


def _fold_system(messages: Messages) -> Messages:
    """Styles with no system role put the system prompt at the top of the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    return rest


def _gemma(messages: Messages) -> str:
    turns = "".join(
        f"<start_of_turn>{'model' if m['role'] == 'assistant' else 'user'}\n{m['content'].strip()}<end_of_turn>\n"
        for m in _fold_system(messages))
    return turns + "<start_of_turn>model\n"


def _mistral(messages: Messages) -> str:
    out = ""
    for m in _fold_system(messages):
        out += f"[INST] {m['content']} [/INST]" if m["role"] == "user" else f"{m['content']}</s>"
    return out


_SYSTEM_FOLD_GO = (
    '{{- $system := "" }}{{- range .Messages }}{{- if eq .Role "system" }}{{- $system = .Content }}'
)

STYLES = (
    ChatStyle("chatml", _chatml,
              "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n", ("<|im_start|>", "<|im_end|>")),
    ChatStyle("llama3", _llama3,
              "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
              "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
              ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    ChatStyle("zephyr", _zephyr,
              "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n",
              ("</s>", "<|user|>")),
    ChatStyle("gemma", _gemma,
              _SYSTEM_FOLD_GO + '{{- else if eq .Role "user" }}<start_of_turn>user\n'
              "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n"
              "{{- else }}\n<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{- end }}{{ end }}\n"
              "<start_of_turn>model\n", ("<start_of_turn>", "<end_of_turn>")),
    ChatStyle("mistral", _mistral,
              _SYSTEM_FOLD_GO + '{{- else if eq .Role "user" }}[INST] '
              "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ .Content }} [/INST]"
              "{{- else }}{{ .Content }}</s>{{- end }}{{ end }}", ("[INST]", "[/INST]", "</s>")),
)

PROBES: tuple[Messages, ...] = (
    [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "USER-PROBE-1"}],
    [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "USER-PROBE-1"},
     {"role": "assistant", "content": "ASSISTANT-PROBE-1"}, {"role": "user", "content": "USER-PROBE-2"}],
)


def _render(tokenizer, messages: Messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _same(style_text: str, template_text: str, bos: str | None) -> bool:
    """Equal, or equal but for a leading BOS that the template writes and llama.cpp adds itself."""
    return template_text == style_text or bool(bos) and template_text == bos + style_text


def detect_style(tokenizer) -> ChatStyle:
    """The known style whose rendering of every probe equals the tokenizer's own template."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template, so no Modelfile TEMPLATE can be derived")
    rendered = []
    for probe in PROBES:
        try:
            rendered.append(_render(tokenizer, probe))
        except Exception as exc:  # noqa: BLE001 - a template may reject a probe (e.g. no system role)
            raise ValueError(f"the chat template cannot render a system + user conversation: {exc}") from None
    for style in STYLES:
        if all(_same(style.render(probe), text, tokenizer.bos_token) for probe, text in zip(PROBES, rendered)):
            return style
    raise ValueError(
        "unrecognised chat template style (known: " + ", ".join(s.name for s in STYLES) + "). "
        f"It renders a probe as:\n{rendered[-1]!r}\nWrite the Modelfile TEMPLATE by hand."
    )


def modelfile_text(from_path: str, tokenizer, system_prompt: str) -> str:
    style = detect_style(tokenizer)
    stops = dict.fromkeys([*style.stops, *([tokenizer.eos_token] if tokenizer.eos_token else [])])
    lines = [f"# Generated by lorapipe; chat template style: {style.name}",
             f"FROM {from_path}",
             f'TEMPLATE """{style.go_template}"""',
             f'SYSTEM """{system_prompt}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    return "\n".join(lines) + "\n"
