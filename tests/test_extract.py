"""Extraction: every sample format, the manifest contract, bad input, and PDF text quality.

Run: .venv/bin/pytest tests/test_extract.py
"""

import difflib
import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import FIXTURES, SAMPLE_DOCS
from lorapipe import extract_documents
from lorapipe.extract import RUN_FIELDS, clean_text, convertible_documents
from lorapipe.io import read_jsonl

MANIFEST_KEYS = {
    "source",
    "sha256",
    "bytes",
    "format",
    "extractor",
    "pages",
    "chars",
    "hyphens_joined",
    "hyphens_kept",
    "status",
    "error",
    "output",
    "cached",
    "seconds",
}


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
    assert [json.loads(line) for line in lines] == [
        {k: v for k, v in row.items() if k not in RUN_FIELDS} for row in manifest
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [r["output"] for r in manifest] + ["manifest.jsonl", "extract.log"]
    )


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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "extract.log",
        "lora-primer.md.txt",
        "manifest.jsonl",
    ]


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        extract_documents(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_named_as_the_input_folder_is_named_so(tmp_path):
    (tmp_path / "doc.md").write_text("# A document\n")
    with pytest.raises(FileNotFoundError, match="input folder .*doc.md is a file: name the folder"):
        extract_documents(tmp_path / "doc.md", tmp_path / "out")


def test_no_input_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no input folder given"):
        extract_documents([], tmp_path / "out")


@pytest.mark.parametrize("out", ["raw/docs", "raw", "raw/docs/texts"])
def test_an_output_folder_overlapping_the_input_folder_is_refused_before_anything_is_deleted(tmp_path, out):
    docs = tmp_path / "raw" / "docs"
    docs.mkdir(parents=True)
    (docs / "one.md").write_text("# One\n\nA document the user keeps.\n")
    (tmp_path / "raw" / "labeled.jsonl").write_text("{}\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="output folder .* input folder .*: extracting there would delete"):
        extract_documents(docs, tmp_path / out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_no_usable_text_raises(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_text("   \n")
    (docs / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError, match="no text was extracted"):
        extract_documents(docs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_documents_gives_an_empty_manifest(tmp_path, capsys):
    # a task from labeled rows alone: data/raw/docs holds only the .gitkeep that keeps it in git
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / ".gitkeep").write_text("")
    assert extract_documents(docs, tmp_path / "out") == []
    assert read_jsonl(tmp_path / "out" / "manifest.jsonl") == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extract.log", "manifest.jsonl"]
    assert (tmp_path / "out" / "extract.log").read_text() == ""
    assert "no documents in" in capsys.readouterr().out


def test_hidden_files_and_folders_are_listed_as_skipped_not_read(tmp_path, capsys):
    docs = tmp_path / "docs"
    (docs / ".git" / "objects").mkdir(parents=True)
    (docs / ".git" / "objects" / "readme.md").write_text("# not a document\n\nGit's own files are never read.\n")
    (docs / ".notes.md").write_text("# Private notes\n\nA hidden file: left out, but listed.\n")
    (docs / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (docs / "guide.md").write_text("# Guide\n\nThe real document, long enough to keep.\n")
    rows = {Path(row["source"]).name: row for row in extract_documents(docs, tmp_path / "out")}
    assert sorted(rows) == [".git", ".notes.md", "guide.md"]  # nothing inside .git; .DS_Store is no document
    assert rows["guide.md"]["status"] == "ok"
    assert rows[".git"]["error"].startswith("hidden folder (its name starts with a dot): not read")
    assert rows[".notes.md"]["status"] == "skipped" and "rename it to extract it" in rows[".notes.md"]["error"]
    err = capsys.readouterr().err
    assert "left out 2 hidden file(s) or folder(s)" in err and ".notes.md" not in err  # one line, not one each
    assert convertible_documents(docs) == [docs / "guide.md"]
    (docs / ".#guide.md").symlink_to("user@host.1234")  # an editor's lock file: a dangling link, never listed
    (docs / ".md").write_text("# all extension\n")
    (tmp_path / "elsewhere").mkdir()
    (docs / ".linked").symlink_to(tmp_path / "elsewhere")
    rows = {Path(row["source"]).name: row for row in extract_documents(docs, tmp_path / "out")}
    assert sorted(rows) == [".git", ".linked", ".md", ".notes.md", "guide.md"]
    assert rows[".linked"]["error"].startswith("hidden folder") and rows[".md"]["error"].startswith("hidden file")
    only = tmp_path / "only"
    only.mkdir()
    (only / ".draft.md").write_text("# draft\n")
    assert extract_documents(only, tmp_path / "out2")[0]["status"] == "skipped"
    assert "a manifest of 1 hidden file(s) or folder(s), left out," in capsys.readouterr().out


def test_json_report_and_nested_folders(tmp_path):
    docs = tmp_path / "docs" / "reports" / "2026"
    docs.mkdir(parents=True)
    report = {
        "sections": {
            "INTRODUCTION": {"improved": "The intro text is long enough."},
            "METHODS": {"improved": "We measured twice."},
        }
    }
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


def similarity(text, truth):
    """The scorer of ../shared/tools/textsim.py: difflib ratio over lower-cased words, Markdown removed."""
    return difflib.SequenceMatcher(None, _words(text), _words(truth), autojunk=False).ratio()


QUALITY_DOCS = [
    "2305.03393v1-pg9.pdf",
    "multi_page.pdf",
    "normal_4pages.pdf",
    "right_to_left_01.pdf",
    "epub_purvis_poetry.epub",
]


@pytest.fixture(scope="module")
def quality_extraction(tmp_path_factory):
    """The real corpus (docling test data, MIT; see fixtures/README.md) through the default path."""
    work = tmp_path_factory.mktemp("quality")
    docs = work / "docs"
    docs.mkdir()
    for name in QUALITY_DOCS:
        shutil.copy(FIXTURES / "corpus" / name, docs)
    manifest = extract_documents(docs, work / "out", cache_dir=work / "cache")
    return work / "out", {Path(row["source"]).name: row for row in manifest}


@pytest.mark.parametrize("name", QUALITY_DOCS)
def test_default_path_meets_the_quality_bar(quality_extraction, name):
    out, manifest = quality_extraction
    row = manifest[name]
    assert row["status"] == "ok", row
    truth = (FIXTURES / "corpus" / f"{name.rsplit('.', 1)[0]}.groundtruth.md").read_text()
    assert similarity((out / row["output"]).read_text(), truth) >= 0.92


def test_pdfplumber_backend(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    (row,) = extract_documents(docs, tmp_path / "out", pdf_backend="pdfplumber")
    assert row["extractor"] == "pdfplumber" and row["status"] == "ok"


# --- incremental, resumable, crash-proof --------------------------------------------------------


def _docs(tmp_path, names=("a.md", "b.md", "c.md")):
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for name in names:
        (docs / name).write_text(f"# {name}\n\nThis document is called {name} and has enough text to keep.\n")
    return docs


def test_adding_a_document_extracts_only_that_one(tmp_path):
    docs = _docs(tmp_path)
    first = extract_documents(docs, tmp_path / "out", workers=1)
    assert [row["cached"] for row in first] == [False, False, False]
    (docs / "d.md").write_text("# d\n\nA new document that arrived later, with enough text.\n")
    second = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", workers=1)}
    assert {name: row["cached"] for name, row in second.items()} == {
        "a.md": True,
        "b.md": True,
        "c.md": True,
        "d.md": False,
    }
    assert (tmp_path / "out" / "a.md.txt").read_text().startswith("# a.md")
    again = extract_documents(docs, tmp_path / "out", workers=1, resume=False)
    assert not any(row["cached"] for row in again)


def test_outputs_from_the_cache_are_byte_equal_to_a_fresh_extraction(tmp_path):
    """Conversions finish in any order across the workers; cached texts come first. Neither shows."""
    extract_documents(SAMPLE_DOCS, tmp_path / "fresh", workers=2)
    again = extract_documents(SAMPLE_DOCS, tmp_path / "cached", workers=2)
    assert all(row["cached"] for row in again)
    assert {p.name: p.read_bytes() for p in (tmp_path / "fresh").iterdir()} == {
        p.name: p.read_bytes() for p in (tmp_path / "cached").iterdir()
    }


def test_changed_params_do_not_reuse_the_cache(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    extract_documents(docs, tmp_path / "out", pdf_backend="pdfplumber")
    (row,) = extract_documents(docs, tmp_path / "out", pdf_backend="docling-native")
    assert not row["cached"] and row["extractor"] == "docling-native"


def test_kill_9_mid_stage_resumes_where_it_stopped(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    docs = _docs(tmp_path, ("a.md", "b.md", "c.md"))
    cache = tmp_path / "cache"
    code = (
        "from lorapipe import extract_documents; "
        f"extract_documents({str(docs)!r}, {str(tmp_path / 'out')!r}, workers=1, cache_dir={str(cache)!r})"
    )
    env = {**os.environ, "LORAPIPE_FAULT": "extract:hang:c.md"}
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(cache.rglob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the stage and its workers, mid-way through c.md
    process.wait()
    assert len(list(cache.rglob("*.json"))) == 2
    assert not (tmp_path / "out").exists()
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", cache_dir=cache)}
    assert {name: row["cached"] for name, row in rows.items()} == {"a.md": True, "b.md": True, "c.md": False}
    assert all(row["status"] == "ok" for row in rows.values())


def test_a_crashing_converter_falls_back_to_pdfplumber(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    shutil.copy(SAMPLE_DOCS / "lora-primer.md", docs)
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:crash:reproducible-pipelines.pdf")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", pdf_backend="docling-native")}
    pdf = rows["reproducible-pipelines.pdf"]
    assert pdf["status"] == "ok" and pdf["extractor"] == "pdfplumber"
    assert "crashed (SIGSEGV)" in pdf["error"]
    assert rows["lora-primer.md"]["status"] == "ok"
    # The fallback's text is not cached under docling's key: the next run converts with docling again.
    monkeypatch.delenv("LORAPIPE_FAULT")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", pdf_backend="docling-native")}
    pdf = rows["reproducible-pipelines.pdf"]
    assert (pdf["extractor"], pdf["cached"], pdf["error"]) == ("docling-native", False, None)
    assert rows["lora-primer.md"]["cached"]


def test_a_failing_docling_falls_back_without_caching_the_fallback(tmp_path, monkeypatch):
    """docling raising (not crashing) also falls back to pdfplumber, says so, and marks the text as a
    fallback's, which is never cached under the key of the converter that was asked for."""
    from lorapipe.extract import _cacheable, formats
    from lorapipe.extract.workers import Job

    def broken(*args, **kwargs):
        raise MemoryError("out of memory this once")

    monkeypatch.setattr(formats, "read_pdf_docling", broken)
    extracted = formats.read_pdf(SAMPLE_DOCS / "reproducible-pipelines.pdf", "docling-native")
    assert extracted.extractor == "pdfplumber" and extracted.fallback
    assert extracted.note == "docling-native failed (out of memory this once); pdfplumber used"
    job = Job(0, Path("x.pdf"), {"kind": "pdf", "pdf_backend": "docling-native"})
    assert not _cacheable(job, "ok", vars(extracted))
    assert _cacheable(job, "ok", {**vars(extracted), "fallback": False})
    assert not _cacheable(Job(0, Path("x.pdf"), {}, 1, "timed out"), "ok", {"fallback": False})


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_a_hanging_converter_times_out_and_falls_back(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "reproducible-pipelines.pdf", docs)
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:hang:reproducible-pipelines.pdf")
    (row,) = extract_documents(docs, tmp_path / "out", pdf_backend="docling-native", timeout_s=20)
    assert row["status"] == "ok" and row["extractor"] == "pdfplumber" and "timed out after 20 s" in row["error"]


def test_a_crash_without_fallback_is_recorded_as_failed(tmp_path, monkeypatch):
    docs = _docs(tmp_path, ("a.md", "b.md"))
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:crash:a.md")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", workers=2)}
    assert rows["a.md"]["status"] == "failed" and "crashed (SIGSEGV)" in rows["a.md"]["error"]
    assert rows["b.md"]["status"] == "ok"
    monkeypatch.delenv("LORAPIPE_FAULT")  # the crash is not cached: the next run retries a.md
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", workers=2)}
    assert rows["a.md"]["status"] == "ok" and not rows["a.md"]["cached"] and rows["b.md"]["cached"]


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_parallel_workers_give_the_same_output(tmp_path):
    one = extract_documents([SAMPLE_DOCS], tmp_path / "one", workers=1, resume=False)
    two = extract_documents([SAMPLE_DOCS], tmp_path / "two", workers=2, resume=False)
    assert [r["output"] for r in one] == [r["output"] for r in two]
    for row in one:
        assert (tmp_path / "one" / row["output"]).read_bytes() == (tmp_path / "two" / row["output"]).read_bytes()
    log = (tmp_path / "two" / "extract.log").read_text()
    assert all(Path(r["source"]).name in log for r in two)


def test_cli_takes_several_input_folders(tmp_path):
    from lorapipe.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.md").write_text("First folder, with enough text in it.")
    (tmp_path / "b" / "x.md").write_text("Second folder, with enough text in it.")
    assert (
        main(
            [
                "extract",
                "--params",
                str(SAMPLE_DOCS.parents[2] / "params.yaml"),
                "--input-dir",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--output-dir",
                str(tmp_path / "out"),
                "--min-length",
                "5",
                "--device",
                "cpu",
                "--no-resume",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.txt")) == ["a__x.md.txt", "b__x.md.txt"]


# --- choosing the PDF backend ---------------------------------------------------------------------


def test_auto_uses_docling_layout_only_when_available_offline(tmp_path, monkeypatch):
    from lorapipe.extract import formats

    real_find_spec = formats.importlib.util.find_spec
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(
        formats.importlib.util, "find_spec", lambda name: None if name == "docling_ibm_models" else real_find_spec(name)
    )
    assert formats.resolve_pdf_backend("auto") == "docling-native"  # package not installed

    monkeypatch.setattr(formats.importlib.util, "find_spec", lambda name: object())
    assert formats.resolve_pdf_backend("auto") == "docling-native"  # installed, but no models offline
    (tmp_path / "hub" / "models--docling-project--docling-layout-heron").mkdir(parents=True)
    assert formats.resolve_pdf_backend("auto") == "docling"  # models in the local cache
    artifacts = tmp_path / "artifacts"
    assert formats.resolve_pdf_backend("auto", str(artifacts)) == "docling-native"  # empty artifacts path
    artifacts.mkdir()
    (artifacts / "model.safetensors").write_bytes(b"x")
    assert formats.resolve_pdf_backend("auto", str(artifacts)) == "docling"
    assert formats.resolve_pdf_backend("pdfplumber", str(artifacts)) == "pdfplumber"


def test_docling_layout_pipeline_configuration():
    from docling.datamodel.base_models import InputFormat

    from lorapipe.extract.formats import _docling_converter

    converter = _docling_converter("docling", "cpu", True, "/models")
    options = converter.format_to_options[InputFormat.PDF].pipeline_options
    assert options.do_ocr and options.do_table_structure
    assert str(options.artifacts_path) == "/models" and options.accelerator_options.device == "cpu"


# --- cleaning -------------------------------------------------------------------------------------


def test_running_headers_footers_and_page_numbers_are_removed():
    from lorapipe.extract.clean import clean_pages

    topics = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"]
    pages = [
        f"Journal of Tests · Vol. 3 · p. {i}\n{topic} is discussed with hyphen-\nation and more.\n"
        f"Confidential draft\n{i}"
        for i, topic in enumerate(topics, 1)
    ]
    text = clean_pages(pages, paged=True)
    assert "Journal of Tests" not in text and "Confidential draft" not in text
    assert "hyphenation" in text
    assert all(f"{topic} is discussed" in text for topic in topics)
    assert not any(line.strip().isdigit() for line in text.splitlines())


def test_a_number_or_a_numeral_like_word_ending_a_page_is_text_unless_it_follows_the_pages():
    from lorapipe.extract.clean import strip_running_lines

    pages = ["Front matter\nfirst\niii", "More front\nmatter\niv", "Body\nin the year\n1450", "Last\nCivil"]
    cleaned = strip_running_lines(pages)  # iii, iv: a sequence (value - position = 3 twice): page numbers
    assert cleaned[0].splitlines() == ["Front matter", "first"] and cleaned[1].splitlines() == ["More front", "matter"]
    assert cleaned[2].endswith("1450") and cleaned[3].endswith("Civil")  # kept: no sequence, no numeral
    # "Page 7" and "7 of 9" say they are page numbers: dropped on any page
    assert strip_running_lines(["Page 7\nText", "Other\n8 of 9"]) == ["Text", "Other"]


def test_single_page_text_keeps_its_lines():
    from lorapipe.extract.clean import clean_pages

    assert clean_pages(["Title\n\nJean-\nPaul wrote it.\n3"], paged=False) == "Title\n\nJean-Paul wrote it.\n3"


# --- bad input ------------------------------------------------------------------------------------


def _pdf(path, text=None, password=None, shapes_only=False):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    if shapes_only:
        pdf.rect(20, 20, 100, 60, style="F")  # a page with no text layer, like a scan
    else:
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, text or "A readable page of text.")
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))


def test_bad_inputs_each_get_a_clear_message(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    _pdf(docs / "secret.pdf", password="s3cret")
    _pdf(docs / "scan.pdf", shapes_only=True)
    (docs / "empty.md").write_bytes(b"")
    (docs / "table.xlsx").write_bytes(b"PK\x03\x04")
    (docs / "latin1.txt").write_bytes("Un café près de la fenêtre, à côté du théâtre ancien.".encode("cp1252"))
    (docs / "rapport d'été — ünïcode.md").write_text("Un rapport d'été avec assez de texte.")
    outside = tmp_path / "outside.md"
    outside.write_text("Text that lives outside the input folder and must not be read.")
    (docs / "link.md").symlink_to(outside)
    _pdf(docs / "good.pdf", "A normal PDF page that should be extracted fine.")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out")}

    assert rows["secret.pdf"]["status"] == "failed" and "encrypted" in rows["secret.pdf"]["error"]
    assert rows["scan.pdf"]["status"] == "skipped" and "OCR is needed" in rows["scan.pdf"]["error"]
    assert "extract.ocr: true" in rows["scan.pdf"]["error"]
    assert rows["empty.md"]["status"] == "skipped" and "empty file" in rows["empty.md"]["error"]
    assert rows["table.xlsx"]["status"] == "skipped" and "unsupported format .xlsx" in rows["table.xlsx"]["error"]
    assert rows["link.md"]["status"] == "skipped" and "not followed" in rows["link.md"]["error"]
    assert rows["latin1.txt"]["status"] == "ok"
    assert "café près de la fenêtre" in (tmp_path / "out" / rows["latin1.txt"]["output"]).read_text()
    odd = rows["rapport d'été — ünïcode.md"]
    assert odd["status"] == "ok" and (tmp_path / "out" / odd["output"]).is_file()
    assert rows["good.pdf"]["status"] == "ok"
    assert outside.read_text().startswith("Text that lives outside")


def test_symlink_inside_the_folder_is_read(tmp_path):
    docs = _docs(tmp_path, ("a.md",))
    (docs / "alias.md").symlink_to(docs / "a.md")
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out")}
    assert rows["alias.md"]["status"] == "ok"
