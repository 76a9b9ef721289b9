"""Text of marked-up documents (HTML, XHTML, EPUB chapters, DOCX) as a reader sees it.

    from lorapipe.extract.markup import html_to_text, docx_to_text
    html_to_text("<p>The <b>rank</b> of a <a href='#'>LoRA adapter</a>.</p>")  # "The rank of a LoRA adapter."
    text, notes = docx_to_text("report.docx")

- Inline elements (``b``, ``a``, ``em``, ``span``, ``code``, …) flow within their line; block elements
  (``p``, ``div``, ``li``, ``h1``–``h6``, ``tr``, ``dt``/``dd``, …) and ``br`` start a new one, as a
  browser lays them out. Whitespace collapses as in HTML, except inside ``pre``. Parsed by lxml's
  HTML parser, which applies HTML's implied end tags (``<tr><td>a<td>b<tr>…``, ``<p>one<p>two``,
  ``<li>``, ``<dt>``/``<dd>``, ``<option>``); prefixed XHTML (``<h:p>``) is read by local name.
- Tables: one line per row, non-empty cells joined by `` | `` (nested tables flow into their cell,
  their rows separated by ``; ``). Ruby text follows its base in parentheses: ``漢(kan)``.
  Lists: ``- item`` (``ul``) or ``1. item`` (``ol``), also when the item's text is in a block
  (``<li><p>…``); nested lists indented under their item. An image reads as its ``alt`` text.
  Nothing with visible text is dropped except ``script``, ``style``, ``head``, ``nav``,
  ``template``, ``noscript`` and elements marked ``hidden``, ``aria-hidden`` or
  ``style="display: none"`` (or ``visibility: hidden``).
- DOCX: every paragraph and table cell in document order, the same table layout, including nested
  tables, content controls, text boxes (once, not their fallback copy), SmartArt text, imported
  HTML or plain-text chunks, tracked insertions (not deletions), headers and footers (each distinct
  text once), footnotes and endnotes, symbols (w:sym: Symbol and Wingdings mapped to Unicode, other
  fonts' characters by their code). Comments are not document text; charts and imported chunks of
  other kinds are named in the notes.
"""

from __future__ import annotations

import re
import warnings

CELL_SEP = " | "
ROW_SEP = "; "  # between the rows of a table nested in a cell
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML's collapsible whitespace (not U+00A0)
_SKIPPED_TAGS = frozenset({"script", "style", "head", "nav", "template", "noscript"})
# Elements that start a new paragraph (a blank line) or a new line; every other element is inline.
_PARAGRAPH_TAGS = frozenset(
    "address article aside blockquote body caption center details dialog dir div dl fieldset figcaption "
    "figure footer form h1 h2 h3 h4 h5 h6 header hgroup hr html legend main menu ol p pre section summary "
    "table ul".split()
)
_LINE_TAGS = frozenset({"li", "dt", "dd", "tr", "option"})
_CELL_TAGS = frozenset({"td", "th"})
_PRE_TAGS = frozenset({"pre", "textarea", "listing", "plaintext"})  # whitespace kept as it is


