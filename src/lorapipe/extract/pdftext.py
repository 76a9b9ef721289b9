"""Overprinted PDF text (fake bold, shadows): glyphs drawn twice, slightly offset, read once.

    from lorapipe.extract.pdftext import unique_chars, without_overprinted_text, repair_doubled_words

Word processors and PDF printers fake a bold face by drawing the same text two or more times a
fraction of a point apart. A text extractor that takes every drawn glyph reads ``TTrraaiinniinngg``
or the heading twice. The rule, on every PDF backend: a glyph (pdfplumber) or text object (docling)
that repeats the text of one drawn before it, with the same size, within half a character's width
across and a quarter of its height up or down, is a second impression of the same text and is
dropped. Legitimate repeats ("ll", a word repeated on a line) sit at least a character apart.

- pdfplumber: `unique_chars` drops repeated glyphs before the text is laid out.
- docling (layout and native): docling-parse has no such filter, so `without_overprinted_text`
  hands it a temporary copy of the PDF whose repeated text objects are removed with PDFium (which
  flags them the same way when it lays out text). Glyphs doubled inside one text object (an
  overstrike written as one string) are undone by `repair_doubled_words`, only where PDFium's text
  of the same page has the word once. Text objects inside Form XObjects are left as they are.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ACROSS = 0.5  # of a character's width: a repeat closer than this is the same glyph drawn again
SIZE_ACROSS = 0.18  # of the font size: the least such distance (a narrow "i" offset by 1 pt at 8 pt)
ADJACENT = 0.9  # of a character's width: never as far as the next glyph ("ll", narrowest glyphs 0.2 em)
UP = 0.25  # of the glyph's (or text object's) height


def near_across(width: float, size: float) -> float:
    """How far across (points) a repeat of a glyph `width` points wide, in a font of `size` points,
    may lie and still be a second impression: ``ACROSS`` of its width but at least ``SIZE_ACROSS``
    of the size (fake bold's offset does not shrink with a narrow glyph), and never ``ADJACENT`` of
    the width, where the same letter written twice ("ll") sits."""
    width = max(width, 1e-3)
    return min(max(ACROSS * width, SIZE_ACROSS * size), ADJACENT * width)


def unique_chars(chars: list[dict]) -> set[int]:
    """``id()`` of the pdfplumber `chars` that repeat an earlier char (same text, font and size)
    within `near_across` and ``UP`` of its size: the chars to drop."""
    seen: dict[tuple, list[dict]] = {}
    drop: set[int] = set()
    for char in chars:
        if not char["text"].strip():
            continue  # a repeated space changes nothing, and spacing is laid out from positions
        size = max(float(char.get("size") or 0), 1e-3)
        row = int(char["doctop"] // size)
        key = (char["text"], char.get("fontname"), round(size, 1), char.get("upright"))
        near_x = near_across(float(char["width"]), size)
        near = (
            other
            for r in (row - 1, row, row + 1)
            for other in seen.get((*key, r), ())
            if abs(other["x0"] - char["x0"]) <= near_x and abs(other["doctop"] - char["doctop"]) <= UP * size
        )
        if next(near, None) is not None:
            drop.add(id(char))
        else:
            seen.setdefault((*key, row), []).append(char)
    return drop


def _overprints(box: tuple, kept: tuple, size: float) -> bool:
    """Text object `box` ``(left, bottom, right, top)`` lies on `kept` ``(l, b, r, t, text)`` (font
    `size` points)."""
    left, bottom, right, top = box
    k_left, k_bottom, k_right, k_top, k_text = kept
    near_x = near_across((k_right - k_left) / max(len(k_text), 1), size)
    near_y = UP * max(k_top - k_bottom, 1e-3)
    return (
        abs(left - k_left) <= near_x
        and abs(right - k_right) <= near_x
        and abs(bottom - k_bottom) <= near_y
        and abs(top - k_top) <= near_y
    )


def _repeated_text_objects(page) -> list:
    """Top-level text objects of a PDFium `page` that repeat an earlier one: same text (or no
    text: PDFium's text page already leaves out an object it recognises as a repeat) and size, at
    the position described in the module docstring."""
    import pypdfium2.raw as pdfium_c

    textpage = page.get_textpage()
    kept: dict[tuple, list[tuple]] = {}  # (size, row, text) → boxes of kept objects
    by_row: dict[tuple, list[tuple]] = {}  # (size, row) → the same, any text
    repeats = []
    try:
        for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_TEXT], max_depth=1, textpage=textpage):
            box = tuple(obj.get_bounds())
            text = obj.extract()
            size = round(obj.get_font_size(), 2)
            row = int(box[1] // max(size, 1.0))
            index = kept if text else by_row
            keys = [(size, r, text) if text else (size, r) for r in (row - 1, row, row + 1)]
            pool = [k for key in keys for k in index.get(key, ())]
            if any(_overprints(box, k, size) for k in pool):
                repeats.append(obj)
            elif text.strip():
                kept.setdefault((size, row, text), []).append((*box, text))
                by_row.setdefault((size, row), []).append((*box, text))
    finally:
        textpage.close()
    return repeats


def _save_without_repeats(path: Path, copy: Path) -> bool:
    """Write `path` without its repeated text objects to `copy`; False (nothing written) when it
    has none or PDFium cannot read it (the reader then gets the original and says why)."""
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(str(path))
    except pypdfium2.PdfiumError:
        return False
    try:
        removed = 0
        for index in range(len(pdf)):
            page = pdf[index]
            repeats = _repeated_text_objects(page)
            for obj in repeats:
                page.remove_obj(obj)
                obj.close()
            if repeats:
                page.gen_content()  # rewrite the page's content stream without them
                removed += len(repeats)
            page.close()
        if removed:
            pdf.save(str(copy))
        return bool(removed)
    except pypdfium2.PdfiumError:
        return False
    finally:
        pdf.close()


@contextmanager
def without_overprinted_text(path: Path) -> Iterator[Path]:
    """`path` itself, or (when it has repeated text objects) a temporary copy without them that is
    removed when the block ends. The input file is never modified."""
    folder = Path(tempfile.mkdtemp(prefix="lorapipe-pdf-"))
    try:
        copy = folder / path.name
        yield copy if _save_without_repeats(path, copy) else path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_WORD = re.compile(r"\w+")


def _halved(word: str) -> str | None:
    """``TTrraaiinn`` → ``Train``: a word of 2 or more letters, each written twice; else None."""
    if len(word) >= 4 and len(word) % 2 == 0 and word[0::2] == word[1::2]:
        return word[0::2]
    return None


def repair_doubled_words(pages: list[str], page_numbers: list[int], path: Path) -> list[str]:
    """Undo glyph-by-glyph overstrike in extracted `pages` (numbers 1-based, as `page_numbers`):
    a word whose every letter is doubled becomes the word once, where PDFium's text of the same page
    (which drops overstruck glyphs) has the word once and not doubled."""
    if not any(_halved(word) for page in pages for word in _WORD.findall(page)):
        return pages
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(str(path))
    except pypdfium2.PdfiumError:
        return pages
    try:
        repaired = []
        for text, number in zip(pages, page_numbers, strict=True):
            if not 1 <= number <= len(pdf):
                repaired.append(text)
                continue
            textpage = pdf[number - 1].get_textpage()
            words = set(_WORD.findall(textpage.get_text_range()))
            textpage.close()

            def once(match: re.Match, words: set[str] = words) -> str:
                word, half = match.group(0), _halved(match.group(0))
                return half if half and half in words and word not in words else word

            repaired.append(_WORD.sub(once, text))
        return repaired
    finally:
        pdf.close()
