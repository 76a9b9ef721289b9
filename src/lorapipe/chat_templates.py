"""Derive an Ollama TEMPLATE (Go text/template) from a tokenizer's own chat template.

Probe conversations whose contents are unique markers are rendered through the tokenizer's Jinja
template. The text between the markers is what the template writes around each message: the head
before a conversation's first message (with or without a system prompt), and the junction between
two consecutive messages (system → user, user → assistant, assistant → user), and the tail after
the last user message (its end plus the generation prompt). The Go template writes the same pieces
around each message, so no table of models or styles is needed.

The derivation is checked before it is used: a longer probe conversation rendered from the pieces
must equal the tokenizer's own rendering. A template whose text depends on more than the previous
and the next message (turn numbers) fails that check and raises, instead of writing a wrong
Modelfile. Templates that reject or drop a system message in any conversation shape lorapipe renders
(Gemma 2 rejects it; Mistral-Nemo writes it into the last user message only, so a finished
conversation has none) get the system prompt folded into the first user message, as every stage
does (lorapipe.chat_encoder.folds_system).

Stops are the end-of-turn markers: the special tokens written between an answer and the next user
message, plus the tokenizer's end-of-sequence token. Every string written into the Modelfile is
checked against Ollama's parser (ollama/ollama parser/parser.go), which has no escape character: a
value that would not read back exactly raises ModelfileError.

The system-role rule and the chat encoder every stage uses are lorapipe.chat_encoder's; this module only
derives the Modelfile from the same template.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass

from lorapipe.chat_encoder import FOLD, Messages, _render, fold_system, folds_system, hf_codec


S, U1, A1, U2, A2, U3 = (
    "SYSTEMPROBE",
    "USERPROBEONE",
    "ASSISTANTPROBEONE",
    "USERPROBETWO",
    "ASSISTANTPROBETWO",
    "USERPROBETHREE",
)
_MARKER = re.compile(r"<\|[^|<>]+\|>|</?s>|<[a-z_]+>|\[/?INST\]")  # special-token-looking text
_FAMILIES = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("[INST]", "mistral"),
    ("<|user|>", "zephyr"),
)


# Template text the Modelfile cannot hold as it is (a quote before a line break would end TEMPLATE
# """…""" there; Ollama drops characters that are not printable): written as Go string literals.
_GO_UNSAFE = re.compile('"(?=[ \t]*[\r\n])|[^\n\t -~]')


def _go_literal(match: re.Match) -> str:
    char = match.group()
    if char != '"' and char.isprintable():
        return char
    escaped = '\\"' if char == '"' else (f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}")
    return '{{ "' + escaped + '" }}'


def _conversation(*contents: str, system: bool) -> Messages:
    roles = ["user", "assistant"]
    messages = [{"role": "system", "content": S}] if system else []
    return messages + [{"role": roles[i % 2], "content": c} for i, c in enumerate(contents)]


@dataclass(frozen=True)
class ChatTemplate:
    """The pieces a chat template writes around messages, and how to render them."""

    head_system: str  # before a system prompt that opens the conversation
    head_user: str  # before a user message that opens it (no system prompt)
    system_user: str  # between the system prompt and the first user message
    user_assistant: str
    assistant_user: str
    tail: str  # after the last user message: its end and the generation prompt
    folds_system: bool  # the template has no system role: the prompt joins the first user message
    stops: tuple[str, ...]
    family: str

    def render(self, messages: Messages) -> str:
        """What the Go template renders for `messages` (the same logic, in Python)."""
        out, previous = "", ""
        for m in messages:
            role = m["role"]
            if role == "system":
                out += self.head_system
            elif role == "user":
                out += {"": self.head_user, "system": self.system_user}.get(previous, self.assistant_user)
            else:
                out += self.user_assistant
            out += m["content"]
            previous = role
        return out + self.tail

    def go_template(self) -> str:
        """Ollama's TEMPLATE: the same pieces around `.Messages` (Go text/template). No action trims
        whitespace ({{- … -}}), since the pieces' own newlines are part of the format."""

        def text(piece: str) -> str:  # literal text; a "{{" in it would start an action
            return _GO_UNSAFE.sub(_go_literal, piece.replace("{{", '{{ "{{" }}'))

        return (
            '{{ $previous := "" }}{{ range .Messages }}'
            '{{ if eq .Role "system" }}'
            + text(self.head_system)
            + '{{ else if eq .Role "user" }}{{ if eq $previous "" }}'
            + text(self.head_user)
            + '{{ else if eq $previous "system" }}'
            + text(self.system_user)
            + "{{ else }}"
            + text(self.assistant_user)
            + "{{ end }}"
            + "{{ else }}"
            + text(self.user_assistant)
            + "{{ end }}"
            + "{{ .Content }}{{ $previous = .Role }}{{ end }}"
            + text(self.tail)
        )