class _Lines:
    """Text laid out line by line: inline text appends to the current line, breaks are requested
    (the largest request between two texts wins, so nested blocks do not pile up blank lines)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.line: list[str] = []
        self.pending = 0  # newlines requested before the next text
        self.cell_depth = 0  # inside a table cell, breaks become spaces: the row stays one line
        self.cell_sep = ""  # what goes before the next text of this row: `` | `` or a nested row's ``; ``
        self.glued = False  # a list marker was written: the item's first block stays on its line
        self.pre_start = False  # a ``pre`` just opened: a newline that starts it is not shown

    def text(self, chunk: str, pre: bool = False) -> None:
        if pre and self.pre_start and chunk.startswith(("\r\n", "\n")):
            chunk = chunk[2:] if chunk.startswith("\r\n") else chunk[1:]
        self.pre_start = False
        if not pre:
            chunk = _HTML_SPACE.sub(" ", chunk)
            if self.pending or not self.line or self.line[-1].endswith(" "):
                chunk = chunk.lstrip(" ")  # whitespace at the start of a line is not shown
        if not chunk:
            return
        if self.pending:
            if self.line or self.parts:
                self._end_line()
                self.parts.append("\n" * (self.pending - 1))
            self.pending = 0
        if self.cell_sep and chunk.strip():
            if self.line:
                self.line[-1] = self.line[-1].rstrip(" ")
            self.line.append(self.cell_sep)
            self.cell_sep = ""
            chunk = chunk.lstrip(" ")
        self.line.append(chunk)
        self.glued = False

    def marker(self, text: str) -> None:
        """A list item's marker: its text follows on the same line, even when it is in a block."""
        self.text(text, pre=True)
        self.glued = True

    def brk(self, newlines: int) -> None:
        """Start a new line (1) or paragraph (2) before the next text; a space inside a table cell;
        nothing right after a list marker (``<li><p>First</p>`` reads ``- First``)."""
        if self.glued:
            return
        if self.cell_depth:
            if self.line and not self.line[-1].endswith(" "):
                self.line.append(" ")
            return
        self.pending = max(self.pending, newlines)

    def line_break(self) -> None:
        """``<br>``: each one ends a line, so two in a row leave an empty line."""
        if self.cell_depth:
            self.brk(1)
        else:
            self.pending += 1

    def _end_line(self) -> None:
        self.parts.append("".join(self.line).rstrip(" \n") + "\n")  # a pre's last newline too
        self.line = []

    def result(self) -> str:
        if self.line:
            self._end_line()
        return "".join(self.parts).strip("\n")


_NOT_SHOWN_STYLE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden)\s*(?:!important\s*)?(?:;|$)", re.I
)


def _name(tag) -> str:
    """The element's local name, lower case: ``h:p`` (prefixed XHTML) is a ``p``."""
    return (tag.name or "").rsplit(":", 1)[-1].lower()


def _hidden(tag) -> bool:
    """Not shown: skipped elements, ``hidden``, ``aria-hidden``, ``style="display: none"`` (or
    ``visibility: hidden``)."""
    if _name(tag) in _SKIPPED_TAGS or tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
        return True
    return bool(_NOT_SHOWN_STYLE.search(str(tag.get("style") or "")))


def _ancestor(tag, names: tuple[str, ...]):
    """The nearest ancestor of `tag` whose local name is one of `names`, or None."""
    parent = tag.parent
    while parent is not None and _name(parent) not in names:
        parent = parent.parent
    return parent


def _list_marker(tag) -> str:
    """``- `` for an item of ``ul``, ``3. `` for the third item of ``ol`` (its ``start`` respected),
    indented under the items it is nested in."""
    parent = _ancestor(tag, ("ol", "ul", "menu"))
    marker = "- "
    if parent is not None and _name(parent) == "ol":
        start = str(parent.get("start", "1"))
        number = int(start) if start.lstrip("-").isdigit() else 1
        before = sum(1 for sibling in tag.find_previous_siblings() if _name(sibling) == "li")
        marker = f"{number + before}. "
    outer = _ancestor(tag, ("li",))
    return (" " * len(_list_marker(outer)) if outer is not None else "") + marker


def _in_list_item(tag) -> bool:
    """A block inside a list item or definition: it continues on the next line, not after a blank one."""
    return _ancestor(tag, ("li", "dd")) is not None


def _first_row(tag) -> bool:
    """`tag` (a ``tr``) is the first row of its table."""
    table = _ancestor(tag, ("table",))
    return table is None or table.find(lambda t: _name(t) == "tr") is tag


