"""Derive an Ollama TEMPLATE (Go text/template) from a tokenizer's own chat template.

Probe conversations whose contents are unique markers are rendered through the tokenizer's Jinja
template. The text between the markers is what the template writes around each message: the head
before a conversation's first message (with or without a system prompt), and the junction between
two consecutive messages (system → user, user → assistant, assistant → user), and the tail after
the last user message (its end plus the generation prompt). The Go template writes the same pieces
around each message, so no table of models or styles is needed.

The derivation is checked before it is used: a longer probe conversation rendered from the pieces
must equal the tokenizer's own rendering. A template whose text depends on more than the previous
and the next message (turn numbers, the system prompt moved to the last turn) fails that check and
raises, instead of writing a wrong Modelfile. Templates that reject a system message (Gemma 2) get
the system prompt folded into the first user message, as their model cards advise.

Stops are the end-of-turn markers: the special tokens written between an answer and the next user
message, plus the tokenizer's end-of-sequence token.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

Messages = list[dict[str, str]]

S, U1, A1, U2, A2, U3 = (
    "SYSTEMPROBE",
    "USERPROBEONE",
    "ASSISTANTPROBEONE",
    "USERPROBETWO",
    "ASSISTANTPROBETWO",
    "USERPROBETHREE",
)
FOLD = "\n\n"  # between a folded system prompt and the first user message
_MARKER = re.compile(r"<\|[^|<>]+\|>|</?s>|<[a-z_]+>|\[/?INST\]")  # special-token-looking text
_FAMILIES = (
    ("<|im_start|>", "chatml"),
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("[INST]", "mistral"),
    ("<|user|>", "zephyr"),
)


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
            return piece.replace("{{", '{{ "{{" }}')

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


def _render(tokenizer, messages: Messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _split(text: str, markers: list[str]) -> list[str]:
    """The text before, between and after the markers, which must appear once each, in order."""
    pieces, rest = [], text
    for marker in markers:
        before, found, rest = rest.partition(marker)
        if not found or marker in rest:
            raise ValueError(f"the chat template does not write message {marker!r} once and in order")
        pieces.append(before)
    return pieces + [rest]


def fold_system(messages: Messages) -> Messages:
    """The system prompt moved into the first user message (for templates without a system role)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = messages[0]["content"] + FOLD + rest[0]["content"]
    return rest


def derive_template(tokenizer) -> ChatTemplate:
    """The pieces of the tokenizer's chat template, verified on a longer conversation."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template, so no Modelfile TEMPLATE can be derived")
    try:
        with_system = _render(tokenizer, _conversation(U1, A1, U2, system=True))
        folds = False
    except Exception:  # noqa: BLE001 - a template may refuse a system message (Gemma 2 raises)
        folds = True
    try:
        head_user, user_assistant, assistant_user, tail = _split(
            _render(tokenizer, _conversation(U1, A1, U2, system=False)), [U1, A1, U2]
        )
        if folds:
            head_system, system_user = head_user, FOLD
        else:
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
        expected = _render(tokenizer, fold_system(probe) if folds else probe)
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


def modelfile_text(from_path: str, tokenizer, system_prompt: str) -> str:
    """An Ollama Modelfile: FROM, the derived TEMPLATE, SYSTEM and the stop parameters."""
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
        f"FROM {from_path}",
        f'TEMPLATE """{derived.go_template()}"""',
        f'SYSTEM """{system_prompt}"""',
    ]
    lines += [f'PARAMETER stop "{stop}"' for stop in derived.stops]
    return "\n".join(lines) + "\n"
