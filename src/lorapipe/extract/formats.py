"""One reader per document format.

Each reader returns an `Extracted`: the text of each page (one entry for formats without pages)
and the name of the extractor that produced it, or raises with the reason; the caller turns a raise
into a `failed` manifest line.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from lorapipe.extract.markup import docx_to_text, html_to_text
from lorapipe.extract.pdftext import repair_doubled_words, unique_chars, without_overprinted_text
from lorapipe.params import PdfBackend
from lorapipe.textfiles import bom_encoding, decode_document

FORMATS = {
    ".pdf": "pdf",
    ".epub": "epub",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".docx": "docx",
    ".json": "json",
}
PDF_BACKENDS = get_args(PdfBackend)  # ("auto", "docling", "docling-native", "pdfplumber")
OCR_HINT = (
    "it has no text layer (a scanned PDF?): OCR is needed. Install the layout extra "
    "(pip install 'lorapipe[layout]') and set extract.pdf_backend: docling and extract.ocr: true"
)


@dataclass
class Extracted:
    pages: list[str]
    extractor: str
    paged: bool = False  # True when `pages` are real pages (running headers can be detected)
    note: str | None = None  # what the reader left out, and why (shown in the manifest's `error`)
    fallback: bool = False  # True when a fallback reader produced it (the chosen one failed): not cached


def read_plain(path: Path) -> Extracted:
    text, note = decode_document(path.read_bytes(), path)
    return Extracted([text], "plain", note=note)


# Front matter: a YAML (---) or TOML (+++) block that opens a Markdown file (Jekyll, Hugo, MkDocs, Obsidian).
_FRONT_MATTER = re.compile(r"\A(?:---[ \t]*\n(?:.*?\n)?---|\+\+\+[ \t]*\n(?:.*?\n)?\+\+\+)[ \t]*(?:\n|\Z)", re.DOTALL)


_METADATA_LINE = re.compile(r"^[\w\"'.-]+[ \t]*(?::|=)")  # "title: …" (YAML), "title = …" (TOML)


def read_markdown(path: Path) -> Extracted:
    """A Markdown file as text (`read_plain`), without the front matter that may open it (a ``---``
    YAML or ``+++`` TOML block of site metadata: layout, tags, dates), which the note counts."""
    extracted = read_plain(path)
    text = extracted.pages[0]
    match = _FRONT_MATTER.match(text.removeprefix("\ufeff"))
    inside = match.group(0).splitlines()[1:-1] if match else []
    # every line metadata ("key: value", "- item", indented, a comment): "---\nSome text\n---" is a rule and
    # a heading, and an unclosed block must not run to a rule further down
    if match and all(not line.strip() or line[0] in " \t#-" or _METADATA_LINE.match(line) for line in inside):
        lines = match.group(0).count("\n") + (not match.group(0).endswith("\n"))
        extracted.pages = [text.removeprefix("\ufeff")[match.end() :]]
        note = f"front matter ({lines} lines of site metadata) left out"
        extracted.note = "; ".join(part for part in (extracted.note, note) if part)
    return extracted


# a charset declared in markup: <meta charset=…>, <meta http-equiv … content="…; charset=…">, <?xml … encoding="…"?>
_DECLARED_CHARSET = re.compile(
    rb"""<(?:meta\b[^>]*?\bcharset|\?xml\b[^>]*?\bencoding)\s*=\s*["']?\s*([\w.:-]+)""", re.IGNORECASE
)


_WHATWG_LABELS = {
    "latin-1": "cp1252",
    "iso8859-1": "cp1252",
    "ascii": "cp1252",
    "utf-16-le": "utf-8",
    "utf-16-be": "utf-8",
    "utf-16": "utf-8",
}