def _split(text: str, markers: list[str]) -> list[str]:
    """The text before, between and after the markers, which must appear once each, in order."""
    pieces, rest = [], text
    for marker in markers:
        before, found, rest = rest.partition(marker)
        if not found or marker in rest:
            raise ValueError(f"the chat template does not write message {marker!r} once and in order")
        pieces.append(before)
    return pieces + [rest]


def derive_template(tokenizer) -> ChatTemplate:
    """The pieces of the tokenizer's chat template, verified on a longer conversation. A template
    without a system role (folds_system: the rule every stage follows) gets the system prompt folded
    into the first user message. Raises ValueError when the template cannot be expressed."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template, so no Modelfile TEMPLATE can be derived")
    codec = hf_codec(tokenizer)
    try:
        folds = folds_system(codec)
        head_user, user_assistant, assistant_user, tail = _split(
            _render(codec, _conversation(U1, A1, U2, system=False), True), [U1, A1, U2]
        )
        if folds:
            head_system, system_user = head_user, FOLD
        else:
            with_system = _render(codec, _conversation(U1, A1, U2, system=True), True)
            head_system, system_user, user_assistant_s, assistant_user_s, tail_s = _split(with_system, [S, U1, A1, U2])
            if (user_assistant_s, assistant_user_s, tail_s) != (user_assistant, assistant_user, tail):
                raise ValueError("the chat template writes messages differently when there is a system prompt")
    except Exception as exc:  # noqa: BLE001 - any template error means: cannot derive
        raise ValueError(
            f"cannot express this chat template as a Modelfile TEMPLATE ({exc}); write the TEMPLATE by hand"
        ) from None
    stops = tuple(
        dict.fromkeys([*_MARKER.findall(assistant_user), *([tokenizer.eos_token] if tokenizer.eos_token else [])])
    )
    family = next((name for marker, name in _FAMILIES if marker in user_assistant + assistant_user), "custom")
    derived = ChatTemplate(
        head_system, head_user, system_user, user_assistant, assistant_user, tail, folds, stops, family
    )
    for system in (True, False):
        probe = _conversation(U1, A1, U2, A2, U3, system=system)
        expected = _render(codec, fold_system(probe) if folds else probe, True)
        if derived.render(probe) != expected:
            raise ValueError(
                "cannot express this chat template as a Modelfile TEMPLATE: what it writes around a message "
                "depends on more than the messages before and after it (a longer conversation renders as\n"
                f"{expected!r}). Write the TEMPLATE by hand."
            )
    return derived


def strip_bos(text: str, bos: str | None) -> str:
    """llama.cpp adds the BOS token itself, so the Modelfile's template must not write it."""
    return text[len(bos) :] if bos and text.startswith(bos) else text


class ModelfileError(ValueError):
    """A value that an Ollama Modelfile cannot hold so that Ollama reads it back exactly."""


def _unquote(value: str) -> tuple[str, bool]:
    """Ollama's unquote: a complete triple- or double-quoted value, else the value as it is."""
    for quote in ('"""', '"'):
        if value.startswith(quote):
            if len(value) >= 2 * len(quote) and value.endswith(quote):
                return value[len(quote) : -len(quote)], True
            return "", False
    return value, True


