"""Clean extracted text: running headers, footers and page numbers, hyphenation, whitespace, Unicode.

    from lorapipe.extract.clean import clean_pages
    text = clean_pages(["Header\\nBody one-\\nline\\n1", "Header\\nBody two\\n2", ...], paged=True)

Running headers and footers are dropped only from real pages (three or more), then the text is cleaned.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?[\divxlc]+(?:\s*(?:/|of)\s*\d+)?\s*$", re.IGNORECASE)
# "exam-\nple" → "example" (lower-case only: keeps "Jean-\nPaul")
_HYPHEN_BREAK = re.compile(r"(\w)-[ \t]*\n\s*([a-z])")
EDGE_LINES = 2  # lines at the top and the bottom of a page that may be running headers or footers


def _signature(line: str) -> str:
    """A line with its digits blurred, so "Chapter 3 · page 14" matches across pages."""
    return re.sub(r"\d+", "#", line.strip().lower())


def strip_running_lines(pages: list[str], min_share: float = 0.5) -> list[str]:
    """Drop page numbers, and lines at the top or bottom of pages that recur on at least
    `min_share` of the pages (3 pages at least)."""
    split = [page.split("\n") for page in pages]
    counts: Counter[str] = Counter()
    for lines in split:
        content = [line for line in lines if line.strip()]
        edges = content[:EDGE_LINES] + content[-EDGE_LINES:]
        counts.update({_signature(line) for line in edges})
    threshold = max(3, min_share * len(pages))
    running = {sig for sig, n in counts.items() if n >= threshold and sig}
    cleaned = []
    for lines in split:
        content_idx = [i for i, line in enumerate(lines) if line.strip()]
        edge_idx = set(content_idx[:EDGE_LINES] + content_idx[-EDGE_LINES:])
        kept = [
            line
            for i, line in enumerate(lines)
            if not (i in edge_idx and (_signature(line) in running or _PAGE_NUMBER.match(line)))
        ]
        cleaned.append("\n".join(kept))
    return cleaned


def clean_text(text: str) -> str:
    """Unicode NFC, hyphenation across line breaks joined, no trailing spaces, one blank line at most."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\u00ad\n", "")
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = re.sub(r"[ \t\f\v\u00a0]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_pages(pages: list[str], paged: bool) -> str:
    """Clean every page, drop running headers and footers of real pages, and join them."""
    if paged and len(pages) >= 3:
        pages = strip_running_lines(pages)
    return clean_text("\n\n".join(page.strip() for page in pages if page.strip()))
