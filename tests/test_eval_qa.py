"""The sample corpus's question set, data/raw/eval_qa.jsonl: every row well formed, every document of
data/raw/docs asked about, and every key string found in its document and in its reference answer (so a
right answer can contain it and the reference itself scores a key hit).

Run: .venv/bin/pytest tests/test_eval_qa.py   (the check against the extracted text is marked integration)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import ROOT, SAMPLE_DOCS

from lorapipe.params import DEFAULTS

EVAL_QA = ROOT / "data" / "raw" / "eval_qa.jsonl"
SOURCE_TEXTS = ROOT / "scripts" / "sample_corpus"  # what scripts/make_sample_corpus.py builds the docs from
FIELDS = {"question": str, "answer": str, "source": str, "key": list}
CLOSING_QUESTION = "What does LoRA train, and why does it need less memory than full fine-tuning?"  # make run


def _rows() -> list[dict]:
    lines = EVAL_QA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _flat(text: str) -> str:
    """Lowercase, whitespace runs as one space (extractors break lines in different places)."""
    return re.sub(r"\s+", " ", text).strip().lower()


def _documents() -> list[Path]:
    return sorted(p for p in SAMPLE_DOCS.iterdir() if p.is_file() and not p.name.startswith("."))


def _source_text(document: Path) -> str:
    """The text scripts/make_sample_corpus.py built `document` from (lora-primer.md, evaluating.txt...)."""
    candidates = [SOURCE_TEXTS / document.name, SOURCE_TEXTS / f"{document.stem}.txt"]
    return next(p for p in candidates if p.is_file()).read_text(encoding="utf-8")


def test_rows_have_the_fields_with_the_right_types():
    rows = _rows()
    assert len(rows) >= 20
    for n, row in enumerate(rows, 1):
        assert set(row) == set(FIELDS), f"line {n}: {sorted(row)}"
        for field, kind in FIELDS.items():
            assert isinstance(row[field], kind), f"line {n}: {field} is {type(row[field]).__name__}"
        assert row["question"].strip() and row["question"].endswith("?"), f"line {n}"
        assert row["answer"].strip() and len(row["answer"]) <= 200, f"line {n}: one short sentence"
        assert 1 <= len(row["key"]) <= 3, f"line {n}: {row['key']}"
        assert all(isinstance(k, str) and k.strip() for k in row["key"]), f"line {n}: {row['key']}"
    questions = [row["question"] for row in rows]
    assert len(set(questions)) == len(questions)
    assert CLOSING_QUESTION in questions


def test_sources_are_documents_of_the_sample_corpus_and_cover_all_of_them():
    rows = _rows()
    for n, row in enumerate(rows, 1):
        path = ROOT / row["source"]
        assert path.is_file() and path.parent == SAMPLE_DOCS, f"line {n}: {row['source']}"
    per_document = {doc.relative_to(ROOT).as_posix(): 0 for doc in _documents()}
    for row in rows:
        per_document[row["source"]] += 1
    assert len(per_document) == 5
    assert all(count >= 4 for count in per_document.values()), per_document


def test_the_questions_make_run_scores_cover_every_document():
    """The knowledge evaluation scores the first eval.knowledge_questions rows: they span all five."""
    first = _rows()[: DEFAULTS.eval.knowledge_questions]
    assert {row["source"] for row in first} == {doc.relative_to(ROOT).as_posix() for doc in _documents()}


def test_every_key_is_in_the_reference_answer():
    for n, row in enumerate(_rows(), 1):
        for key in row["key"]:
            assert _flat(key) in _flat(row["answer"]), f"line {n}: key {key!r} not in the answer"


def test_every_key_is_in_the_source_text_of_its_document():
    for n, row in enumerate(_rows(), 1):
        text = _flat(_source_text(ROOT / row["source"]))
        for key in row["key"]:
            assert _flat(key) in text, f"line {n}: key {key!r} not in the text of {row['source']}"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict[str, str]:
    """The five documents extracted as the extract stage does (from the project root, default backends):
    manifest source -> text."""
    from lorapipe import paths
    from lorapipe.extract import extract_documents

    out = tmp_path_factory.mktemp("eval_qa") / "text"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        manifest = extract_documents([paths.RAW_DOCS], out)
    assert all(row["status"] == "ok" for row in manifest), manifest
    return {row["source"]: (out / row["output"]).read_text(encoding="utf-8") for row in manifest}


@pytest.mark.integration  # docling's PDF extraction alone takes about 10 s here
def test_every_key_is_in_the_extracted_text_and_sources_are_the_manifests(extracted):
    for n, row in enumerate(_rows(), 1):
        assert row["source"] in extracted, f"line {n}: {row['source']} is not a manifest source {sorted(extracted)}"
        text = _flat(extracted[row["source"]])
        for key in row["key"]:
            assert _flat(key) in text, f"line {n}: key {key!r} not in the extracted text of {row['source']}"
    assert set(extracted) == {row["source"] for row in _rows()}
