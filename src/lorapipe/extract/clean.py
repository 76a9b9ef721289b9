"""Clean extracted text: running headers, footers and page numbers, hyphenation, whitespace, Unicode.

    from lorapipe.extract.clean import clean_pages
    text = clean_pages(["Header\\nBody one-\\nline\\n1", "Header\\nBody two\\n2", ...], paged=True)

Running headers and footers are dropped only from real pages (three or more), then the text is cleaned.

A hyphen at the end of a line is either a syllable break (``exam-⏎ple``: joined) or part of the word
(``well-⏎known``, ``state-of-the-⏎art``: kept, the line break dropped). The document's own vocabulary
decides: the form, hyphenated or joined, that it uses elsewhere wins (`dehyphenate`); where it uses
neither, a word already hyphenated, a number or an acronym keeps its hyphen, as does a pair of words
the document uses on their own, and the rest is joined. Both outcomes are counted.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_PAGE_NUMBER = re.compile(r"^\s*(?:page\s+)?[\divxlc]+(?:\s*(?:/|of)\s*\d+)?\s*$", re.IGNORECASE)
_HYPHENS = "-\u2010"  # HYPHEN-MINUS and HYPHEN (U+2010)
# A word (itself maybe hyphenated: "state-of-the") and a hyphen at a line end, the next word ahead
# (not consumed, so that it may end in a break itself). Only a lower-case next word: keeps "Jean-\nPaul".
_HYPHEN_BREAK = re.compile(rf"(\w+(?:[{_HYPHENS}]\w+)*)([{_HYPHENS}])[ \t]*\n\s*(?=([^\W\d_]\w*))")
_BROKEN_WORD = re.compile(rf"\w+(?:[{_HYPHENS}]\w+)*[{_HYPHENS}][ \t]*\n\s*\w+")
_WORD = re.compile(rf"\w+(?:[{_HYPHENS}]\w+)*")
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


def vocabulary(text: str) -> Counter[str]:
    """Lower-case words of `text` and how often each occurs, away from line-end hyphens: hyphenated
    words whole and each of their parts (``well-known``, ``well``, ``known``)."""
    counts: Counter[str] = Counter()
    for word in _WORD.findall(_BROKEN_WORD.sub(" ", text)):
        word = word.lower()
        counts[word] += 1
        parts = re.split(f"[{_HYPHENS}]", word)
        if len(parts) > 1:
            counts.update(parts)
    return counts


def keeps_hyphen(left: str, right: str, words: Counter[str]) -> bool:
    """Whether ``left-⏎right`` is one hyphenated word (True) or a word split in two (False), judged by
    the document's `words` (`vocabulary`): the form it uses more often wins; where it uses neither,
    the hyphen stays after a hyphenated word, a number or an acronym (``state-of-the-``, ``3-``,
    ``GPT-``) and between two words of three letters or more that the document uses on their own
    (``model-⏎free``); otherwise the parts are joined (``exam-⏎ple``)."""
    hyphenated, joined = f"{left}-{right}".lower(), f"{left}{right}".lower()
    if words[hyphenated] != words[joined]:
        return words[hyphenated] > words[joined]
    if any(h in left for h in _HYPHENS) or any(c.isdigit() for c in left) or (len(left) > 1 and left.isupper()):
        return True
    return len(left) >= 3 and len(right) >= 3 and words[left.lower()] > 0 and words[right.lower()] > 0


def dehyphenate(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with every line-end hyphen resolved (`keeps_hyphen`): the line break dropped, the hyphen
    kept or dropped. Adds the numbers to `counts` (``hyphens_joined``, ``hyphens_kept``)."""
    words = vocabulary(text)
    tally: Counter[str] = Counter()

    def resolve(match: re.Match[str]) -> str:
        left, hyphen, right = match.groups()
        if not right[0].islower():
            return match.group(0)
        keep = keeps_hyphen(left, right, words)
        tally["hyphens_kept" if keep else "hyphens_joined"] += 1
        return left + hyphen if keep else left

    text = _HYPHEN_BREAK.sub(resolve, text)
    if counts is not None:
        counts.update(tally)
    return text


def clean_text(text: str, counts: Counter[str] | None = None) -> str:
    """Unicode NFC, no byte-order marks, line-end hyphens resolved (`dehyphenate`; soft hyphens always
    joined), no trailing spaces, one blank line at most. Adds to `counts` how many line-end hyphens
    were joined (``hyphens_joined``) and kept (``hyphens_kept``)."""
    # U+FEFF inside a text is a byte-order mark left by joining files, not a character of it
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    soft = text.count("\u00ad\n")
    text = dehyphenate(text.replace("\u00ad\n", ""), counts)
    if counts is not None and soft:
        counts["hyphens_joined"] += soft
    text = re.sub(r"[ \t\f\v\u00a0]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_pages(pages: list[str], paged: bool, counts: Counter[str] | None = None) -> str:
    """Clean every page, drop running headers and footers of real pages, and join them. Adds the
    hyphenation counts of `clean_text` to `counts`."""
    if paged and len(pages) >= 3:
        pages = strip_running_lines(pages)
    return clean_text("\n\n".join(page.strip() for page in pages if page.strip()), counts)
