"""Regenerate the committed sample corpus in data/raw/docs from the texts in scripts/sample_corpus.

Run: .venv/bin/pip install fpdf2==2.8.9 && .venv/bin/python scripts/make_sample_corpus.py

The texts were written for lorapipe (MIT licence). The PDF and EPUB are built with fixed metadata
and dates so that rerunning the script gives the same bytes.
"""

import datetime
import shutil
from pathlib import Path

import docx
from ebooklib import epub
from fpdf import FPDF

SOURCES = Path(__file__).parent / "sample_corpus"
DOCS = Path("data/raw/docs")


def make_pdf(source: Path, target: Path) -> None:
    title, _credit, *body = source.read_text().split("\n")
    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    pdf.set_title(title)
    pdf.set_author("lorapipe")
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 6, " ".join(paragraph), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
            paragraph.clear()

    for line in body:
        if line and len(line.split()) <= 5 and not line.endswith("."):  # a heading
            flush()
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 8, line, new_x="LMARGIN", new_y="NEXT")
        elif line:
            paragraph.append(line)
    flush()
    pdf.output(str(target))


def make_epub(source: Path, target: Path) -> None:
    title, _credit, *body = source.read_text().split("\n")
    book = epub.EpubBook()
    book.set_identifier("lorapipe-sample-local-models")
    book.set_title(title)
    book.set_language("en")
    book.add_author("lorapipe")
    chapters, current = [], None
    for line in body:
        if line.startswith("Chapter "):
            current = epub.EpubHtml(title=line, file_name=f"chap{len(chapters) + 1}.xhtml", lang="en")
            current.content = f"<h1>{line}</h1><p>"
            chapters.append(current)
        elif line and current is not None:
            current.content += f"{line} "
    for chapter in chapters:
        chapter.content = chapter.content.rstrip() + "</p>"
        book.add_item(chapter)
    book.toc = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    epub.write_epub(str(target), book)


def _sections(source: Path) -> tuple[str, list[tuple[str, str]]]:
    """Title and (heading, paragraph) pairs of a source text (a heading is a line without a full stop)."""
    title, _credit, *body = source.read_text().split("\n")
    sections: list[tuple[str, str]] = []
    for line in body:
        if line and not line.endswith((".", ",")) and len(line.split()) <= 6:
            sections.append((line, ""))
        elif line:
            heading, text = sections[-1]
            sections[-1] = (heading, f"{text} {line}".strip())
    return title, sections


def make_docx(source: Path, target: Path) -> None:
    title, sections = _sections(source)
    document = docx.Document()
    document.core_properties.created = datetime.datetime(2026, 1, 1)
    document.core_properties.modified = datetime.datetime(2026, 1, 1)
    document.core_properties.author = "lorapipe"
    document.add_heading(title, level=0)
    for heading, text in sections:
        document.add_heading(heading, level=1)
        document.add_paragraph(text)
    document.save(str(target))


def make_html(source: Path, target: Path) -> None:
    title, sections = _sections(source)
    body = "".join(f"<h2>{heading}</h2>\n<p>{text}</p>\n" for heading, text in sections)
    target.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>body {{ max-width: 40em; }}</style></head>\n<body>\n<h1>{title}</h1>\n{body}</body></html>\n"
    )


if __name__ == "__main__":
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCES / "lora-primer.md", DOCS / "lora-primer.md")
    make_pdf(SOURCES / "reproducible-pipelines.txt", DOCS / "reproducible-pipelines.pdf")
    make_epub(SOURCES / "local-models.txt", DOCS / "local-models.epub")
    make_docx(SOURCES / "preparing-data.txt", DOCS / "preparing-data.docx")
    make_html(SOURCES / "evaluating.txt", DOCS / "evaluating.html")
    for path in sorted(DOCS.iterdir()):
        print(f"{path} {path.stat().st_size} bytes")
