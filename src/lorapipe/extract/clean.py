"""Clean extracted text: running headers, footers and page numbers, hyphenation, whitespace, Unicode.

    from lorapipe.extract.clean import clean_pages
    text = clean_pages(["Header\\nBody one-\\nline\\n1", "Header\\nBody two\\n2", ...], paged=True)

Running headers and footers are dropped only from real pages (three or more), then the text is cleaned.

A hyphen at the end of a line is either a syllable break (``exam-⏎ple``: joined) or part of the word
(``well-⏎known``, ``state-of-the-⏎art``: kept, the line break dropped). The document's own vocabulary
decides: the form, hyphenated or joined, that it uses elsewhere wins (`dehyphenate`); where it uses
neither, a word already hyphenated, a number, an acronym, a single letter or a productive prefix
(``self-``, ``non-``, ``low-``) keeps its hyphen, as does a hyphen before a number or a capital
(``COVID-⏎19``), in a URL, a suspended one (``pre-⏎and post-``) and a pair of words the document uses
on their own; the rest is joined. Both outcomes are counted. A blank line after a hyphen is a paragraph
break and stays; soft hyphens (U+00AD) are dropped everywhere.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_ROMAN = r"M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"  # a well-formed numeral, I to MMMCMXCIX
# "12", "xii", "XII", "Page 12", "12 / 40", "12 of 40": a page number's forms (a numeral in one case)
_PAGE_NUMBER = re.compile(
    rf"^\s*(?P<page>(?i:page)\s+)?(?=[\dMDCLXVImdclxvi])(?P<n>\d+|{_ROMAN}|{_ROMAN.lower()})"
    rf"(?P<total>\s*(?:/|(?i:of))\s*\d+)?\s*$"
)
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}
_HYPHENS = "-\u2010\u2011"  # HYPHEN-MINUS, HYPHEN (U+2010), NON-BREAKING HYPHEN (U+2011: always kept)
# A word (itself maybe hyphenated: "state-of-the") and a hyphen at a line end, the break (one line
# break, or a blank line: PDF converters put a paragraph continued in the next column or block after a
# blank line) and the next word ahead (not consumed, so that it may end in a break itself).
_HYPHEN_BREAK = re.compile(rf"(\w+(?:[{_HYPHENS}]\w+)*)([{_HYPHENS}])([ \t]*\n[ \t]*(?:\n[ \t]*)?)(?=(\w+))")
_BROKEN_WORD = re.compile(rf"\w+(?:[{_HYPHENS}]\w+)*[{_HYPHENS}][ \t]*\n[ \t]*\w+")
_WORD = re.compile(rf"\w+(?:[{_HYPHENS}]\w+)*")
_SOFT_BREAK = re.compile(r"\u00ad[ \t]*\n[ \t]*(?=\S)")  # a soft hyphen at a line end: a syllable break
# Productive prefixes and first words of compounds that keep their hyphen where the document says
# nothing (self-attention, non-linear, low-rank, well-known) unless the rest is a suffix (selfish).
_KEEP_PREFIXES = frozenset("self non low high well ill cross half multi semi pseudo quasi zero few fine".split())
_SUFFIXES = frozenset(  # what follows those prefixes in one-word spellings: selfish, multiple, seminar
    "ish ishly ishness less lessly lessness ness hood ing ings ly er ers est ed ful fully ship same "
    "land lands light lights lighted lighting way ways sense sensical chalant descript "
    "ple ples ply plied plies plier pliers plying plication plications plicative plex tude tudes farious "
    "nar nars nary naries nal nym nyms nymous".split()
)
_SUSPENDED = frozenset({"and", "or", "nor", "to"})  # "pre- and post-training", "first- or second-order"
# the token before the hyphen is a URL, a path or an address (not "training/vali-": prose with a slash)
_URL_LEFT = re.compile(r"://|^www\.|@|\w\.\w+/|^~?/")
EDGE_LINES = 2  # lines at the top and the bottom of a page that may be running headers or footers


def _signature(line: str) -> str:
    """A line with its digits blurred, so "Chapter 3 · page 14" matches across pages."""
    return re.sub(r"\d+", "#", line.strip().lower())


def strip_running_lines(pages: list[str], min_share: float = 0.5) -> list[str]:
    """Drop page numbers (_page_number_lines), and lines at the top or bottom of pages that recur on at
    least `min_share` of the pages (3 pages at least)."""
    split = [page.split("\n") for page in pages]
    edges = []  # per page, the indices of its first and last EDGE_LINES non-blank lines
    for lines in split:
        content_idx = [i for i, line in enumerate(lines) if line.strip()]
        edges.append(set(content_idx[:EDGE_LINES] + content_idx[-EDGE_LINES:]))
    counts: Counter[str] = Counter()
    for lines, edge in zip(split, edges):
        # a lone numeral's signature ("#") would match every number: _page_number_lines decides those
        counts.update({_signature(lines[i]) for i in edge if not _PAGE_NUMBER.match(lines[i])})
    threshold = max(3, min_share * len(pages))
    running = {sig for sig, n in counts.items() if n >= threshold and sig}
    numbered = _page_number_lines(split, edges)
    cleaned = []
    for page, lines in enumerate(split):
        kept = [
            line
            for i, line in enumerate(lines)
            if not (i in edges[page] and (_signature(line) in running or (page, i) in numbered))
        ]
        cleaned.append("\n".join(kept))
    return cleaned


def _numeral(text: str) -> int:
    """The value of a decimal or a well-formed Roman numeral (either case)."""
    if text.isdigit():
        return int(text)
    values = [_ROMAN_VALUES[c] for c in text.lower()]
    return sum(-v if v < after else v for v, after in zip(values, [*values[1:], 0]))


def _page_number_lines(split: list[list[str]], edges: list[set[int]]) -> set[tuple[int, int]]:
    """(page, line) of each page number among the edge lines: a line written as one ("Page 3", "3 of
    12") always; a bare numeral ("3", "xii") only when its value minus the page's position recurs on
    another page (a sequence: 1, 2, 3 … or iv, v, vi …), so that a number or a word such as "1450" or
    "Civil" ending one page is kept as text."""
    found: set[tuple[int, int]] = set()
    bare: dict[int, list[tuple[int, int]]] = {}  # offset (value - page position) -> its lines
    for page, lines in enumerate(split):
        for i in edges[page]:
            match = _PAGE_NUMBER.match(lines[i])
            if not match or not match["n"]:
                continue
            if match["page"] or match["total"]:
                found.add((page, i))
            else:
                bare.setdefault(_numeral(match["n"]) - page, []).append((page, i))
    for places in bare.values():
        if len({page for page, _ in places}) >= 2:
            found.update(places)
    return found


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
    the hyphen stays after a hyphenated word, a number, an acronym or a single letter (``state-of-the-``,
    ``3-``, ``GPT-``, ``X-⏎ray``), before a number or a capital (``COVID-⏎19``, ``non-⏎English``), after
    a productive prefix unless a suffix follows (``self-⏎attention``, ``Low-⏎rank``, not ``self-⏎ish``)
    and between two words of three letters or more that the document uses on their own
    (``model-⏎free``); otherwise the parts are joined (``exam-⏎ple``)."""
    hyphenated, joined = f"{left}-{right}".lower(), f"{left}{right}".lower()
    if words[hyphenated] != words[joined]:
        return words[hyphenated] > words[joined]
    if any(h in left for h in _HYPHENS) or any(c.isdigit() for c in left) or (len(left) > 1 and left.isupper()):
        return True
    if len(left) == 1 or not right[0].islower():
        return True
    if left.lower() in _KEEP_PREFIXES and right.lower() not in _SUFFIXES:
        return True
    return len(left) >= 3 and len(right) >= 3 and words[left.lower()] > 0 and words[right.lower()] > 0


def _in_url(match: re.Match[str]) -> bool:
    """Whether the hyphen of `match` sits in a URL, a path or an e-mail address (``https://my-⏎site``,
    ``my-⏎site.example.com``): such a hyphen is a character of the address, always kept."""
    text, start, end = match.string, match.start(), match.end()
    token = re.split(r"\s", text[:start])[-1] + match.group(1)
    after = text[end + len(match.group(4)) : end + len(match.group(4)) + 2]
    return bool(_URL_LEFT.search(token)) or bool(re.match(r"[./@]\w", after))


def _suspended(match: re.Match[str]) -> bool:
    """Whether ``left-⏎and/or`` is a suspended hyphen, a hyphenated word follows the conjunction
    (``pre-⏎and post-training``): the hyphen stays, the line break becomes a space."""
    if match.group(4).lower() not in _SUSPENDED:
        return False
    rest = match.string[match.end() + len(match.group(4)) :]
    return bool(re.match(rf"\s+\w+[{_HYPHENS}]\w", rest))


def dehyphenate(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with every line-end hyphen resolved (`keeps_hyphen`): the line break dropped, the hyphen
    kept or dropped; a hyphen in a URL, a non-breaking hyphen and a suspended hyphen (``pre-⏎and
    post-``, the break a space) are kept. Across a blank line only a word split in two is joined, and
    only when the next block starts in lower case (``Ef-⏎⏎fects``: a paragraph a PDF converter cut
    between columns); otherwise the blank line is a paragraph break, left alone (not counted).
    Adds the numbers to `counts` (``hyphens_joined``, ``hyphens_kept``)."""
    words = vocabulary(text)
    tally: Counter[str] = Counter()

    def resolve(match: re.Match[str]) -> str:
        left, hyphen, gap, right = match.groups()
        if gap.count("\n") > 1 and (not right[0].islower() or hyphen == "\u2011" or keeps_hyphen(left, right, words)):
            return match.group(0)  # a paragraph break after a hyphen or a dash
        if _suspended(match):
            tally["hyphens_kept"] += 1
            return left + hyphen + " "
        keep = hyphen == "\u2011" or _in_url(match) or keeps_hyphen(left, right, words)
        tally["hyphens_kept" if keep else "hyphens_joined"] += 1
        return left + hyphen if keep else left

    text = _HYPHEN_BREAK.sub(resolve, text)
    if counts is not None:
        counts.update(tally)
    return text


def clean_text(text: str, counts: Counter[str] | None = None) -> str:
    """Unicode NFC, no byte-order marks, no soft hyphens (at a line end a syllable break: joined),
    line-end hyphens resolved (`dehyphenate`), no trailing spaces, one blank line at most. Adds to
    `counts` how many line-end hyphens were joined (``hyphens_joined``) and kept (``hyphens_kept``),
    and how many soft hyphens inside lines were dropped (``soft_hyphens_dropped``, where any were)."""
    # U+FEFF inside a text is a byte-order mark left by joining files, not a character of it
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    text, soft = _SOFT_BREAK.subn("", text)
    inline = text.count("\u00ad")  # invisible break points (HTML &shy;): never part of the text
    text = dehyphenate(text.replace("\u00ad", ""), counts)
    if counts is not None and soft:
        counts["hyphens_joined"] += soft
    if counts is not None and inline:
        counts["soft_hyphens_dropped"] += inline
    text = re.sub(r"[ \t\f\v\u00a0]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


_PAGE_END_BREAK = re.compile(rf"\w[{_HYPHENS}\u00ad]$")  # a page ending in a word broken by a hyphen


def clean_pages(pages: list[str], paged: bool, counts: Counter[str] | None = None) -> str:
    """Clean every page, drop running headers and footers of real pages, and join them (a blank line
    between pages, a line break after a page that ends in a broken word, so that `dehyphenate`
    resolves it). Adds the hyphenation counts of `clean_text` to `counts`."""
    if paged and len(pages) >= 3:
        pages = strip_running_lines(pages)
    kept = [page.strip() for page in pages if page.strip()]
    joined = "".join(page + ("\n" if _PAGE_END_BREAK.search(page) else "\n\n") for page in kept)
    return clean_text(joined, counts)