def ollama_reads(written: str) -> str | None:
    """The value Ollama's Modelfile parser reads from a line ``COMMAND <written>`` (then a line break),
    following parser.go's value state: characters that are not printable are dropped, spaces, tabs and
    line breaks kept; at each line break the text so far, stripped, ends the value if it unquotes
    (a bare value, or one that opens and closes with ``"`` or ``\"\"\"``). None when the value ends
    before `written` does or never ends."""
    buffer: list[str] = []
    for position, char in enumerate(written + "\n"):
        if char in "\r\n":
            value, complete = _unquote("".join(buffer).strip(" \t\r\n"))
            if complete:
                return value if position == len(written) else None
            buffer.append(char)
        elif char in " \t" or char.isprintable():
            buffer.append(char)
    return None


def _unwritable(value: str) -> str:
    """Why no quoting of `value` reads back as `value` in an Ollama Modelfile."""
    dropped = sorted({c for c in value if not (c.isprintable() or c in " \t\r\n")})
    if dropped:
        names = ", ".join(f"U+{ord(c):04X} ({unicodedata.name(c, 'control character')})" for c in dropped[:5])
        return f"it contains {names}, which Ollama's parser drops (it keeps printable characters and whitespace)"
    for line, end in enumerate(m.start() for m in re.finditer("[\r\n]", value)):
        if _unquote(('"""' + value[:end]).strip(" \t\r\n"))[1]:  # where a \"\"\"-quoted value would end
            return (
                f'line {line + 1} ends with three double quotes (""") before a line break, where Ollama\'s parser '
                'ends a """-quoted value (the Modelfile has no escape character): reword that line so that it '
                'does not end with """ (e.g. add a period after them), or join it with the next line'
            )
    return "Ollama's parser reads none of its quoted forms back as it is"


def modelfile_line(command: str, value: str, forms: tuple[str, ...] = ('"""', '"', "")) -> str:
    """``COMMAND value`` (e.g. ``SYSTEM``, ``TEMPLATE``, ``PARAMETER stop``, ``MESSAGE user``) with the
    value in the first of `forms` (its quote: triple, double, none) that Ollama reads back as exactly
    `value` (ollama_reads). Raises ModelfileError, naming the value and what to change, when none does:
    a line ending with a quote, or a character that is not printable."""
    for quote in forms:
        if ollama_reads(quote + value + quote) == value:
            return f"{command} {quote}{value}{quote}"
    shown = value if len(value) <= 200 else value[:200] + "…"
    raise ModelfileError(f"{command} {shown!r} cannot be written into an Ollama Modelfile: {_unwritable(value)}")


def modelfile_text(from_path: str, tokenizer, system_prompt: str) -> str:
    """An Ollama Modelfile: FROM, the derived TEMPLATE, SYSTEM and the stop parameters, each written so
    that Ollama's parser reads it back exactly (modelfile_line). Raises ValueError when the template
    cannot be expressed (derive_template) and ModelfileError when a value cannot be written."""
    derived = derive_template(tokenizer)
    if "bos_token" in tokenizer.chat_template:  # the template writes BOS, which llama.cpp adds itself
        bos = tokenizer.bos_token
        derived = dataclasses.replace(
            derived, head_system=strip_bos(derived.head_system, bos), head_user=strip_bos(derived.head_user, bos)
        )
    lines = [
        f"# Generated by lorapipe from the tokenizer's chat template ({derived.family} style"
        + (", system prompt folded into the first user message" if derived.folds_system else "")
        + ")",
        modelfile_line("FROM", from_path, ("", '"')),
        modelfile_line("TEMPLATE", derived.go_template()),
        modelfile_line("SYSTEM", system_prompt),
    ]
    lines += [modelfile_line("PARAMETER stop", stop, ('"', '"""', "")) for stop in derived.stops if stop]
    return "\n".join(lines) + "\n"
