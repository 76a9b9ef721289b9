"""The one chat encoder every stage uses: dataset rows and loss masks, evaluation prompts, serve.

`encode_chat` / `chat_segments` work over a ChatCodec (`hf_codec` for a transformers tokenizer,
`llama_codec` for a llama_cpp.Llama, whose GGUF carries the same Jinja template). One rule holds
everywhere a chat is rendered: a template that refuses or drops a leading system message gets the
system prompt folded into the first user message (`chat_messages`), and any other refusal (strict
user/assistant alternation, unknown roles) raises ChatTemplateError naming the template's limit.
Message contents are always tokenized as literal text: only control tokens that the template itself
writes are encoded as control tokens, so `<|im_end|>` quoted in a question stays text; so does the
text of an added token that is not special (DeepSeek-R1-Distill's `<｜Assistant｜>`), which tokenizers
and llama.cpp otherwise match in any text (literal_ids, _llama_literal).

The Modelfile's TEMPLATE, derived from the same chat template, is lorapipe.chat_templates' (a module
of its own, so that an edit to how Modelfiles are written reruns no training).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

Messages = list[dict[str, str]]
Render = Callable[[Messages, bool], str]  # (messages, add_generation_prompt) → the template's text
Encode = Callable[[str, bool], list[int]]  # (text, control) → token ids; control False: literal text

FOLD = "\n\n"  # between a folded system prompt and the first user message
# Variables every rendering passes to a template (templates that do not read them ignore them):
# lorapipe trains, prompts and exports answers without a thinking phase, so a template with a switch
# for one (Qwen3's enable_thinking) renders with it off everywhere: its generation prompt then holds
# the empty thinking block that its rendering of a stored answer holds too. A template that writes
# today's date (Llama 3.1-3.3: "Today Date: …" from strftime_now unless date_string is given; Mistral
# Small 3.1 and SmolLM3 call strftime_now) gets one fixed day, Llama 3's own fallback (26 Jul 2024), so
# that a row renders, trains and is served the same on any day.
FIXED_DAY = datetime.date(2024, 7, 26)
TEMPLATE_SWITCHES = {"enable_thinking": False, "date_string": FIXED_DAY.strftime("%d %b %Y")}
_STRFTIME_CALL = re.compile(r"""strftime_now\(\s*(['"])(.*?)\1\s*\)""")


def fixed_day_template(template: str) -> str:
    """`template` with a ``strftime_now`` macro in front that writes `FIXED_DAY` in each format the
    template asks for (transformers' global of that name writes today, and a callable cannot be passed
    as a template variable); unchanged when the template does not call it."""
    if "strftime_now" not in template:
        return template
    table = {m.group(2): FIXED_DAY.strftime(m.group(2)) for m in _STRFTIME_CALL.finditer(template)}
    return (
        "{%- macro strftime_now(format) -%}{{ "
        + json.dumps(table)
        + ".get(format, '"
        + FIXED_DAY.isoformat()
        + "') }}{%- endmacro %}"
        + template
    )


class ChatTemplateError(ValueError):
    """A chat template refuses a conversation (its own raise_exception: no system role, roles that must
    alternate, …) or writes contents in a way lorapipe cannot follow; the message names the limit."""


@dataclass(frozen=True)
class ChatCodec:
    """How one model writes and tokenizes conversations: its Jinja chat template and its tokenizer.

    `render(messages, add_generation_prompt)` is the template's text (raising what the template
    raises); `encode(text, control)` the token ids of `text`, with control-token text matched as
    control tokens when `control` is True and read as plain characters when it is False;
    `control_tokens` the texts of the tokenizer's control (special) tokens; `key` identifies the
    template and its special tokens (what the system-role rule is cached by); `name` is how error
    messages call the template. Build one with `hf_codec` or `llama_codec`."""

    render: Render
    encode: Encode
    control_tokens: tuple[str, ...]
    key: str
    name: str = "the chat template"
    eos: str = ""  # the EOS token's text: trained after a last answer that the template closes with nothing


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: one control token the template writes (`control`), or a
    run of text between them, encoded as literal text; `loss` marks an assistant turn's content and
    its end-of-turn marker (chat_segments with `loss=True`)."""

    text: str
    control: bool
    loss: bool = False


def _literal_backend(tokenizer):
    """A copy of a fast tokenizer's Rust tokenizer that matches none of its added tokens: the non-special
    ones (DeepSeek-R1-Distill's ``<｜User｜>``, Qwen's ``<tool_call>``) are marked special in the copy, and
    it skips special ones (``encode_special_tokens``), so every text goes through the normalizer,
    pre-tokenizer and model as characters. (``split_special_tokens=True`` alone skips only the special
    ones: tokenizers matches the others in any text.) Added tokens made of whitespace only (runs of
    spaces that code models add) are no markers and stay matched, as the model reads any text. Cached
    on the tokenizer, rebuilt when its added tokens change; None for a tokenizer without a Rust backend."""
    import copy

    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "get_added_tokens_decoder"):
        return None
    added = backend.get_added_tokens_decoder()
    key = tuple((i, t.content, t.special) for i, t in sorted(added.items()))
    cached = tokenizer.__dict__.get("_lorapipe_literal")
    if cached is None or cached[0] != key:
        from tokenizers import AddedToken

        literal = copy.deepcopy(backend)
        literal.no_truncation()
        literal.no_padding()
        plain = [t for t in added.values() if not t.special and t.content.strip()]
        if plain:
            flags = ("single_word", "lstrip", "rstrip", "normalized")
            literal.add_special_tokens(
                [AddedToken(t.content, special=True, **{f: getattr(t, f) for f in flags}) for t in plain]
            )
        literal.encode_special_tokens = True
        cached = tokenizer.__dict__["_lorapipe_literal"] = (key, literal)
    return cached[1]


def literal_ids(tokenizer, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` read as literal characters by a transformers tokenizer: no added token, special
    (``<|im_end|>``) or not (``<｜Assistant｜>``, an added token with ``special: false``), is matched in
    it. With `add_special_tokens`, the BOS/EOS the tokenizer adds around a text (by id)."""
    literal = _literal_backend(tokenizer)
    if literal is None:  # a Python tokenizer: split_special_tokens skips every added token
        return tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=True)["input_ids"]
    return literal.encode(text, add_special_tokens=add_special_tokens).ids


def literal_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of literal_ids(tokenizer, text) (no BOS/EOS), for a fast tokenizer;
    raises NotImplementedError, as transformers does, for a tokenizer without a Rust backend."""
    literal = _literal_backend(tokenizer)
    if literal is None:
        raise NotImplementedError("character offsets need a fast (Rust) tokenizer")
    return literal.encode(text, add_special_tokens=False).offsets


def hf_codec(tokenizer, name: str = "the tokenizer's chat template") -> ChatCodec:
    """The ChatCodec of a transformers tokenizer (its `chat_template` rendered by apply_chat_template;
    contents encoded by literal_ids, matching no added token). Its control tokens are every added
    token, special or not (a template's markers may be added tokens with ``special: false``), and the
    special tokens in the vocabulary. Raises ChatTemplateError when it has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            "the tokenizer has no chat template, so conversations cannot be rendered: use a chat (instruct) "
            "model, set tokenizer.chat_template, or build a text dataset (dataset.mode: text)"
        )

    template = fixed_day_template(tokenizer.chat_template)

    def render(messages: Messages, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            **TEMPLATE_SWITCHES,
        )

    def encode(text: str, control: bool) -> list[int]:
        if not text:
            return []
        if not control:
            return literal_ids(tokenizer, text)
        return tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]

    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.content}
    for token in tokenizer.all_special_tokens:  # those in the vocabulary: a token text without an id is text
        found = tokenizer.convert_tokens_to_ids(token)
        if token and found is not None and (found != tokenizer.unk_token_id or token == tokenizer.unk_token):
            special.add(token)
    key = tokenizer.chat_template + "\0" + repr(sorted(tokenizer.special_tokens_map.items(), key=str))
    return ChatCodec(render, encode, tuple(sorted(special)), key, name, tokenizer.eos_token or "")