def _bare_ruby(tag) -> bool:
    """`tag` (an ``rt``) is in a ``ruby`` without ``rp`` parentheses of its own."""
    ruby = _ancestor(tag, ("ruby",))
    return ruby is None or ruby.find(lambda t: _name(t) == "rp") is None


def _open(tag, out: _Lines, pre_depth: int) -> int:
    """Lay out the start of element `tag`; return the new ``pre`` depth."""
    name = _name(tag)
    if name == "br":
        out.line_break()
    elif name in _PARAGRAPH_TAGS:
        out.brk(1 if _in_list_item(tag) else 2)
    elif name in _LINE_TAGS:
        out.brk(1)
        if name == "tr" and not out.cell_depth:
            out.cell_sep = ""
        elif name == "tr" and "".join(out.line).strip() and not _first_row(tag):
            out.cell_sep = ROW_SEP  # a later row of a table nested in a cell
        if name == "li":
            out.marker(_list_marker(tag))
    elif name == "img" or (name == "input" and str(tag.get("type", "")).lower() == "image"):
        out.text(str(tag.get("alt") or ""))  # an image's text alternative, where the image stands
    elif name in _CELL_TAGS:
        if not out.pending and not out.glued and not out.cell_sep and "".join(out.line).strip():
            out.cell_sep = CELL_SEP  # a later cell of this row
        out.cell_depth += 1
    elif name == "rt" and _bare_ruby(tag):
        out.text("(")  # ruby text in parentheses after its base: 漢(kan)
    if name in _PRE_TAGS:
        out.pre_start = True
    return pre_depth + (name in _PRE_TAGS)


def _close(tag, out: _Lines, pre_depth: int) -> int:
    name = _name(tag)
    if name == "li":
        out.glued = False  # an empty item still ends its line
    if name in ("tr", "table") and not out.cell_depth:
        out.cell_sep = ""  # the row ended with empty cells
    if name in _CELL_TAGS:
        out.cell_depth -= 1
    elif name == "rt" and _bare_ruby(tag):
        out.text(")")
    elif name in _PARAGRAPH_TAGS:
        out.brk(1 if _in_list_item(tag) else 2)
    elif name in _LINE_TAGS:
        out.brk(1)
    return pre_depth - (name in _PRE_TAGS)


_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)
_CDATA_BYTES = re.compile(rb"<!\[CDATA\[(.*?)\]\]>", re.S)


