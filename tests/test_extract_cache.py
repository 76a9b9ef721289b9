"""The extraction cache is keyed per format by the code of that format's readers and the converting
libraries' versions: a text cached by an older reader is converted again, an unchanged reader is
served from the cache, and a change to one format's reader (or a PDF-only option) leaves the other
formats' entries valid.

Run: .venv/bin/pytest tests/test_extract_cache.py
"""

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest

import lorapipe.extract as extract
from lorapipe import extract_documents

PACKAGE = Path(extract.__file__).parent
TEXT = "Low-rank adaptation trains two thin matrices beside each frozen weight matrix.\n"


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(TEXT, encoding="utf-8")
    return folder


def _run(docs, out, cache):
    (row,) = extract_documents(docs, out, workers=1, cache_dir=cache)
    return row, (out / row["output"]).read_text(encoding="utf-8")


def test_an_unchanged_reader_is_served_from_the_cache(tmp_path, docs):
    first, text = _run(docs, tmp_path / "out", tmp_path / "cache")
    again, cached_text = _run(docs, tmp_path / "again", tmp_path / "cache")
    assert not first["cached"] and again["cached"] and cached_text == text == TEXT


def test_a_text_cached_by_an_older_reader_is_converted_again(tmp_path, docs, monkeypatch):
    """What a user's cache holds after an upgrade: entries written by the reader before the fix."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(extract, "reader_fingerprint", lambda kind: "reader-before-the-fix")
    _run(docs, tmp_path / "old", cache)
    (entry,) = cache.rglob("*.json")
    stale = json.loads(entry.read_text())
    stale["pages"] = ["Stale text that the old, defective reader produced for this document."]
    entry.write_text(json.dumps(stale))
    row, text = _run(docs, tmp_path / "still-old", cache)
    assert row["cached"] and text.startswith("Stale text")  # the same reader does reuse its entry

    monkeypatch.undo()  # the fixed reader: its own fingerprint
    row, text = _run(docs, tmp_path / "new", cache)
    assert not row["cached"] and text == TEXT
    assert len(list(cache.rglob("*.json"))) == 2  # the old entry is left alone, never read


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "extract"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    yield copy
    extract.reader_fingerprint.cache_clear()


KINDS = sorted(set(extract.FORMATS.values()))


def _fingerprints(package):
    extract.reader_fingerprint.cache_clear()
    return {kind: extract.reader_fingerprint(kind, package) for kind in KINDS}


def _edit(path, addition):
    with path.open("a") as handle:
        handle.write(addition)


def test_the_fingerprint_follows_the_readers_code(package_copy):
    base = _fingerprints(PACKAGE)
    assert _fingerprints(package_copy) == base
    assert all(len(value) == 16 for value in base.values()) and len(set(base.values())) == len(KINDS)

    for not_a_reader in ("clean.py", "workers.py", "__init__.py"):
        _edit(package_copy / not_a_reader, "\nX = 1  # cleaning and carrying do not change the raw text\n")
    for module in ("formats.py", "markup.py", "pdftext.py"):  # comments and docstrings are not code
        _edit(package_copy / module, '\n# a comment\n\n\ndef _later():\n    """Only a docstring."""\n')
    with_comments = _fingerprints(package_copy)
    _edit(package_copy / "formats.py", '\n\ndef _later():\n    """Another docstring."""\n')
    assert _fingerprints(package_copy) == with_comments
    (package_copy / "pdftext.py").write_text("# a comment only\n" + (PACKAGE / "pdftext.py").read_text())
    (package_copy / "markup.py").write_text("# a comment only\n" + (PACKAGE / "markup.py").read_text())
    (package_copy / "formats.py").write_text("# a comment only\n" + (PACKAGE / "formats.py").read_text())
    assert _fingerprints(package_copy) == base

    # the HTML, EPUB and DOCX reader: their entries convert again, the PDFs' (docling, OCR) stay
    _edit(package_copy / "markup.py", "\nCELL_SEP = ' ; '\n")
    changed = _fingerprints(package_copy)
    assert {kind for kind in KINDS if changed[kind] != base[kind]} == {"html", "epub", "docx"}

    # the PDF code, in its own module or in its reader in formats.py: only PDFs convert again
    _edit(package_copy / "pdftext.py", "\nACROSS = 0.4\n")
    assert {kind for kind in KINDS if _fingerprints(package_copy)[kind] != changed[kind]} == {"pdf"}
    (package_copy / "pdftext.py").write_text((PACKAGE / "pdftext.py").read_text())
    source = (package_copy / "formats.py").read_text()
    (package_copy / "formats.py").write_text(source.replace("pdfplumber.open(str(path))", "pdfplumber.open(path)"))
    assert {kind for kind in KINDS if _fingerprints(package_copy)[kind] != changed[kind]} == {"pdf"}

    # a reader module added later (imported by no reader yet): every format, to be safe
    (package_copy / "pdf_text.py").write_text("X = 1\n")
    later = _fingerprints(package_copy)
    assert all(later[kind] != changed[kind] for kind in KINDS if kind != "pdf")


def test_the_fingerprint_follows_the_converting_libraries(monkeypatch):
    before = _fingerprints(PACKAGE)
    real = importlib.metadata.version

    def newer_pdfplumber(name):
        return "99.0" if name == "pdfplumber" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", newer_pdfplumber)
    try:
        after = _fingerprints(PACKAGE)
        assert {kind for kind in KINDS if after[kind] != before[kind]} == {"pdf"}
    finally:
        monkeypatch.undo()
        extract.reader_fingerprint.cache_clear()
    assert _fingerprints(PACKAGE) == before


def test_pdf_options_do_not_invalidate_other_formats(tmp_path):
    """A new pdf_backend (or device) converts the PDFs again and serves the Markdown from the cache."""
    from helpers import SAMPLE_DOCS

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    (docs / "a.md").write_text(TEXT, encoding="utf-8")
    cache = tmp_path / "cache"
    extract_documents(docs, tmp_path / "one", pdf_backend="pdfplumber", workers=1, cache_dir=cache)
    rows = extract_documents(docs, tmp_path / "two", pdf_backend="pdfplumber", device="cpu", cache_dir=cache)
    assert all(row["cached"] for row in rows)  # the device changes no pdfplumber text
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "three", cache_dir=cache)}
    assert rows["a.md"]["cached"] and not rows["reproducible-pipelines.pdf"]["cached"]
    assert extract.format_options("html", {"pdf_backend": "docling", "device": "cuda"}) == {}
    options = {"pdf_backend": "docling", "device": "cuda", "ocr": True, "artifacts_path": None}
    assert extract.format_options("pdf", options) == options
    assert extract.format_options("pdf", {**options, "pdf_backend": "docling-native"}) == {
        "pdf_backend": "docling-native"
    }