def _markup(data: bytes) -> tuple[str | bytes, str | None]:
    """HTML or XHTML `data` for `html_to_text`, and a note on what was replaced (else None).

    A byte-order mark decides, as BeautifulSoup reads it. Else a charset the markup declares
    (``<meta charset>``, ``<?xml encoding?>``) other than UTF-8 decodes it when every byte fits that
    charset, labels read as browsers read them (ISO-8859-1 and US-ASCII as Windows-1252, UTF-16 as
    UTF-8). UTF-16 without a byte-order mark (NUL bytes at every other place) is read as such. Anything
    else (declared UTF-8, no declaration, a declaration the bytes do not fit) is decoded as a text file is
    (`lorapipe.textfiles.decode_document`: UTF-8, UTF-8 with a few bad bytes replaced and noted, or the
    code page chardet finds, Windows-1252 on a near-tie), so a Latin-1 page declared UTF-8 or not
    declared at all keeps its accented letters. Bytes that fit nothing are left to BeautifulSoup."""
    import codecs

    if bom_encoding(data):
        return data, None
    declared = _DECLARED_CHARSET.search(data[:4096])
    if declared:
        try:
            codec = codecs.lookup(declared.group(1).decode("ascii")).name
        except (LookupError, UnicodeDecodeError):
            codec = None
        # As browsers read labels (WHATWG Encoding): Latin-1 and ASCII mean Windows-1252, and a UTF-16
        # label in markup that is readable as ASCII cannot be true (it means UTF-8)
        codec = _WHATWG_LABELS.get(codec, codec)
        if codec not in (None, "utf-8"):
            try:
                return data.decode(codec), None
            except UnicodeDecodeError:
                pass  # the declaration is wrong: find the encoding as for an undeclared page
    head = data[:512]
    if len(head) >= 4 and head.count(0) * 3 >= len(head):  # UTF-16 without a byte-order mark
        codec = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
        try:
            return data.decode(codec), None
        except UnicodeDecodeError:
            return data, None
    try:
        return decode_document(data)
    except ValueError:  # no text encoding fits: BeautifulSoup's own detection
        return data, None


def read_html(path: Path) -> Extracted:
    markup, note = _markup(path.read_bytes())
    return Extracted([html_to_text(markup)], "beautifulsoup", note=note)


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "AEIOU" else f"a {kind}"


def _package_problem(path: Path, kind: str, exc: Exception) -> str:
    """Why a ZIP-packaged document (`kind` EPUB or DOCX) could not be opened, from what its archive
    holds: not a ZIP archive at all, another format under this name, or a part it lists but lacks."""
    import zipfile

    if not zipfile.is_zipfile(path):
        legacy = " (a Word 97-2003 .doc? save it as .docx)" if kind == "DOCX" else ""
        return f"not {_a(kind)} file: it is not a ZIP archive{legacy}; convert or re-save it"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    actual = "DOCX" if "[Content_Types].xml" in names else "EPUB" if "META-INF/container.xml" in names else None
    if actual and actual != kind:
        return f"{_a(actual)} file named as {_a(kind)} ({path.suffix}): rename it to .{actual.lower()}"
    missing = re.search(r"no item named '([^']+)'", str(exc))
    if missing:
        return (
            f"the {kind} is damaged: it lists {missing.group(1)!r}, which its archive lacks; repair it (e.g. "
            "convert it again with Calibre or re-save it) or leave it out"
        )
    return f"the {kind} could not be read ({type(exc).__name__}: {exc}); repair or re-save it"


def read_epub(path: Path) -> Extracted:
    import ebooklib
    from ebooklib import epub

    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except (KeyError, epub.EpubException) as exc:
        raise ValueError(_package_problem(path, "EPUB", exc)) from None
    chapters, notes = [], []
    for item_id, _linear in book.spine:  # reading order
        item = book.get_item_with_id(item_id)
        if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT:
            markup, note = _markup(item.content)  # as in the archive (get_content() re-encodes it)
            chapters.append(html_to_text(markup))
            notes += [f"{item.get_name()}: {note}"] if note else []
    return Extracted(chapters, "ebooklib", note="; ".join(notes) or None)