def _cdata_as_text(markup: str | bytes) -> str | bytes:
    """XHTML's CDATA sections as escaped text (an HTML parser reads them as comments)."""
    if isinstance(markup, str):
        return _CDATA.sub(lambda m: m.group(1).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"), markup)
    escape = {b"&": b"&amp;", b"<": b"&lt;", b">": b"&gt;"}
    return _CDATA_BYTES.sub(lambda m: re.sub(rb"[&<>]", lambda c: escape[c.group(0)], m.group(1)), markup)


def html_to_text(markup: str | bytes) -> str:
    """The text of an HTML or XHTML document (`markup`, bytes: its encoding detected), laid out
    as described in this module's docstring. Never raises on malformed markup."""
    from bs4 import BeautifulSoup, NavigableString, XMLParsedAsHTMLWarning
    from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction

    # lxml's HTML parser (libxml2) applies HTML's implied end tags (``<td>a<td>b<tr>``, ``<p>one<p>``,
    # ``<li>``, ``<dt>``/``<dd>``, ``<option>``), where html.parser nests them in each other.
    with warnings.catch_warnings():  # XHTML (EPUB chapters) is read with the HTML parser on purpose
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        soup = BeautifulSoup(_cdata_as_text(markup), "lxml")
    out = _Lines()
    pre_depth = 0
    # An explicit stack, not recursion: generated HTML nests thousands of levels deep.
    stack: list[tuple[object, bool]] = [(soup, True)]
    while stack:
        node, entering = stack.pop()
        if isinstance(node, NavigableString):
            if not isinstance(node, (Comment, Declaration, Doctype, ProcessingInstruction)):
                out.text(str(node), pre=pre_depth > 0)
            continue
        if not entering:
            pre_depth = _close(node, out, pre_depth)
            continue
        if node is not soup:
            if _hidden(node):
                continue
            pre_depth = _open(node, out, pre_depth)
        stack.append((node, False))
        stack.extend((child, True) for child in reversed(node.contents))
    return out.result()


# --- DOCX -----------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
_A_T = "{http://schemas.openxmlformats.org/drawingml/2006/main}t"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_DIAGRAM = "{http://schemas.openxmlformats.org/drawingml/2006/diagram}relIds"
_CHART = "{http://schemas.openxmlformats.org/drawingml/2006/chart}chart"
# Subtrees whose text is not the document's: deleted or moved-away text, field codes, the fallback
# copy of a text box (its mc:Choice holds the same text), properties (w:tabs holds w:tab stops).
_DOCX_SKIPPED = frozenset({_W + "del", _W + "moveFrom", _W + "instrText", _W + "delText", _MC_FALLBACK})
_DOCX_CHARS = {_W + "tab": "\t", _W + "ptab": "\t", _W + "br": "\n", _W + "cr": "\n", _W + "noBreakHyphen": "-"}


# Symbol fonts: their characters are written as w:sym (the font's code, F000 + byte in the private
# use area). Adobe's Symbol encoding (Greek, mathematics, arrows) and Word's AutoCorrect symbols and
# list bullets in Wingdings; any other character keeps its private-use code (as Word copies it).
_SYMBOL_FONT = dict(
    zip(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
        "ΑΒΧΔΕΦΓΗΙϑΚΛΜΝΟΠΘΡΣΤΥςΩΞΨΖαβχδεφγηιϕκλμνοπθρστυϖωξψζ",
        strict=True,
    )
) | {
    "\x22": "∀", "\x24": "∃", "\x27": "∋", "\x2a": "∗", "\x2d": "−", "\x40": "≅", "\x5c": "∴", "\x5e": "⊥",
    "\xa2": "′", "\xa3": "≤", "\xa5": "∞", "\xab": "↔", "\xac": "←", "\xad": "↑", "\xae": "→", "\xaf": "↓",
    "\xb0": "°", "\xb1": "±", "\xb2": "″", "\xb3": "≥", "\xb4": "×", "\xb5": "∝", "\xb6": "∂", "\xb7": "•",
    "\xb8": "÷", "\xb9": "≠", "\xba": "≡", "\xbb": "≈", "\xbc": "…", "\xc4": "⊗", "\xc5": "⊕", "\xc6": "∅",
    "\xc7": "∩", "\xc8": "∪", "\xc9": "⊃", "\xca": "⊇", "\xcc": "⊂", "\xcd": "⊆", "\xce": "∈", "\xcf": "∉",
    "\xd1": "∇", "\xd5": "∏", "\xd6": "√", "\xd7": "⋅", "\xd8": "¬", "\xd9": "∧", "\xda": "∨", "\xdb": "⇔",
    "\xdc": "⇐", "\xde": "⇒", "\xe5": "∑", "\xf2": "∫",
}  # fmt: skip
_WINGDINGS = {
    "J": "☺", "K": "😐", "L": "☹", "l": "●", "n": "■", "q": "❑", "v": "❖", "\xa7": "▪", "\xd8": "➢",
    "\xdf": "←", "\xe0": "→", "\xef": "⇦", "\xf0": "⇨", "\xf3": "⬄", "\xfb": "✗", "\xfc": "✓",
    "\xfd": "☒", "\xfe": "☑",
}  # fmt: skip
_SYMBOL_FONTS = {"symbol": _SYMBOL_FONT, "wingdings": _WINGDINGS}


def _symbol(sym) -> str:
    """The character of a w:sym (`sym`): by its font's table where known, else its code point."""
    try:
        code = int(sym.get(_W + "char") or "", 16)
    except ValueError:
        return ""
    table = _SYMBOL_FONTS.get((sym.get(_W + "font") or "").strip().lower())
    byte = chr(code - 0xF000 if 0xF000 <= code <= 0xF0FF else code)
    if table is not None and byte in table:
        return table[byte]
    if table is _SYMBOL_FONT and " " <= byte <= "~":
        return byte  # Symbol's digits and punctuation are ASCII's
    return chr(code) if 0 < code < 0x110000 else ""


def _skipped(tag) -> bool:
    return not isinstance(tag, str) or tag in _DOCX_SKIPPED or tag.endswith("Pr")


def _hidden_run(element) -> bool:
    """A run formatted as hidden text (w:vanish): Word neither shows nor prints it."""
    if element.tag != _W + "r":
        return False
    vanish = element.find(f"{_W}rPr/{_W}vanish")
    return vanish is not None and vanish.get(_W + "val") not in ("0", "false", "off")


class _Docx:
    """The blocks of one DOCX document; `notes` collects what could not be read (charts, …)."""

    def __init__(self, document) -> None:
        self.document = document
        self.notes: list[str] = []
        self.cell_depth = 0  # inside a table cell, a nested table's rows are separated by ROW_SEP

    def _part_root(self, rid: str | None):
        from lxml import etree

        part = self.document.part.related_parts.get(rid) if rid else None
        if part is None:
            return None
        return part.element if hasattr(part, "element") else etree.fromstring(part.blob)

    def inline(self, element, text: list[str], boxes: list) -> None:
        """Collect the text of a paragraph's runs into `text`; text boxes and SmartArt go to
        `boxes` (laid out after the paragraph, as blocks of their own)."""
        for child in element:
            tag = child.tag
            if _skipped(tag) or _hidden_run(child):
                continue
            if tag == _W + "txbxContent":
                boxes.append(child)
            elif tag in (_W + "t", _M + "t"):
                text.append(child.text or "")
            elif tag in _DOCX_CHARS:
                text.append(_DOCX_CHARS[tag])
            elif tag == _W + "sym":
                text.append(_symbol(child))
            elif tag == _W + "ruby":
                self.ruby(child, text, boxes)
            elif tag == _DIAGRAM:  # SmartArt: its text lives in the diagram's data part
                root = self._part_root(child.get(_R + "dm"))
                if root is not None:
                    boxes.append("\n".join(t.text for t in root.iter(_A_T) if t.text and t.text.strip()))
            elif tag == _CHART:
                self.notes.append("a chart's text (titles, labels) is not extracted")
            else:
                self.inline(child, text, boxes)

    def ruby(self, ruby, text: list[str], boxes: list) -> None:
        """A w:ruby: its base, then its ruby text in parentheses (漢(kan)), as HTML's ``rp`` shows it."""
        base, above = ruby.find(_W + "rubyBase"), ruby.find(_W + "rt")
        self.inline(base if base is not None else [], text, boxes)
        reading: list[str] = []
        self.inline(above if above is not None else [], reading, boxes)
        if "".join(reading).strip():
            text.append(f"({''.join(reading)})")

    def cell_text(self, cell) -> str:
        """A table cell's blocks on one line (a nested table's rows separated by ``; ``)."""
        self.cell_depth += 1
        try:
            return " ".join(" ".join(block.split("\n")) for block in self.blocks(cell)).strip()
        finally:
            self.cell_depth -= 1

    def table(self, table) -> str:
        """One line per row, its non-empty cells joined by `` | ``; rows of a table nested in a
        cell joined by ``; `` (they stay on the line of the outer row)."""
        rows = []
        for row in _parts(table, "tr"):
            line = CELL_SEP.join(text for text in map(self.cell_text, _parts(row, "tc")) if text)
            if line:
                rows.append(line)
        return (ROW_SEP if self.cell_depth else "\n").join(rows)

    def paragraph(self, paragraph) -> list[str]:
        text: list[str] = []
        boxes: list = []
        self.inline(paragraph, text, boxes)
        line = "".join(text)
        blocks = [line] if line.strip() else []
        for box in boxes:
            blocks += [box] if isinstance(box, str) else self.blocks(box)
        return [block for block in blocks if block.strip()]

    def blocks(self, container) -> list[str]:
        """Text blocks of a body, cell, text box, header, footer or note, in document order: one
        string per paragraph, one per table (its rows on separate lines)."""
        blocks: list[str] = []
        for child in container:
            tag = child.tag
            if tag == _W + "p":
                blocks += self.paragraph(child)
            elif tag == _W + "tbl":
                blocks += [text for text in [self.table(child)] if text]
            elif tag == _W + "altChunk":
                blocks += self.alt_chunk(child.get(_R + "id"))
            elif not _skipped(tag):
                blocks += self.blocks(child)  # w:sdt, w:sdtContent, w:customXml, w:ins, …
        return blocks

    def alt_chunk(self, rid: str | None) -> list[str]:
        """An imported chunk (w:altChunk): HTML and plain text are read, other kinds noted."""
        part = self.document.part.related_parts.get(rid) if rid else None
        kind = getattr(part, "content_type", "") or ""
        if "html" in kind:
            return [html_to_text(part.blob)]
        if kind.startswith("text/plain"):
            return [part.blob.decode("utf-8", "replace")]
        self.notes.append(f"an embedded {kind or 'document'} chunk is not extracted")
        return []

    def related(self, reltype: str) -> list:
        """XML roots of the parts the main document relates to by `reltype` (footnotes, …)."""
        rels = self.document.part.rels.values()
        return [self._part_root(rel.rId) for rel in rels if rel.reltype == reltype and not rel.is_external]

    def headers_or_footers(self, kind: str) -> list[str]:
        """Blocks of the headers (or footers) the sections reference, each distinct text once."""
        blocks: list[str] = []
        ids: list[str] = []
        for sect_pr in self.document.element.body.iter(_W + "sectPr"):
            ids += [ref.get(_R + "id") for ref in sect_pr.iter(_W + f"{kind}Reference")]
        for rid in dict.fromkeys(ids):
            root = self._part_root(rid)
            if root is not None:
                blocks += [block for block in self.blocks(root) if block not in blocks]
        return blocks


def _parts(node, tag: str) -> list:
    """The children of `node` named `tag` (``w:tr`` of a table, ``w:tc`` of a row), also those wrapped in
    content controls or custom XML; not those of tables nested deeper."""
    found = []
    for child in node:
        if child.tag == _W + tag:
            found.append(child)
        elif child.tag in (_W + "sdt", _W + "sdtContent", _W + "customXml"):
            found += _parts(child, tag)
    return found


def docx_to_text(path) -> tuple[str, list[str]]:
    """All the text of a DOCX file and notes on what could not be read (charts, embedded
    non-HTML chunks). Order: headers, body, footnotes, endnotes, footers (each header or footer
    text once); blocks separated by a blank line. Raises what python-docx raises for a file that is
    not a DOCX (ValueError, KeyError, zipfile.BadZipFile)."""
    import docx
    from docx.opc.constants import RELATIONSHIP_TYPE as RT

    reader = _Docx(docx.Document(str(path)))
    blocks = reader.headers_or_footers("header") + reader.blocks(reader.document.element.body)
    for reltype in (RT.FOOTNOTES, RT.ENDNOTES):
        for root in reader.related(reltype):
            for note in root if root is not None else ():
                if note.get(_W + "type") in (None, "normal"):  # not the separator lines
                    blocks += reader.blocks(note)
    blocks += reader.headers_or_footers("footer")
    return "\n\n".join(blocks), list(dict.fromkeys(reader.notes))
