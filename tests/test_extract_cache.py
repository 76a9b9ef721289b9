"""The extraction cache is keyed by the readers' own code and the converting libraries' versions: a
text cached by an older reader is converted again, an unchanged reader is served from the cache.

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
    monkeypatch.setattr(extract, "reader_fingerprint", lambda: "reader-before-the-fix")
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


def test_the_fingerprint_follows_the_readers_code(package_copy):
    fingerprint = extract.reader_fingerprint
    assert fingerprint(package_copy) == fingerprint(PACKAGE)
    assert len(fingerprint(PACKAGE)) == 16

    for not_a_reader in ("clean.py", "workers.py", "__init__.py"):
        with (package_copy / not_a_reader).open("a") as handle:
            handle.write("\n# cleaning and carrying do not change the raw text\n")
    fingerprint.cache_clear()
    assert fingerprint(package_copy) == fingerprint(PACKAGE)

    with (package_copy / "formats.py").open("a") as handle:
        handle.write("\n# a fixed reader\n")
    fingerprint.cache_clear()
    changed = fingerprint(package_copy)
    assert changed != fingerprint(PACKAGE)

    (package_copy / "pdf_text.py").write_text("# a reader module added later\n")
    fingerprint.cache_clear()
    assert fingerprint(package_copy) not in (changed, fingerprint(PACKAGE))


def test_the_fingerprint_follows_the_converting_libraries(monkeypatch):
    before = extract.reader_fingerprint()
    real = importlib.metadata.version

    def newer_pdfplumber(name):
        return "99.0" if name == "pdfplumber" else real(name)

    monkeypatch.setattr(importlib.metadata, "version", newer_pdfplumber)
    extract.reader_fingerprint.cache_clear()
    try:
        assert extract.reader_fingerprint() != before
    finally:
        monkeypatch.undo()
        extract.reader_fingerprint.cache_clear()
    assert extract.reader_fingerprint() == before
