"""Read the text files users write, whatever their editor saved: UTF-8 with or without a byte-order
mark (Windows Notepad, Excel's "CSV UTF-8"), or UTF-16 / UTF-32 with one ("Unicode" in Notepad).

    from lorapipe.textfiles import read_text
    text = read_text("data/raw/labeled/rows.jsonl")   # str without the BOM, newlines as "\\n"

Every file a user hands lorapipe goes through here: labeled data, params.yaml, system-prompt files,
JSON schemas, prompts.json, an accelerate config (`plain_utf8`), and documents (`decode_document`).
Configuration and data files in any other encoding are refused with a message that names the file,
the first byte that is not UTF-8 and the fix; documents, often old, are decoded by detection instead,
and a document that is UTF-8 but for a few bytes is read with those replaced (`repair_utf8`).
A module of its own, importing nothing from lorapipe, so that every other module may use it.
"""

from __future__ import annotations

import codecs
import functools
import operator
import re
from collections.abc import Iterator
from pathlib import Path

# UTF-32's little-endian mark starts with UTF-16's, so it is tried first.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
SAVE_AS_UTF8 = "save it as UTF-8 (in most editors: Save as… → Encoding: UTF-8) and run again"


class TextEncodingError(ValueError):
    """A text file that is not UTF-8 (nor UTF-16/32 with a byte-order mark); the message names the
    file, where decoding failed and the fix."""


def bom_encoding(data: bytes) -> str | None:
    """The Python codec that the byte-order mark at the start of `data` names (it strips the mark),
    or None when `data` has none."""
    return next((encoding for bom, encoding in _BOMS if data.startswith(bom)), None)


def _looks_utf16(data: bytes) -> bool:
    """UTF-16 without a byte-order mark: mostly ASCII, so every other byte is NUL."""
    head = data[:4096]
    return len(head) >= 4 and (head[1::2].count(0) > 0.6 * len(head) / 2 or head[0::2].count(0) > 0.6 * len(head) / 2)


def _refusal(source: str | Path, data: bytes, exc: UnicodeDecodeError, encoding: str) -> str:
    line = data[: exc.start].count(b"\n") + 1
    found = f"byte 0x{data[exc.start]:02x} at line {line} (byte offset {exc.start})"
    if encoding != "utf-8":
        return f"{source}: its byte-order mark says {encoding.upper()}, but {found} is not; {SAVE_AS_UTF8}"
    return f"{source} is not UTF-8 text: {found} is not UTF-8 (Windows-1252 or Latin-1?); {SAVE_AS_UTF8}"


def _newlines(text: str) -> str:
    """``\\r\\n`` and ``\\r`` as ``\\n``, as Python's text files read them."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def decode_text(data: bytes, source: str | Path = "<bytes>") -> str:
    """`data` as text: by its byte-order mark (UTF-8, UTF-16, UTF-32; the mark is dropped), else as
    UTF-8; newlines become ``\\n``. Raises TextEncodingError naming `source` when it does not decode
    (or is UTF-16 without a mark)."""
    encoding = bom_encoding(data) or "utf-8"
    if encoding == "utf-8" and _looks_utf16(data):  # ASCII in UTF-16 is valid UTF-8, full of NULs
        raise TextEncodingError(
            f"{source} looks like UTF-16 without a byte-order mark (every other byte is 0); {SAVE_AS_UTF8}"
        )
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise TextEncodingError(_refusal(source, data, exc, encoding)) from None
    return _newlines(text)


def read_text(path: str | Path) -> str:
    """The text of a file a user wrote (`decode_text` of its bytes). Raises FileNotFoundError (and
    other OSError) when it cannot be read and TextEncodingError naming it when it is not UTF-8."""
    return decode_text(Path(path).read_bytes(), path)


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of each non-blank line of JSONL `text`. Lines end at ``\\n`` only, never
    at a U+2028 or U+0085 inside a string (``str.splitlines`` would split there); a byte-order mark at
    the start of a line (files joined with ``cat``, each with its mark) is dropped."""
    for number, line in enumerate(text.split("\n"), 1):
        line = line.lstrip("\ufeff")
        if line.strip():
            yield number, line


def plain_utf8(path: str | Path, folder: str | Path) -> Path:
    """`path` itself when it is UTF-8 without a byte-order mark, else a UTF-8 copy of it written into
    `folder` (same name), for tools that read a user's file themselves and would choke on the mark
    (accelerate's config loader). Raises TextEncodingError as `read_text` does."""
    path = Path(path)
    data = path.read_bytes()
    text = decode_text(data, path)
    if bom_encoding(data) is None:
        return path
    copy = Path(folder) / path.name
    copy.write_text(text, encoding="utf-8")
    return copy


_NOT_UTF8 = re.compile("[\udc80-\udcff]+")  # bytes that are not UTF-8, as "surrogateescape" keeps them
MAX_REPLACED_SHARE = 0.01  # at most 1 byte in 100 (or 4: one character) replaced, else it is no UTF-8
_LISTED_OFFSETS = 10