_LLAMA_CONTROL, _LLAMA_USER_DEFINED = 1 << 3, 1 << 4  # llama.cpp's LLAMA_TOKEN_ATTR_CONTROL, _USER_DEFINED


def _llama_literal(tokenize: Callable[[str], list[int]], text: str, matched: re.Pattern | None) -> list[int]:
    """Token ids of `text` as characters under llama.cpp, whose tokenizer matches user-defined tokens
    (a GGUF's non-special added tokens) even with ``special=False``: the text is cut where such a
    token's text occurs, and each occurrence is tokenized in two parts (at the cut that gives the
    fewest tokens), so that no part holds the whole token text."""
    if matched is None or not text:
        return tokenize(text) if text else []
    ids, pos = [], 0
    for found in matched.finditer(text):
        ids += tokenize(text[pos : found.start()]) if found.start() > pos else []
        word = found.group()
        cuts = [
            _llama_literal(tokenize, word[:k], matched) + _llama_literal(tokenize, word[k:], matched)
            for k in range(1, len(word))
        ]
        ids += min(cuts, key=len) if cuts else tokenize(word)
        pos = found.end()
    return ids + (tokenize(text[pos:]) if pos < len(text) else [])


def llama_codec(llm, name: str = "the GGUF's chat template") -> ChatCodec:
    """The ChatCodec of a loaded ``llama_cpp.Llama``: the Jinja template stored in its GGUF
    (``tokenizer.chat_template``), rendered in transformers' Jinja environment with the model's BOS
    and EOS texts, and ``llm.tokenize`` (no BOS added: the template writes it where the model wants
    one). Control tokens are the vocabulary's control and user-defined tokens (non-special added
    tokens, which llama.cpp matches in any text); contents are encoded with ``special=False`` and
    user-defined token texts cut apart (_llama_literal), so no content becomes one of them. Raises
    ChatTemplateError when the GGUF has no chat template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise ChatTemplateError(f"{name}: the GGUF carries no tokenizer.chat_template")
    model = llm._model
    text_of = model.token_get_text
    special = {"bos_token": text_of(model.token_bos()), "eos_token": text_of(model.token_eos())}
    kinds = {i: model.token_get_attr(i) for i in range(model.n_vocab())}
    controls = tuple(sorted({text_of(i) for i, a in kinds.items() if a & (_LLAMA_CONTROL | _LLAMA_USER_DEFINED)}))
    user_defined = sorted(
        {t for i, a in kinds.items() if a & _LLAMA_USER_DEFINED and (t := text_of(i)).strip()}, key=len
    )
    matched = re.compile("|".join(re.escape(t) for t in reversed(user_defined))) if user_defined else None

    def render(messages: Messages, generation_prompt: bool) -> str:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=fixed_day_template(template),
            add_generation_prompt=generation_prompt,
            **special,
            **TEMPLATE_SWITCHES,
        )
        return rendered[0]

    def tokenize(text: str, control: bool = False) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=control)

    def encode(text: str, control: bool) -> list[int]:
        if not text:
            return []
        return tokenize(text, True) if control else _llama_literal(tokenize, text, matched)

    key = template + "\0" + repr(sorted(special.items()))
    return ChatCodec(render, encode, controls, key, name, special["eos_token"])


def _placeholder(index: int) -> str:
    """A stand-in for message `index`'s content: private-use characters that no template writes."""
    return f"\ue000{index}\ue001"


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _roles(messages: Messages) -> str:
    return ", ".join(str(m.get("role")) for m in messages) or "(none)"