def read_docx(path: Path) -> Extracted:
    from docx.opc.exceptions import PackageNotFoundError

    try:
        text, notes = docx_to_text(path)
    except (KeyError, PackageNotFoundError) as exc:
        raise ValueError(_package_problem(path, "DOCX", exc)) from None
    return Extracted([text], "python-docx", note="; ".join(notes) or None)


def _json_text(value: object) -> str:
    """The text of a JSON value: a string as it is, numbers and booleans written out, the items of
    a list and the values of an object in order, separated by blank lines; null is nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_json_text(item) for item in value]
    elif isinstance(value, dict):
        parts = [_json_text(item) for item in value.values()]
    else:
        return "" if value is None else json.dumps(value)
    return "\n\n".join(part for part in parts if part.strip())


def read_json_report(path: Path) -> Extracted:
    """A report whose sections hold an `improved` text: ``{"sections": {"INTRO": {"improved": …}}}``.

    `improved` may be a string or nested lists and objects of strings (all of them are read); a
    section without one is named in the note. Raises ValueError for JSON of another shape."""
    try:
        text, decoded = decode_document(path.read_bytes(), path)
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to read (lists or objects about 1,000 levels deep)") from None
    sections = data.get("sections") if isinstance(data, dict) else None
    if not isinstance(sections, dict):
        raise ValueError('expected a JSON object with "sections": {"NAME": {"improved": "…"}}')
    parts, missing = [], []
    for name, body in sections.items():
        text = _json_text(body.get("improved")) if isinstance(body, dict) else ""
        if text.strip():
            parts.append(f"### {name}:\n{text}")
        else:
            missing.append(str(name))
    if not parts:
        raise ValueError('no section holds an "improved" text')
    note = f'sections without an "improved" text, not extracted: {", ".join(missing)}' if missing else None
    note = "; ".join(part for part in (decoded, note) if part) or None
    return Extracted(["\n\n".join(parts)], "json-sections", note=note)


def docling_layout_available(artifacts_path: str | None = None) -> bool:
    """docling's layout pipeline is usable offline: its model package is installed and the models
    are in `artifacts_path` or the local Hugging Face cache."""
    if importlib.util.find_spec("docling_ibm_models") is None:
        return False
    if artifacts_path:
        return Path(artifacts_path).is_dir() and any(Path(artifacts_path).iterdir())
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    return any(hub.glob("models--docling-project--docling-layout*")) or any(hub.glob("models--ds4sd--docling-models"))


def resolve_pdf_backend(backend: str, artifacts_path: str | None = None) -> str:
    """`auto` → `docling` when its layout models are available offline, else `docling-native`.

    Raises ValueError for a name that is not one of PDF_BACKENDS."""
    if backend not in PDF_BACKENDS:
        raise ValueError(f"unknown extract.pdf_backend {backend!r}; choose from {', '.join(PDF_BACKENDS)}")
    if backend != "auto":
        return backend
    return "docling" if docling_layout_available(artifacts_path) else "docling-native"


@functools.cache
def _docling_converter(backend: str, device: str = "auto", ocr: bool = False, artifacts_path: str | None = None):
    from docling.datamodel.base_models import InputFormat
    from docling.document_converter import DocumentConverter, PdfFormatOption

    if backend == "docling-native":
        # docling's model-free pipeline: the native text layer in reading order, no model download.
        from docling.datamodel.pipeline_options import NativePdfPipelineOptions
        from docling.pipeline.native_pdf_pipeline import NativePdfPipeline

        option = PdfFormatOption(pipeline_cls=NativePdfPipeline, pipeline_options=NativePdfPipelineOptions())
    else:
        # docling's standard pipeline: layout model, table structure, optional OCR (lorapipe[layout]).
        from docling.datamodel.accelerator_options import AcceleratorDevice, AcceleratorOptions
        from docling.datamodel.pipeline_options import PdfPipelineOptions

        options = PdfPipelineOptions(
            do_ocr=ocr,
            do_table_structure=True,
            artifacts_path=artifacts_path,
            accelerator_options=AcceleratorOptions(device=AcceleratorDevice(device)),
        )
        option = PdfFormatOption(pipeline_options=options)
    return DocumentConverter(allowed_formats=[InputFormat.PDF], format_options={InputFormat.PDF: option})


def read_pdf_docling(
    path: Path,
    backend: str = "docling-native",
    device: str = "auto",
    ocr: bool = False,
    artifacts_path: str | None = None,
) -> Extracted:
    converter = _docling_converter(backend, device, ocr, artifacts_path)
    with without_overprinted_text(path) as clean:  # fake bold: see lorapipe.extract.pdftext
        result = converter.convert(str(clean), raises_on_error=False)
    if result.status.name not in ("SUCCESS", "PARTIAL_SUCCESS"):
        reasons = "; ".join(e.error_message for e in result.errors) or result.status.name
        raise ValueError(f"docling could not convert it: {reasons}")
    document = result.document
    numbers = sorted(document.pages)
    pages = [document.export_to_markdown(page_no=number) for number in numbers]
    if not pages:
        return Extracted([document.export_to_markdown()], backend)
    return Extracted(repair_doubled_words(pages, numbers, path), backend, paged=True)


def read_pdf_pdfplumber(path: Path) -> Extracted:
    """Each page's text, glyphs drawn twice (fake bold) read once (`pdftext.unique_chars`)."""
    import pdfplumber

    pages = []
    with pdfplumber.open(str(path)) as pdf:
        for page in pdf.pages:
            drop = unique_chars(page.chars)
            if drop:
                page = page.filter(lambda obj, drop=drop: id(obj) not in drop)
            pages.append(page.extract_text() or "")
    return Extracted(pages, "pdfplumber", paged=True)