def repair_utf8(data: bytes) -> tuple[str, str] | None:
    """`data` that is UTF-8 but for a few bytes (a stray byte, a character cut at the end), decoded
    with each such byte as U+FFFD, and a note saying how many bytes were replaced at which byte
    offsets; None when `data` is valid UTF-8, or when it is not UTF-8 with a few flaws: more than
    1 % of its bytes (and more than 4) are not UTF-8, or it has fewer well-formed non-ASCII characters than flaws (then
    it is more likely Latin-1 or Windows-1252, whose accented letters are all invalid UTF-8)."""
    text = data.decode("utf-8", "surrogateescape")
    spans = [match.span() for match in _NOT_UTF8.finditer(text)]
    bad = sum(end - start for start, end in spans)
    if not spans or bad > max(4, MAX_REPLACED_SHARE * len(data)):
        return None
    well_formed = len(re.findall("[^\x00-\x7f\udc80-\udcff]", text))
    if well_formed < len(spans):
        return None
    offsets = [len(text[:start].encode("utf-8", "surrogateescape")) for start, _ in spans[:_LISTED_OFFSETS]]
    more = f" and {len(spans) - _LISTED_OFFSETS} more places" if len(spans) > _LISTED_OFFSETS else ""
    note = (
        f"{bad} byte{'s' if bad > 1 else ''} not UTF-8 replaced by U+FFFD at byte offset"
        f"{'s' if len(spans) > 1 else ''} {', '.join(map(str, offsets))}{more} (the rest is UTF-8)"
    )
    return _NOT_UTF8.sub(lambda match: "\ufffd" * len(match.group()), text), note


# Candidates for text that is neither UTF-8 nor marked: Windows, ISO-8859, regional and DOS code pages.
# Mac and mainframe (EBCDIC) pages are left out: they won short Western texts written in Windows-1252
# (German as Mac Turkish) and are rare in documents today (the eval of this rule: tests/test_textfiles.py).
_CHARDET_ERA = ("MODERN_WEB", "LEGACY_ISO", "LEGACY_REGIONAL", "DOS")
# Windows-1252 wins when chardet rates it at least this share of the best candidate's confidence:
# short Western texts fit several single-byte pages nearly equally (Italian rated Windows-1251 0.15
# against 0.13), while Central European, Baltic and Turkish texts rate Windows-1252 below half
# of their own page (0.43-0.47 in the test sentences).
CP1252_TIE = 0.75


# Three letters in a row, none of them ASCII: what Cyrillic, Greek or Hebrew bytes read as Windows-1252
# look like ("Ïðèâåò"), and what Western words do not have ("Grüße", "päivää", "ação": two at most).
_FOREIGN_RUN = re.compile(r"[^\W\d_A-Za-z]{3,}")


def _letters_by_script(text: str) -> tuple[int, int]:
    """(Latin letters, letters of other scripts) in `text`, by their Unicode names."""
    import unicodedata

    latin = other = 0
    for c in text:
        if c.isalpha():
            if c.isascii() or unicodedata.name(c, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    return latin, other


def _western_instead(data: bytes, detected: str) -> bool:
    """Whether `data` is Western text in Windows-1252 that chardet read as another code page: that page
    puts a minority of letters of another script among mostly Latin ones ("Preis: 5 א" for "5 €" as
    DOS Hebrew, "Dйjа vu"), while Windows-1252 reads every byte and makes no run of three non-ASCII
    letters (which Cyrillic, Greek or Hebrew text read as Windows-1252 makes)."""
    try:
        western = data.decode("cp1252")
        latin, other = _letters_by_script(data.decode(detected))
    except (UnicodeDecodeError, LookupError):
        return False
    return 0 < other <= latin and not _FOREIGN_RUN.search(western)


def decode_document(data: bytes, source: str | Path = "<bytes>") -> tuple[str, str | None]:
    """A document's bytes as text, and a note on what was replaced (else None): by its byte-order
    mark, else UTF-8, else UTF-8 with a few bad bytes replaced (`repair_utf8`, the note says where),
    else the code page that chardet (7.x) detects among the Windows, ISO-8859, regional and DOS ones
    (Windows-1252 on a near-tie, `CP1252_TIE`, and where the detected page would strew letters of another
    script through Latin text, `_western_instead`). Raises ValueError for binary data (NUL bytes without
    a UTF-16/32 byte-order mark, or chardet finds no text encoding)."""
    if bom_encoding(data):
        return decode_text(data, source), None
    if b"\x00" in data[:8192]:
        raise ValueError("binary data, not text (it contains NUL bytes; UTF-16 needs a byte-order mark)")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        repaired = repair_utf8(data)
        if repaired is not None:
            return repaired
        import chardet

        era = functools.reduce(operator.or_, (chardet.EncodingEra[name] for name in _CHARDET_ERA))
        found = chardet.detect_all(data, encoding_era=era, prefer_superset=True, compat_names=False)
        if not found or found[0]["encoding"] is None:
            kind = f"; it looks like {found[0]['mime_type']}" if found and found[0].get("mime_type") else ""
            raise ValueError(f"binary data, not text (no text encoding fits{kind})") from None
        best = found[0]
        western = next((r for r in found if r["encoding"] == "cp1252"), None)
        if western is not None and western["confidence"] >= CP1252_TIE * best["confidence"]:
            best = western
        if best["encoding"] != "cp1252" and _western_instead(data, best["encoding"]):
            best = {"encoding": "cp1252"}
        try:
            return data.decode(best["encoding"]), None
        except UnicodeDecodeError as exc:  # chardet reads the first 200 kB; a byte further on may not fit
            return data.decode(best["encoding"], "replace"), (
                f"read as {best['encoding']}; bytes that code page lacks were replaced with U+FFFD "
                f"(the first at byte {exc.start})"
            )
