"""The bad-input corpus: documents as users have them (broken, encrypted, empty, binary, huge, deep,
oddly named, linked out of the tree), labeled rows with broken lines, and wrong-typed params. Each
case states its expected outcome, a clear message naming the file, and the rest still processed.
RELIABILITY.md lists the same cases.

Run: .venv/bin/pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, TEXT
from lorapipe import build_dataset, extract_documents

GOOD = "A readable page of text about low-rank adaptation, long enough to keep."
DEEP = Path(*[f"level-{i:02d}-of-a-deep-folder-tree" for i in range(40)])  # about 1.3 kB of path
LATIN1_NAME = b"caf\xe9 cr\xe8me.md"  # a file name in Latin-1 bytes, not UTF-8 (an old archive)


def _pdf_bytes(text: str | None = GOOD, password: str | None = None) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.multi_cell(0, 8, text * 6)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    return bytes(pdf.output())


ZERO_PAGE_PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
    b"trailer << /Root 1 0 R /Size 3 >>\n%%EOF\n"
)

# source name (relative to the corpus) → (expected status, words the message must hold, or None when ok)
CASES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "corrupted.pdf": ("failed", ("pdfplumber",)),
    "truncated.pdf": ("failed", ("pdfplumber",)),
    "encrypted.pdf": ("failed", ("encrypted",)),
    "zero-pages.pdf": ("failed", ("the PDF has no pages",)),
    "zero-bytes.pdf": ("skipped", ("empty file (0 bytes)",)),
    "zero-bytes.md": ("skipped", ("empty file (0 bytes)",)),
    "binary.txt": ("failed", ("binary data, not text",)),
    "malformed.json": ("failed", ("not valid JSON", "line 1")),
    "spreadsheet.xlsx": ("skipped", ("unsupported format .xlsx",)),
    str(DEEP / "deep.md"): ("ok", None),
    "  spaces  around  .md": ("ok", None),
    "名前 ünïcødé 🎉.md": ("ok", None),
    "line\nbreak.md": ("ok", None),
    "caf\ufffd cr\ufffdme.md": ("ok", None),
    "a__b/c.md": ("ok", None),
    "a/b__c.md": ("ok", None),
    "link-out.md": ("skipped", ("outside the input folder", "not followed")),
    "link-out-folder": ("skipped", ("symbolic link to a folder", "not followed")),
    "link-loop": ("skipped", ("symbolic link to a folder", "not followed")),
    "link-broken.md": ("skipped", ("not a regular file",)),
    "good.pdf": ("ok", None),
}


def build_bad_corpus(root: Path) -> Path:
    """Write the corpus under `root`/docs (and a folder outside it that links point to)."""
    docs, outside = root / "docs", root / "outside"
    docs.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.md").write_text("Text outside the input tree that must never be read. " * 3)
    rng = random.Random(0)
    good_pdf = _pdf_bytes()
    (docs / "good.pdf").write_bytes(good_pdf)
    (docs / "corrupted.pdf").write_bytes(b"%PDF-1.7\n" + bytes(rng.randrange(256) for _ in range(4000)))
    (docs / "truncated.pdf").write_bytes(good_pdf[: len(good_pdf) // 3])
    (docs / "encrypted.pdf").write_bytes(_pdf_bytes(password="s3cret"))
    (docs / "zero-pages.pdf").write_bytes(ZERO_PAGE_PDF)
    (docs / "zero-bytes.pdf").write_bytes(b"")
    (docs / "zero-bytes.md").write_bytes(b"")
    (docs / "binary.txt").write_bytes(bytes(rng.randrange(256) for _ in range(20000)))
    (docs / "malformed.json").write_text('{"sections": {"INTRO": {"improved": "cut off here')
    (docs / "spreadsheet.xlsx").write_bytes(b"PK\x03\x04" + bytes(100))
    (docs / DEEP).mkdir(parents=True)
    (docs / DEEP / "deep.md").write_text(f"# Deep\n\n{GOOD}\n")
    for name in ("  spaces  around  .md", "名前 ünïcødé 🎉.md", "line\nbreak.md"):
        (docs / name).write_text(f"# {name.strip()}\n\n{GOOD}\n")
    with open(os.path.join(os.fsencode(docs), LATIN1_NAME), "wb") as handle:
        handle.write(f"# Latin-1 name\n\n{GOOD}\n".encode())
    for folder, name in (("a__b", "c.md"), ("a", "b__c.md")):  # the same flat output name, naively
        (docs / folder).mkdir(exist_ok=True)
        (docs / folder / name).write_text(f"# {folder}/{name}\n\n{GOOD} ({folder}/{name})\n")
    (docs / "link-out.md").symlink_to(outside / "secret.md")
    (docs / "link-out-folder").symlink_to(outside, target_is_directory=True)
    (docs / "link-loop").symlink_to(docs, target_is_directory=True)
    (docs / "link-broken.md").symlink_to(docs / "nowhere.md")
    return docs


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    docs = build_bad_corpus(root)
    rows = extract_documents(docs, root / "out", workers=2, timeout_s=120, cache_dir=root / "cache")
    return docs, root / "out", {str(Path(row["source"]).relative_to(docs.as_posix())): row for row in rows}


def test_every_file_of_the_corpus_has_one_manifest_row(extracted):
    _, out, rows = extracted
    assert set(rows) == set(CASES)
    written = [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(written) == len(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_case(extracted, name):
    _, out, rows = extracted
    status, words = CASES[name]
    row = rows[name]
    assert row["status"] == status, row
    if status == "ok":
        text = (out / row["output"]).read_text(encoding="utf-8")
        assert GOOD in text and len(row["output"].encode()) <= 200
    else:
        assert all(word in row["error"] for word in words), row["error"]
        log = (out / "extract.log").read_text(encoding="utf-8")
        assert (
            any(row["source"] in line and row["error"] in line for line in log.splitlines()) or "\n" in row["source"]
        )  # the log is one line per file; a name with a line break spans two


def test_sources_with_the_same_flat_name_get_separate_outputs(extracted):
    _, out, rows = extracted
    first, second = rows["a__b/c.md"], rows["a/b__c.md"]
    assert first["output"] != second["output"]
    assert "(a__b/c.md)" in (out / first["output"]).read_text()
    assert "(a/b__c.md)" in (out / second["output"]).read_text()


def test_nothing_outside_the_input_tree_is_read(extracted):
    _, out, _ = extracted
    assert not any("outside the input tree" in p.read_text(encoding="utf-8", errors="replace") for p in out.iterdir())


def test_the_extracted_corpus_builds_a_dataset(extracted, tmp_path, tiny_model_dir):
    _, out, rows = extracted
    build_dataset(
        out, tiny_model_dir, tmp_path / "dataset", max_seq_len=64, overlap_tokens=8, min_tokens=4, split_by="chunk"
    )
    sources = {
        json.loads(line)["source"]
        for name in ("train.jsonl", "val.jsonl")
        for line in (tmp_path / "dataset" / name).read_text(encoding="utf-8").splitlines()
    }
    assert sources <= {row["source"] for row in rows.values() if row["status"] == "ok"}


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_a_100_mb_text_file_is_extracted_in_bounded_time_and_memory(tmp_path):
    """Timing is not asserted (bench/ measures); the file goes through, whole, beside a normal one."""
    docs = tmp_path / "docs"
    docs.mkdir()
    paragraph = (TEXT + "\n\n").encode()
    with open(docs / "huge.txt", "wb") as handle:
        for _ in range(100 * 2**20 // len(paragraph) + 1):
            handle.write(paragraph)
    (docs / "small.md").write_text(f"# Small\n\n{GOOD}\n")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", cache_dir=tmp_path / "c")}
    assert rows["huge.txt"]["status"] == "ok" and rows["small.md"]["status"] == "ok"
    assert rows["huge.txt"]["bytes"] >= 100 * 2**20
    assert (tmp_path / "out" / rows["huge.txt"]["output"]).stat().st_size >= 0.95 * rows["huge.txt"]["bytes"]


# --- labeled rows ---------------------------------------------------------------------------------


def _labeled(folder: Path) -> Path:
    folder.mkdir()
    good = [json.loads(line) for line in (FIXTURES / "labeled" / "snips_sample.jsonl").read_text().splitlines()]
    lines = [json.dumps(row) for row in good[:12]]
    lines.insert(3, '{"query": "play some jazz", "data": {"intent": ')  # cut off mid-row
    lines.insert(7, "not json at all")
    lines.insert(9, "[1, 2, 3]")  # valid JSON, not a row
    (folder / "queries.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_malformed_jsonl_names_the_file_and_line(tmp_path, tiny_model_dir):
    labeled = _labeled(tmp_path / "labeled")
    with pytest.raises(ValueError) as error:
        build_dataset(tmp_path / "no-text", tiny_model_dir, tmp_path / "dataset", labeled_dir=labeled, mode="chat")
    assert "queries.jsonl:4" in str(error.value) and "dataset.on_bad_row: skip" in str(error.value)
    assert not (tmp_path / "dataset").exists()


def test_malformed_jsonl_rows_are_skipped_on_request_and_counted(tmp_path, tiny_model_dir):
    labeled = _labeled(tmp_path / "labeled")
    build_dataset(
        tmp_path / "no-text", tiny_model_dir, tmp_path / "dataset", labeled_dir=labeled, mode="chat", on_bad_row="skip"
    )
    stats = json.loads((tmp_path / "dataset" / "stats.json").read_text())
    assert stats["bad_rows_skipped"] == 3 and stats["rows"]["train"] + stats["rows"]["val"] == 12


# --- params ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [("lora.rank", "eight"), ("train.packing", "sometimes"), ("dataset.max_seq_len", [512]), ("export.quants", "Q9_X")],
)
def test_a_stage_with_a_wrong_typed_param_stops_before_any_work_and_names_the_key(tmp_path, key, value):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    section, _, name = key.partition(".")
    raw[section][name] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    stage = {"lora": "train", "train": "train", "dataset": "dataset", "export": "export"}[section]
    result = subprocess.run(
        [sys.executable, "-m", f"lorapipe.stages.{stage}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0 and key in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr  # a message, not a stack trace
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