def _render(codec: ChatCodec, messages: Messages, generation_prompt: bool) -> str:
    """`codec.render`, with the template's refusal turned into a ChatTemplateError that says what to do."""
    try:
        return codec.render(messages, generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja2.TemplateError, or what the template's own code raises
        raise ChatTemplateError(
            f"{codec.name} refuses a conversation of roles [{_roles(messages)}]: {type(exc).__name__}: {exc}. "
            "lorapipe folds a leading system message into the first user message when the template has no "
            "system role; any other limit (e.g. user and assistant turns that must alternate, starting with "
            "the user) must be met by the conversations themselves"
        ) from None


_SYSTEM_FOLDS: dict[str, bool] = {}  # ChatCodec.key → whether its template refuses or drops a system message

# The conversation shapes lorapipe renders (role sequence, add_generation_prompt): a prompt for a
# first or a later answer, and a training row of one or two turns rendered whole or turn by turn.
_PROBE_SHAPES = (
    (("user",), True),
    (("user",), False),
    (("user", "assistant"), False),
    (("user", "assistant", "user"), True),
    (("user", "assistant", "user", "assistant"), False),
)


def _probe(roles: tuple[str, ...], system: bool) -> Messages:
    messages = [{"role": role, "content": _placeholder(i + 1)} for i, role in enumerate(roles)]
    return [{"role": "system", "content": _placeholder(0)}, *messages] if system else messages


def folds_system(codec: ChatCodec) -> bool:
    """Whether `codec`'s template has no system role: in any conversation shape lorapipe renders (a
    prompt after one or more turns, a training row of one or more turns, _PROBE_SHAPES) it raises on a
    leading system message, or writes none of its content (Mistral-Nemo writes it into the last user
    message only, so a whole training row renders without it), while the same shape without a system
    message renders. A shape the template refuses even without a system message says nothing about
    the system role. Decided once per template and cached. Raises ChatTemplateError when the template
    cannot render even one user message."""
    if codec.key not in _SYSTEM_FOLDS:
        _render(codec, _probe(("user",), False), True)  # a template that refuses a lone user message is not about roles
        folds = False
        for roles, generation_prompt in _PROBE_SHAPES:
            try:
                folds = _placeholder(0) not in codec.render(_probe(roles, True), generation_prompt)
            except Exception:  # noqa: BLE001 - a template may refuse a system message (Gemma 2 raises)
                try:
                    codec.render(_probe(roles, False), generation_prompt)
                    folds = True
                except Exception:  # noqa: BLE001, S112 - a shape the template refuses anyway (e.g. alternation)
                    continue
            if folds:
                break
        _SYSTEM_FOLDS[codec.key] = folds
    return _SYSTEM_FOLDS[codec.key]


def fold_system(messages: Messages) -> Messages:
    """The system prompt moved into the first user message (for templates without a system role)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = messages[0]["content"] + FOLD + rest[0]["content"]
    return rest


def chat_messages(messages: Messages, codec: ChatCodec) -> Messages:
    """`messages` as `codec`'s template is given them: the one rule of every stage. A leading system
    message is folded into the first user message (system prompt, a blank line, the user's text)
    when the template has no system role (folds_system); otherwise the messages are unchanged.
    Raises ChatTemplateError when such a template gets a system message not followed by a user one."""
    if not messages or messages[0].get("role") != "system" or not folds_system(codec):
        return messages
    if len(messages) < 2 or messages[1].get("role") != "user":
        raise ChatTemplateError(
            f"{codec.name} has no system role, so lorapipe folds the system prompt into the first user message, "
            f"but this conversation [{_roles(messages)}] has no user message right after it: start it with one"
        )
    return fold_system(messages)


def _variants(content: str) -> list[str]:
    """What a template may write for a content: itself, or trimmed (Jinja's ``trim``, Python's strip)."""
    return list(dict.fromkeys([content, content.strip(), content.rstrip(), content.lstrip()]))


def _locate(codec: ChatCodec, messages: Messages, skeleton: str, generation_prompt: bool):
    """The real rendering, and for each piece of `skeleton` (the rendering with placeholder contents)
    its place in it: [(skeleton start, skeleton end, text start, text end, message index or None)]."""
    text = _render(codec, messages, generation_prompt)
    parts = _PLACEHOLDER.split(skeleton)  # template text, message index, template text, …
    anchors, k, pos = [], 0, 0
    for i in range(0, len(parts), 2):
        piece = parts[i]
        if not text.startswith(piece, pos):
            break
        anchors.append((k, k + len(piece), pos, pos + len(piece), None))
        k, pos = k + len(piece), pos + len(piece)
        if i + 1 == len(parts):
            if pos == len(text):
                return text, anchors
            break
        index, following = int(parts[i + 1]), parts[i + 2]
        last = i + 3 == len(parts)
        content = next(
            (
                v
                for v in _variants(str(messages[index]["content"]))
                if text.startswith(v + following, pos) and (not last or pos + len(v + following) == len(text))
            ),
            None,
        )
        if content is None:
            break
        width = len(_placeholder(index))
        anchors.append((k, k + width, pos, pos + len(content), index))
        k, pos = k + width, pos + len(content)
    raise ChatTemplateError(
        f"{codec.name} writes a message's content other than as given (it changes it, or its text depends on "
        f"the content), so lorapipe cannot tell the template's own markers from the content in {text[:300]!r}"
    )


def _to_text(anchors, k: int) -> int:
    """A position of the skeleton as a position of the real rendering (at a piece's edge for contents)."""
    for k0, k1, t0, t1, index in anchors:
        if k0 <= k <= k1:
            if index is None:
                return t0 + k - k0
            if k in (k0, k1):
                return t0 if k == k0 else t1
    raise ChatTemplateError(f"an assistant turn starts or ends inside a message's content (at {k})")


def _control_pattern(codec: ChatCodec) -> re.Pattern | None:
    """A pattern matching `codec`'s control token texts, longest first; None when it has none."""
    if not codec.control_tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(codec.control_tokens, key=len, reverse=True)))


def _control_spans(codec: ChatCodec, text: str) -> list[tuple[int, int]]:
    """(start, end) of every control token text in `text` (a skeleton: its contents are placeholders,
    so every match is the template's own)."""
    pattern = _control_pattern(codec)
    return [(m.start(), m.end()) for m in pattern.finditer(text)] if pattern else []


def _snap(controls: list[tuple[int, int]], pos: int) -> int:
    """`pos`, moved back to the start of a control token it would cut."""
    return next((a for a, b in controls if a < pos < b), pos)


def _common(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b`."""
    return len(os.path.commonprefix([a, b]))


def _end_marker(codec: ChatCodec, closing: str, continuing: str) -> str:
    """The end-of-turn marker an answer's content is followed by: what the rendering has after it both
    where the answer closes the conversation (`closing`) and where a user message follows it
    (`continuing`), without trailing whitespace. Where the two part inside a control token, or right
    after one (the next header's ``<|im_start|>``), or inside a run of text (``[end]\\n[`` of
    ``[endoftext]`` and ``[user]``), that token or run begins what follows and is not part of the marker."""
    n = _common(closing, continuing)
    controls = [*_control_spans(codec, closing), *_control_spans(codec, continuing)]
    if _snap(controls, n) != n:  # the two part inside a control token
        n = _snap(controls, n)
    elif n < len(closing) and n < len(continuing):  # the two part here, at the edge of a token or run
        ending = next((a for a, b in controls if b == n), None)
        if ending is not None:
            n = ending
        elif n and not closing[n - 1].isspace():
            space = max((k + 1 for k in range(n) if closing[k].isspace()), default=0)
            n = max([space, *(b for a, b in controls if b <= n)])
    return closing[:n].rstrip()


def _loss_spans(codec: ChatCodec, skeleton_messages: Messages, skeleton: str) -> tuple[list[tuple[int, int]], bool]:
    """Skeleton spans of the assistant turns in the conversation as rendered whole, and whether an EOS
    must follow the last (its answer ends the rendering with no marker at all). Each span runs from
    where the template's prompt for that answer ends, through the content, to the end of the turn's
    end-of-turn marker (`_end_marker`, found by rendering the conversation up to that turn alone and
    with a user message after it). A turn with no marker learns the control token that follows it (GLM-4
    closes a turn only with the next turn's header), or, when it is the last, the control token that
    closes the conversation, else the EOS (then the span takes in the trailing whitespace too).

    A template may write an earlier turn otherwise than a fresh answer (Qwen3 leaves the thinking
    block out of earlier turns): the prompt counts up to where it and the whole rendering part. Raises
    ChatTemplateError when the loss would take in another message's content or a control token before
    the content (a template whose prompt for an answer leaves out the assistant's header), or when the
    last turn's prompt is not how the whole rendering reads there (the model would be prompted with
    text that training shows before no answer: DeepSeek-R1's forced ``<think>``)."""
    controls = _control_spans(codec, skeleton)
    spans: list[tuple[int, int]] = []
    eos = False
    assistant = [i for i, m in enumerate(skeleton_messages) if m.get("role") == "assistant"]
    for i in assistant:
        mark = _placeholder(i)
        at = skeleton.find(mark)
        before = max((skeleton.find(_placeholder(j)) + len(_placeholder(j)) for j in range(i)), default=0)
        prompt = _render(codec, skeleton_messages[:i], True)
        full = _render(codec, skeleton_messages[: i + 1], False)
        start = _snap(controls, _common(prompt, skeleton))
        if at < 0 or mark not in full or not before <= start <= at or (spans and start < spans[-1][1]):
            raise ChatTemplateError(
                f"{codec.name} does not render conversations incrementally (an earlier turn changes when a "
                "later one is added), so the loss cannot be limited to the assistant turns"
            )
        if i == assistant[-1] and start < len(prompt):
            raise ChatTemplateError(
                f"{codec.name} ends the prompt for an answer with {prompt[start:]!r}, but the whole conversation "
                f"reads {skeleton[start:at]!r} there: the model would be trained on answers it is never prompted "
                "for (a template that forces a thinking block, as DeepSeek-R1's does, or closes the last message "
                "otherwise than the others). Use a model or chat template that writes answers as it prompts for them"
            )
        if any(start <= a < at for a, _ in controls):
            raise ChatTemplateError(
                f"{codec.name}'s prompt for an answer stops before the assistant's header "
                f"({skeleton[start:at]!r}; add_generation_prompt seems to write nothing), so the model would have "
                "to write the header itself: give the template a generation prompt"
            )
        content_end = at + len(mark)
        closing = full[full.find(mark) + len(mark) :]
        try:
            followed = _render(
                codec, [*skeleton_messages[: i + 1], {"role": "user", "content": _placeholder(999)}], False
            )
            continuing = followed[followed.find(mark) + len(mark) :]
        except ChatTemplateError:  # a template that takes no user message here: the rendering as it goes on
            continuing = skeleton[content_end:]
        marker = _end_marker(codec, closing, continuing)
        if marker and not skeleton.startswith(marker, content_end):
            raise ChatTemplateError(
                f"{codec.name} does not render conversations incrementally (an earlier turn changes when a "
                "later one is added), so the loss cannot be limited to the assistant turns"
            )
        end = content_end + len(marker)
        if not marker:  # no end-of-turn marker: the control token that follows, after any whitespace
            rest = skeleton[content_end:]
            following = next((b for a, b in controls if a == content_end + len(rest) - len(rest.lstrip())), None)
            if following is None and i == assistant[-1]:
                following = next((b for a, b in controls if a >= content_end), None)  # the conversation's closer
                if following is None and codec.eos and codec.eos in rest:  # an EOS the tokenizer reads as text
                    following = content_end + rest.index(codec.eos) + len(codec.eos)
                if following is None:
                    following, eos = len(skeleton), True  # nothing closes it: the EOS will
            end = following or end
        spans.append((start, end))
    return spans, eos


def _cuts(codec: ChatCodec, text: str, anchors) -> list[tuple[int, int]]:
    """(start, end) of each control token the template itself writes: searched in the template's own
    text only, never in contents, longest first."""
    pattern = _control_pattern(codec)
    if pattern is None:
        return []
    return [
        (m.start(), m.end()) for _, _, t0, t1, index in anchors if index is None for m in pattern.finditer(text, t0, t1)
    ]


def chat_segments(
    messages: Messages, codec: ChatCodec, *, add_generation_prompt: bool, loss: bool = False
) -> list[Segment]:
    """The rendered conversation cut into Segments whose texts join to the template's rendering of
    chat_messages(`messages`) (the system rule applied).

    The template is rendered twice, with the real contents and with placeholder contents; comparing
    the two tells the template's own text from the contents (a template may trim them). Control
    tokens are taken from the template's text only, so a content that quotes ``<|im_end|>`` stays
    literal text. Runs between control tokens are not cut where a content starts or ends, so they
    tokenize as the whole rendering would. With `loss`, runs are also cut where an assistant turn's
    loss starts and ends (`_loss_spans`), and those Segments carry ``loss=True``; when the last answer
    ends the rendering with no end-of-turn marker, the EOS token follows it as a last loss Segment (the
    one piece that is not the template's text: what the model learns to stop with). Raises ChatTemplateError when the
    template refuses the conversation, changes contents beyond trimming them, or (with `loss`) does
    not render turn by turn."""
    messages = chat_messages(messages, codec)
    skeleton_messages = [{**m, "content": _placeholder(i)} for i, m in enumerate(messages)]
    skeleton = _render(codec, skeleton_messages, add_generation_prompt)
    text, anchors = _locate(codec, messages, skeleton, add_generation_prompt)
    skeleton_spans, eos = _loss_spans(codec, skeleton_messages, skeleton) if loss else ([], False)
    spans = [(_to_text(anchors, a), _to_text(anchors, b)) for a, b in skeleton_spans]
    controls = _cuts(codec, text, anchors)
    bounds = sorted({0, len(text), *(p for span in spans + controls for p in span)})
    whole = set(controls)  # a control token cut by a loss boundary (no template does that) would be text
    segments = [
        Segment(text[a:b], (a, b) in whole, any(s <= a and b <= e for s, e in spans))
        for a, b in zip(bounds, bounds[1:])
        if b > a
    ]
    if eos and codec.eos:
        # The last answer ends the rendering with no marker after it (GLM-4 closes a turn only with the
        # next turn's header): the EOS, which the Modelfile and serve stop at, is what it learns to end with.
        segments.append(Segment(codec.eos, True, True))
    return segments


def encode_chat(messages: Messages, codec: ChatCodec, *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation as `codec`'s model reads it (chat_segments encoded piece by piece:
    control tokens as control tokens, everything else as literal text). Use it for every prompt given
    to a model: evaluation, serving, generation. Raises ChatTemplateError (see chat_segments)."""
    return [
        i
        for s in chat_segments(messages, codec, add_generation_prompt=add_generation_prompt)
        for i in codec.encode(s.text, s.control)
    ]
