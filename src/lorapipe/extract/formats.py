"""One reader per document format. Each returns ``(text, pages, extractor)`` or raises with the
reason; `extract_documents` turns a raise into a `failed` manifest line."""

from __future__ import annotations

import functools
import json
from pathlib import Path

FORMATS = {
    ".pdf": "pdf", ".epub": "epub", ".md": "markdown", ".markdown": "markdown", ".txt": "text",
    ".html": "html", ".htm": "html", ".docx": "docx", ".json": "json",
}


def read_plain(path: Path) -> tuple[str, int | None, str]:
    try:
        return path.read_text(encoding="utf-8"), None, "plain"
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


def _html_to_text(markup: str | bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "head", "nav"]):
        tag.decompose()
    return soup.get_text("\n")


def read_html(path: Path) -> tuple[str, int | None, str]:
    return _html_to_text(path.read_bytes()), None, "beautifulsoup"


def read_epub(path: Path) -> tuple[str, int | None, str]:
    import ebooklib
    from ebooklib import epub

    book = epub.read_epub(str(path), options={"ignore_ncx": True})
    chapters = []
    for item_id, _linear in book.spine:  # reading order
        item = book.get_item_with_id(item_id)
        if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT:
            chapters.append(_html_to_text(item.get_content()))
    return "\n\n".join(chapters), len(chapters), "ebooklib"


def read_docx(path: Path) -> tuple[str, int | None, str]:
    import docx

    document = docx.Document(str(path))
    return "\n\n".join(p.text for p in document.paragraphs), None, "python-docx"


def read_json_report(path: Path) -> tuple[str, int | None, str]:
    """A report whose sections hold an `improved` text: ``{"sections": {"INTRO": {"improved": …}}}``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    sections = data.get("sections") if isinstance(data, dict) else None
    if not isinstance(sections, dict):
        raise ValueError('expected a JSON object with "sections": {"NAME": {"improved": "…"}}')
    parts = [f"### {name}:\n{body['improved']}" for name, body in sections.items()
             if isinstance(body, dict) and isinstance(body.get("improved"), str)]
    if not parts:
        raise ValueError('no section holds an "improved" text')
    return "\n\n".join(parts), None, "json-sections"


@functools.cache
def _docling_converter():
    from docling.datamodel.base_models import InputFormat
    from docling.datamodel.pipeline_options import NativePdfPipelineOptions
    from docling.document_converter import DocumentConverter, PdfFormatOption
    from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

    # docling's model-free pipeline: native text layer in reading order, no layout model download.
    option = PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=NativePdfPipelineOptions())
    return DocumentConverter(allowed_formats=[InputFormat.PDF], format_options={InputFormat.PDF: option})


def read_pdf_docling(path: Path) -> tuple[str, int | None, str]:
    result = _docling_converter().convert(str(path), raises_on_error=False)
    if result.status.name not in ("SUCCESS", "PARTIAL_SUCCESS"):
        reasons = "; ".join(e.error_message for e in result.errors) or result.status.name
        raise ValueError(f"docling could not convert it: {reasons}")
    return result.document.export_to_markdown(), len(result.pages), "docling-native"


def read_pdf_pdfplumber(path: Path) -> tuple[str, int | None, str]:
    import pdfplumber

    with pdfplumber.open(str(path)) as pdf:
        pages = [page.extract_text() or "" for page in pdf.pages]
    return "\n\n".join(pages), len(pages), "pdfplumber"


def read_pdf(path: Path, backend: str = "auto") -> tuple[str, int | None, str]:
    """docling's model-free pipeline first (`auto`), pdfplumber when it fails or is chosen."""
    if backend == "pdfplumber":
        return read_pdf_pdfplumber(path)
    try:
        return read_pdf_docling(path)
    except Exception as docling_error:  # noqa: BLE001 - any docling failure falls back
        if backend == "docling-native":
            raise
        try:
            return read_pdf_pdfplumber(path)
        except Exception as plumber_error:  # noqa: BLE001
            raise ValueError(f"docling: {docling_error}; pdfplumber: {plumber_error}") from None


READERS = {
    "epub": read_epub, "markdown": read_plain, "text": read_plain, "html": read_html,
    "docx": read_docx, "json": read_json_report,
}
