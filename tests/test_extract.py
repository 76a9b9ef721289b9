"""Extraction: every sample format, the manifest contract, bad input, and PDF text quality.

Run: .venv/bin/pytest tests/test_extract.py
"""

import difflib
import json
import re
import shutil

import pytest

from conftest import FIXTURES, SAMPLE_DOCS
from lorapipe import extract_documents
from lorapipe.extract import clean_text

MANIFEST_KEYS = {"source", "sha256", "bytes", "format", "extractor", "pages", "chars", "status", "error",
                 "output", "seconds"}


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("extract") / "text"
    return out, extract_documents([SAMPLE_DOCS], out)


def test_sample_corpus_formats_all_extract(sample_manifest):
    out, manifest = sample_manifest
    by_format = {row["format"]: row for row in manifest}
    assert {"pdf", "epub", "markdown", "html", "docx"} <= set(by_format)
    for row in manifest:
        assert set(row) == MANIFEST_KEYS
        assert row["status"] == "ok", row
        text = (out / row["output"]).read_text()
        assert len(text) == row["chars"] + 1 and row["chars"] > 1000
    assert by_format["pdf"]["extractor"] == "docling-native" and by_format["pdf"]["pages"] >= 1
    assert "Content hashes instead of timestamps" in (out / by_format["pdf"]["output"]).read_text()
    assert "Chapter 2. The GGUF format" in (out / by_format["epub"]["output"]).read_text()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == manifest
    assert sorted(p.name for p in out.iterdir()) == sorted([r["output"] for r in manifest] + ["manifest.jsonl"])


def test_corrupted_pdf_is_recorded_and_others_go_through(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "lora-primer.md", docs)
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    (docs / "notes.xyz").write_text("unsupported")
    manifest = {row["source"].rsplit("/", 1)[-1]: row for row in extract_documents(docs, tmp_path / "out")}
    assert manifest["broken.pdf"]["status"] == "failed"
    assert "docling" in manifest["broken.pdf"]["error"] and "pdfplumber" in manifest["broken.pdf"]["error"]
    assert manifest["notes.xyz"]["status"] == "skipped" and "unsupported" in manifest["notes.xyz"]["error"]
    assert manifest["lora-primer.md"]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lora-primer.md.txt", "manifest.jsonl"]


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        extract_documents(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_usable_text_raises(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_text("   \n")
    (docs / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError, match="no text was extracted"):
        extract_documents(docs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_json_report_and_nested_folders(tmp_path):
    docs = tmp_path / "docs" / "reports" / "2026"
    docs.mkdir(parents=True)
    report = {"sections": {"INTRODUCTION": {"improved": "The intro text is long enough."},
                           "METHODS": {"improved": "We measured twice."}}}
    (docs / "r.json").write_text(json.dumps(report))
    (manifest,) = extract_documents(tmp_path / "docs", tmp_path / "out")
    assert manifest["output"] == "reports__2026__r.json.txt"
    text = (tmp_path / "out" / manifest["output"]).read_text()
    assert text.startswith("### INTRODUCTION:\nThe intro text") and "### METHODS:\nWe measured twice." in text


def test_inputs_are_not_modified(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS, docs)
    before = {p.name: p.read_bytes() for p in docs.iterdir()}
    extract_documents(docs, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in docs.iterdir()} == before


def test_clean_text_normalises():
    assert clean_text("Cafe\u0301  \r\n\r\n\r\n\r\nnext  \n") == "Café\n\nnext"


def _words(text):
    return re.sub(r"\s+", " ", re.sub(r"[#*|`_>\-]+", " ", text)).strip().lower().split()


def test_docling_native_pdf_matches_ground_truth(tmp_path):
    """A two-column arXiv page (docling test data, MIT) against docling's own ground truth."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(FIXTURES / "corpus" / "2305.03393v1-pg9.pdf", docs)
    (row,) = extract_documents(docs, tmp_path / "out", pdf_backend="docling-native")
    truth = (FIXTURES / "corpus" / "2305.03393v1-pg9.groundtruth.md").read_text()
    text = (tmp_path / "out" / row["output"]).read_text()
    ratio = difflib.SequenceMatcher(None, _words(text), _words(truth), autojunk=False).ratio()
    assert ratio > 0.85, ratio


def test_pdfplumber_backend(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    (row,) = extract_documents(docs, tmp_path / "out", pdf_backend="pdfplumber")
    assert row["extractor"] == "pdfplumber" and row["status"] == "ok"