def _pdfminer_pages(path: Path) -> int | None:
    """How many pages pdfminer (pdfplumber's parser) finds in `path`, None when it cannot open it:
    a second opinion where pdfium refuses a file (pdfium refuses a valid PDF of zero pages)."""
    import pdfplumber

    try:
        with pdfplumber.open(path) as pdf:
            return len(pdf.pages)
    except Exception:  # noqa: BLE001 - any parser error: no opinion
        return None


def _pdf_problem(path: Path) -> str | None:
    """A clear reason for PDFs that no text extractor can read: encrypted or without pages."""
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(str(path))
    except pypdfium2.PdfiumError as exc:
        if "password" in str(exc).lower():
            return "the PDF is encrypted (password-protected): decrypt it first, e.g. qpdf --decrypt in.pdf out.pdf"
        return "the PDF has no pages" if _pdfminer_pages(path) == 0 else None  # else the readers below may
        # still recover a damaged file, and say why if not
    try:
        if len(pdf) == 0:
            return "the PDF has no pages"
    finally:
        pdf.close()
    return None


def read_pdf(
    path: Path,
    backend: str = "docling-native",
    device: str = "auto",
    ocr: bool = False,
    artifacts_path: str | None = None,
) -> Extracted:
    """The chosen backend first; pdfplumber when a docling backend fails."""
    problem = _pdf_problem(path)
    if problem:
        raise ValueError(problem)
    if backend == "pdfplumber":
        return read_pdf_pdfplumber(path)
    try:
        return read_pdf_docling(path, backend, device, ocr, artifacts_path)
    except Exception as docling_error:  # noqa: BLE001 - any docling failure falls back
        try:
            extracted = read_pdf_pdfplumber(path)
        except Exception as plumber_error:  # noqa: BLE001
            raise ValueError(f"docling: {docling_error}; pdfplumber: {plumber_error}") from None
        extracted.note = f"{backend} failed ({docling_error}); pdfplumber used"
        extracted.fallback = True
        return extracted


READERS = {
    "epub": read_epub,
    "markdown": read_markdown,
    "text": read_plain,
    "html": read_html,
    "docx": read_docx,
    "json": read_json_report,
}
