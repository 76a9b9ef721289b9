"""Document readers keep every piece of text, once, in reading order: DOCX tables, headers, notes
and text boxes; HTML and EPUB inline elements on one line; fake-bold PDF text read once on every
PDF backend; nested JSON values. The inputs are built here, tiny, and the expected text is exact.

Run: .venv/bin/pytest tests/test_readers.py
"""

from pathlib import Path

import pytest

from lorapipe import extract_documents
from lorapipe.extract.formats import read_docx, read_epub, read_html, read_json_report, read_pdf
from lorapipe.extract.markup import html_to_text

# --- DOCX -----------------------------------------------------------------------------------------

W_NS = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
MC_NS = 'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'


def _box_run(text):
    """A run holding a text box the way Word writes one: a DrawingML box and its VML fallback copy."""
    from docx.oxml import parse_xml

    content = f"<w:txbxContent><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:txbxContent>"
    return parse_xml(
        f"<w:r {W_NS} {MC_NS}><mc:AlternateContent><mc:Choice Requires='wps'><w:drawing>{content}</w:drawing>"
        f"</mc:Choice><mc:Fallback><w:pict>{content}</w:pict></mc:Fallback></mc:AlternateContent></w:r>"
    )


def _add_footnotes(document, notes):
    from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
    from docx.opc.packuri import PackURI
    from docx.opc.part import Part

    body = "".join(
        f'<w:footnote w:id="{i}"><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:footnote>'
        for i, text in enumerate(notes, 1)
    )
    xml = (
        f'<w:footnotes {W_NS}><w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p>'
        f"</w:footnote>{body}</w:footnotes>"
    )
    part = Part(PackURI("/word/footnotes.xml"), CONTENT_TYPE.WML_FOOTNOTES, xml.encode(), document.part.package)
    document.part.relate_to(part, RELATIONSHIP_TYPE.FOOTNOTES)


def _rich_docx(path):
    import docx
    from docx.oxml import parse_xml

    document = docx.Document()
    document.sections[0].header.paragraphs[0].text = "Lab handbook"
    document.sections[0].footer.paragraphs[0].text = "Internal use"
    document.add_paragraph("Adapter settings are listed below.")
    table = document.add_table(rows=2, cols=2)
    for r, (key, value) in enumerate([("Rank", "16"), ("Alpha", "32")]):
        table.cell(r, 0).text, table.cell(r, 1).text = key, value
    inner = table.cell(1, 1).add_table(rows=1, cols=2)
    inner.cell(0, 0).text, inner.cell(0, 1).text = "low", "high"
    merged = document.add_table(rows=2, cols=2)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "Both columns"
    merged.cell(1, 0).text, merged.cell(1, 1).text = "left", "right"
    paragraph = document.add_paragraph("Scaling is alpha over rank.")
    paragraph._p.append(_box_run("See the box."))
    edited = document.add_paragraph()
    edited._p.append(
        parse_xml(
            f"<w:ins {W_NS} w:id='1' w:author='a'><w:r><w:t xml:space='preserve'>Kept insertion </w:t></w:r></w:ins>"
        )
    )
    edited._p.append(parse_xml(f"<w:del {W_NS} w:id='2' w:author='a'><w:r><w:delText>gone</w:delText></w:r></w:del>"))
    edited._p.append(parse_xml(f"<w:r {W_NS}><w:t>and a run.</w:t><w:tab/><w:t>Tabbed</w:t></w:r>"))
    edited._p.append(parse_xml(f"<w:r {W_NS}><w:rPr><w:vanish/></w:rPr><w:t>hidden text</w:t></w:r>"))
    edited._p.append(
        parse_xml(
            f"<w:hyperlink {W_NS}><w:r><w:t xml:space='preserve'> with a </w:t></w:r><w:r><w:t>link</w:t></w:r>"
            "</w:hyperlink>"
        )
    )
    document.element.body.insert(
        len(document.element.body) - 1,
        parse_xml(
            f"<w:sdt {W_NS}><w:sdtContent><w:p><w:r><w:t>Inside a control.</w:t></w:r></w:p></w:sdtContent></w:sdt>"
        ),
    )
    _add_footnotes(document, ["A footnote."])
    document.save(path)


def test_docx_keeps_tables_boxes_headers_and_notes_in_order(tmp_path):
    _rich_docx(tmp_path / "rich.docx")
    extracted = read_docx(tmp_path / "rich.docx")
    assert extracted.pages == [
        "Lab handbook\n\n"
        "Adapter settings are listed below.\n\n"
        "Rank | 16\nAlpha | 32 low | high\n\n"
        "Both columns\nleft | right\n\n"
        "Scaling is alpha over rank.\n\nSee the box.\n\n"
        "Kept insertion and a run.\tTabbed with a link\n\n"
        "Inside a control.\n\n"
        "A footnote.\n\n"
        "Internal use"
    ]
    assert extracted.note is None


def test_docx_symbols_ruby_and_nested_table_rows(tmp_path):
    import docx
    from docx.oxml import parse_xml

    def run(text):
        return f"<w:r><w:t xml:space='preserve'>{text}</w:t></w:r>"

    def sym(font, char):
        return f"<w:r><w:sym w:font='{font}' w:char='{char}'/></w:r>"

    def cell(text):
        return f"<w:tc><w:p>{run(text)}</w:p></w:tc>"

    document = docx.Document()
    body = document.element.body
    paragraphs = [
        run("Arrow ") + sym("Wingdings", "F0E0") + run(" check ") + sym("Wingdings", "F0FC") + run(" alpha ")
        + sym("Symbol", "F061") + run(" x") + sym("Symbol", "F0A3") + run("y ") + sym("Webdings", "F021")
        + run(" deg") + sym("Arial", "00B0"),
        "<w:r><w:ruby><w:rubyPr/><w:rt><w:r><w:t>kan</w:t></w:r></w:rt><w:rubyBase><w:r><w:t>漢</w:t></w:r>"
        "</w:rubyBase></w:ruby></w:r>" + run(" and ") + "<w:r><w:ruby><w:rubyPr/><w:rt/><w:rubyBase>" + run("字")
        + "</w:rubyBase></w:ruby></w:r>",
    ]  # fmt: skip
    for xml in paragraphs:
        body.insert(len(body) - 1, parse_xml(f"<w:p {W_NS}>{xml}</w:p>"))
    nested = f"<w:tbl><w:tr>{cell('i1')}{cell('i2')}</w:tr><w:tr>{cell('i3')}{cell('i4')}</w:tr></w:tbl>"
    table = f"<w:tbl {W_NS}><w:tr><w:tc>{nested}<w:p/></w:tc>{cell('outer2')}</w:tr><w:tr>{cell('next')}</w:tr></w:tbl>"
    body.insert(len(body) - 1, parse_xml(table))
    document.save(tmp_path / "symbols.docx")
    assert read_docx(tmp_path / "symbols.docx").pages == [
        "Arrow \u2192 check \u2713 alpha \u03b1 x\u2264y \uf021 deg\u00b0\n\n"
        "\u6f22(kan) and \u5b57\n\ni1 | i2; i3 | i4 | outer2\nnext"
    ]


def test_docx_table_text_reaches_the_manifest_and_output(tmp_path):
    """B04: the table's cells are in the output; the manifest says ok because nothing was lost."""
    import docx

    docs = tmp_path / "docs"
    docs.mkdir()
    document = docx.Document()
    document.add_paragraph("Adapter settings used in the run are listed below.")
    table = document.add_table(rows=2, cols=2)
    for r, (key, value) in enumerate([("Rank", "16"), ("Alpha", "32")]):
        table.cell(r, 0).text, table.cell(r, 1).text = key, value
    document.add_paragraph("The scaling factor is alpha divided by rank.")
    document.save(docs / "report.docx")
    (row,) = extract_documents(docs, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert row["status"] == "ok" and row["error"] is None
    assert (tmp_path / "out" / row["output"]).read_text() == (
        "Adapter settings used in the run are listed below.\n\nRank | 16\nAlpha | 32\n\n"
        "The scaling factor is alpha divided by rank.\n"
    )


# --- HTML, XHTML, EPUB ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        (
            '<h1>Adapters</h1><p>The <b>rank</b> of a <a href="#r">LoRA adapter</a> sets its <em>capacity</em>.</p>'
            "<p>Use <code>lora.rank</code> to <span>change</span> it.</p>",
            "Adapters\n\nThe rank of a LoRA adapter sets its capacity.\n\nUse lora.rank to change it.",
        ),
        ("<p>x<sup>2</sup> and H<sub>2</sub>O, <i>un</i><b>broken</b></p>", "x2 and H2O, unbroken"),
        ("<p>Line one<br>line two<br/><br>after a blank</p>", "Line one\nline two\n\nafter a blank"),
        ("<div><div><p>deep</p></div></div><div>next</div>tail <!-- no --> text", "deep\n\nnext\n\ntail text"),
        (
            "<table><caption>Settings</caption><tr><th>Key</th> <th>Value</th></tr>\n<tr><td>Rank</td>\n<td>16</td>"
            "</tr><tr><td>Alpha</td><td><p>32</p><p>or 64</p></td><td></td></tr></table><p>after</p>",
            "Settings\n\nKey | Value\nRank | 16\nAlpha | 32 or 64\n\nafter",
        ),
        (
            "<table><tr><td>outer <table><tr><td>in1</td><td>in2</td></tr></table></td><td>last</td></tr></table>",
            "outer | in1 | in2 | last",
        ),
        (
            "<ul><li>one <i>item</i></li><li>two</li></ul><ol start='3'><li>three</li><li>four<ul><li>inner</li>"
            "</ul></li></ol>",
            "- one item\n- two\n\n3. three\n4. four\n   - inner",
        ),
        ("<dl><dt>Rank</dt><dd>The <em>inner</em> dimension.</dd></dl>", "Rank\nThe inner dimension."),
        ("<pre>  def f():\n      return 1</pre><p>a&nbsp;b   c</p>", "  def f():\n      return 1\n\na\u00a0b c"),
        (
            "<head><title>T</title></head><script>x()</script><style>p{}</style><nav>menu</nav>"
            "<p hidden>secret</p><p>shown</p>",
            "shown",
        ),
    ],
)
def test_html_inline_flows_and_blocks_separate(markup, text):
    assert html_to_text(markup) == text


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        # a list item whose text is in a block keeps its marker; nested lists are indented
        ("<ul><li><p>First item</p></li><li><p>Second item</p></li></ul>", "- First item\n- Second item"),
        (
            "<ol><li><h3>Install</h3><p>Run pip.</p></li><li><div>Train</div></li></ol>",
            "1. Install\nRun pip.\n2. Train",
        ),
        ("<ul><li><table><tr><td>a</td><td>b</td></tr></table></li><li></li><li>c</li></ul>", "- a | b\n-\n- c"),
        ("<ul><li>a<ul><li>b<ol><li>c<li>d</ol></ul><li>e</ul>", "- a\n  - b\n    1. c\n    2. d\n- e"),
        # HTML's implied end tags
        ("<table><tr><td>Rank<td>16<tr><td>Alpha<td>32</table>", "Rank | 16\nAlpha | 32"),
        ("<table><tbody><tr><td>Rank<td>16</tr><tr><td>Alpha<td>32</tr></tbody></table>", "Rank | 16\nAlpha | 32"),
        ("<p>one<p>two", "one\n\ntwo"),
        ("<ul><li><p>First<li><p>Second</ul>", "- First\n- Second"),
        ("<dl><dt>Rank<dd>inner size<dt>Alpha<dd>scale</dl>", "Rank\ninner size\nAlpha\nscale"),
        ("<select><option>A<option>B</select>", "A\nB"),
        # prefixed XHTML, CDATA, image text, hidden by style, a pre's first newline
        (
            '<?xml version="1.0"?><html xmlns:h="http://www.w3.org/1999/xhtml"><h:body><h:p>One</h:p>'
            "<h:p>Two <h:b>bold</h:b></h:p><h:ul><h:li>item</h:li></h:ul></h:body></html>",
            "One\n\nTwo bold\n\n- item",
        ),
        ('<html xmlns="http://www.w3.org/1999/xhtml"><body><p><![CDATA[x < y & z]]></p></body></html>', "x < y & z"),
        ('<p>See <img src="d.png" alt="diagram of LoRA"> here<img src="x.png"></p>', "See diagram of LoRA here"),
        (
            '<p>Visible <span style="display:none">SECRET</span> text<span style="color: red; DISPLAY: None">'
            'S2</span><b style="visibility:hidden">S3</b><i style="display:inline">!</i></p>',
            "Visible text!",
        ),
        ("<p>x</p><pre>\ncode line\n</pre><p>y</p>", "x\n\ncode line\n\ny"),
        # ruby text after its base; the rows of a nested table stay apart
        (
            "<p><ruby>漢<rt>kan</rt>字<rt>ji</rt></ruby>, <ruby>木<rp>(</rp><rt>ki</rt><rp>)</rp></ruby></p>",
            "漢(kan)字(ji), 木(ki)",
        ),
        (
            "<table><tr><td>outer<table><tr><td>i1<td>i2<tr><td>i3<td>i4</table><td>o2<tr><td>next</table>",
            "outer | i1 | i2; i3 | i4 | o2\nnext",
        ),
    ],
)
def test_html_lists_implied_end_tags_and_hidden_text(markup, text):
    assert html_to_text(markup) == text


@pytest.mark.parametrize(
    "text, kept, note",
    [
        ("---\ntitle: LoRA notes\ntags: [ml]\n---\n# LoRA\n\nRank matters.\n", "# LoRA\n\nRank matters.\n", "4 lines"),
        ('+++\ntitle = "notes"\n+++\nBody.\n', "Body.\n", "3 lines"),
        ("---\nA line under a rule is a heading\n---\nBody.\n", None, None),  # no metadata: kept whole
        ("# Title\n\n---\ntitle: not at the top\n---\n", None, None),
        ("---\ntitle: unclosed\n\nBody text.\n\n---\n\nMore.\n", None, None),  # not up to a later rule
    ],
)
def test_markdown_front_matter_is_left_out_and_said(tmp_path, text, kept, note):
    from lorapipe.extract.formats import read_markdown

    (tmp_path / "page.md").write_text(text)
    extracted = read_markdown(tmp_path / "page.md")
    assert extracted.pages == [kept if kept is not None else text]
    assert (note is None and extracted.note is None) or note in extracted.note


def test_html_and_xhtml_files(tmp_path):
    (tmp_path / "page.html").write_text('<p>The <b>rank</b> of a <a href="#">LoRA</a> adapter.</p>')
    xhtml = (
        '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title>'
        "</head><body><p>An <em>XHTML</em> page.</p></body></html>"
    )
    (tmp_path / "page.xhtml").write_text(xhtml)
    assert read_html(tmp_path / "page.html").pages == ["The rank of a LoRA adapter."]
    assert read_html(tmp_path / "page.xhtml").pages == ["An XHTML page."]


def _one_chapter_epub(path: Path, markup: str) -> Path:
    """An EPUB of one chapter, ``one.xhtml``, holding `markup` (ebooklib writes it)."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("id")
    book.set_title("T")
    book.set_language("en")
    chapter = epub.EpubHtml(title="One", file_name="one.xhtml", lang="en")
    chapter.content = markup
    book.add_item(chapter)
    book.spine = [chapter]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    epub.write_epub(str(path), book)
    return path


def test_epub_chapters_use_the_same_layout(tmp_path):
    _one_chapter_epub(
        tmp_path / "book.epub",
        "<html><body><h2>Chapter</h2><p>The <b>rank</b> sets <em>capacity</em>.</p>"
        "<table><tr><td>Rank</td><td>16</td></tr></table><ul><li>first</li><li>second</li></ul></body></html>",
    )
    assert read_epub(tmp_path / "book.epub").pages == [
        "Chapter\n\nThe rank sets capacity.\n\nRank | 16\n\n- first\n- second"
    ]


@pytest.mark.parametrize(
    "name, data",
    [
        # Latin-1 bytes under a false UTF-8 declaration; and with none (a short page)
        ("declared-utf8.html", '<meta charset="utf-8"><p>Crème brûlée, naïve café.</p>'.encode("latin-1")),
        ("undeclared.html", "<p>Crème brûlée, naïve café.</p>".encode("latin-1")),
        # UTF-16 without a byte-order mark (NUL bytes in every other place)
        ("utf16.html", '<meta charset="utf-16"><p>Crème brûlée, naïve café.</p>'.encode("utf-16-le")),
        # UTF-8, with "charset=" in its text: not a declaration
        ("text.html", "<p>Set charset=latin1 below.</p><p>Crème brûlée, naïve café.</p>".encode()),
        # a real declaration, in the http-equiv form
        (
            "equiv.html",
            (
                '<meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
                "<p>Crème brûlée, naïve café.</p>"
            ).encode("cp1252"),
        ),
    ],
)
def test_html_in_the_encoding_its_bytes_are_in(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    assert read_html(tmp_path / name).pages[0].endswith("Crème brûlée, naïve café.")


def test_an_epub_chapter_in_the_encoding_it_declares(tmp_path):
    import zipfile

    _one_chapter_epub(tmp_path / "utf8.epub", "<html><body><p>placeholder</p></body></html>")
    latin1 = (
        '<?xml version="1.0" encoding="iso-8859-1"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>Un'
        "</title></head><body><p>Crème brûlée, naïve café.</p></body></html>"
    ).encode("latin-1")
    with zipfile.ZipFile(tmp_path / "utf8.epub") as source, zipfile.ZipFile(tmp_path / "book.epub", "w") as out:
        for info in source.infolist():
            data = latin1 if info.filename.endswith("one.xhtml") else source.read(info)
            out.writestr(info, data)
    assert read_epub(tmp_path / "book.epub").pages == ["Crème brûlée, naïve café."]


def test_a_damaged_or_misnamed_package_is_named_with_the_fix(tmp_path):
    import zipfile

    from docx import Document

    (tmp_path / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0 a Word 97 file")
    Document().save(tmp_path / "report.docx")
    (tmp_path / "report.epub").write_bytes((tmp_path / "report.docx").read_bytes())
    with zipfile.ZipFile(tmp_path / "book.epub", "w") as book:  # an EPUB whose manifest lists a missing chapter
        book.writestr("mimetype", "application/epub+zip")
        book.writestr(
            "META-INF/container.xml",
            '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0"><rootfiles>'
            '<rootfile full-path="content.opf" media-type="application/oebps-package+xml"/></rootfiles></container>',
        )
        book.writestr(
            "content.opf",
            '<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id"><metadata '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:identifier id="id">x</dc:identifier><dc:title>T'
            '</dc:title></metadata><manifest><item id="c1" href="c1.xhtml" '
            'media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c1"/></spine></package>',
        )
    with pytest.raises(ValueError, match="not a DOCX file: it is not a ZIP archive .*save it as .docx"):
        read_docx(tmp_path / "old.docx")
    with pytest.raises(ValueError, match=r"a DOCX file named as an EPUB \(.epub\): rename it to .docx"):
        read_epub(tmp_path / "report.epub")
    with pytest.raises(ValueError, match="the EPUB is damaged: it lists 'c1.xhtml', which its archive lacks"):
        read_epub(tmp_path / "book.epub")
    (tmp_path / "deep.json").write_text('{"sections": {"A": {"improved": ' + "[" * 5000 + "]" * 5000 + "}}}")
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json_report(tmp_path / "deep.json")


def test_a_pdf_of_no_pages_is_named_so_not_taken_for_a_scan(tmp_path):
    # a valid PDF whose page tree is empty (/Count 0), as pypdf writes one: pdfium refuses to open it
    with pytest.raises(ValueError, match="^the PDF has no pages$"):
        read_pdf(Path(__file__).parent / "fixtures" / "zero_pages.pdf")


# --- PDF: fake bold -------------------------------------------------------------------------------


def _helvetica_width():
    from fpdf import FPDF

    pdf = FPDF(unit="pt")
    pdf.add_page()
    pdf.set_font("Helvetica", size=1000)
    return pdf.get_string_width  # a character's advance in 1/1000 of the font size


def _overstruck(text, size, shift):
    """A TJ string drawing each glyph twice, the second `shift` points to the right (one object)."""
    width = _helvetica_width()
    return "[" + " ".join(f"({c}) {width(c) - shift / size * 1000:.1f} ({c})" for c in text) + "] TJ"


def _raw_pdf(path, pages):
    """A PDF whose pages have the given content streams (standard Helvetica as /F1)."""
    count = len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    font = 3 + 2 * count
    for i, content in enumerate(pages):
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 {font} 0 R >> >> "
            f"/Contents {4 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content.encode()))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    Path(path).write_bytes(bytes(out))


def _line(text, y, size=11, x=72.0):
    return f"BT /F1 {size} Tf {x} {y} Td ({text}) Tj ET"


BODY = "Only the adapter weights receive updates."
FAKE_BOLD_PAGES = {
    "twice, 0.3 pt apart": [_line("Training Notes", 700, 14), _line("Training Notes", 700, 14, 72.3)],
    "twice, 0.8 pt apart": [_line("Training Notes", 700, 14), _line("Training Notes", 700, 14, 72.8)],
    "shadow, right and down": [_line("Training Notes", 700, 14), _line("Training Notes", 699.6, 14, 72.4)],
    "three times": [_line("Training Notes", 700, 14, 72 + d) for d in (0, 0.25, 0.5)],
    # 1 pt at 8 pt is more than half a narrow "i" wide: the tolerance follows the font size too
    "small, 1 pt apart": [_line("Training Notes", 700, 8), _line("Training Notes", 700, 8, 73)],
    "glyph by glyph in one string": [f"BT /F1 14 Tf 72 700 Td {_overstruck('Training Notes', 14, 0.8)} ET"],
}


def _fake_bold_pdf(path):
    pages = [
        "\n".join([_line("Low-rank adapters train two small matrices.", 740), *draws, _line(BODY, 660)])
        for draws in FAKE_BOLD_PAGES.values()
    ]
    # not fake bold: repeated letters, a word repeated on its line, and the same line further down
    pages.append(
        "\n".join(
            [_line("All small cells fill well.", 740), _line("that that", 720), _line("that", 700)]
            + [_line("ill bills", 680, 8), _line("ill bills", 680, 8, 160)]  # narrow repeats, 8 pt
        )
    )
    _raw_pdf(path, pages)


@pytest.mark.parametrize("backend", ["docling-native", "pdfplumber"])
def test_fake_bold_text_is_read_once_on_every_pdf_backend(tmp_path, backend):
    """B09 and its variants; the fallback path is pdfplumber, so both backends lorapipe can run offline."""
    _fake_bold_pdf(tmp_path / "bold.pdf")
    pages = read_pdf(tmp_path / "bold.pdf", backend).pages
    assert len(pages) == len(FAKE_BOLD_PAGES) + 1
    for (case, _), page in zip(FAKE_BOLD_PAGES.items(), pages, strict=False):
        lines = [line.strip() for line in page.splitlines() if line.strip()]
        assert lines == ["Low-rank adapters train two small matrices.", "Training Notes", BODY], (case, page)
    assert pages[-1].split() == "All small cells fill well. that that that ill bills ill bills".split()


def test_fake_bold_cleanup_leaves_no_temporary_copy(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    _fake_bold_pdf(tmp_path / "bold.pdf")
    before = (tmp_path / "bold.pdf").read_bytes()
    read_pdf(tmp_path / "bold.pdf", "docling-native")
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (tmp_path / "bold.pdf").read_bytes() == before  # the input is never modified


# --- JSON -----------------------------------------------------------------------------------------


def test_json_report_reads_nested_values_and_names_what_it_skips(tmp_path):
    import json

    report = {
        "sections": {
            "INTRO": {"improved": "Plain text."},
            "STEPS": {"improved": ["First step.", {"detail": "Nested detail.", "count": 3}, None]},
            "EMPTY": {"original": "only the old text"},
        }
    }
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "report.json").write_text(json.dumps(report))
    extracted = read_json_report(docs / "report.json")
    assert extracted.pages == ["### INTRO:\nPlain text.\n\n### STEPS:\nFirst step.\n\nNested detail.\n\n3"]
    assert extracted.note == 'sections without an "improved" text, not extracted: EMPTY'
    (row,) = extract_documents(docs, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert row["status"] == "ok" and row["error"] == extracted.note


def test_html_nested_thousands_deep_and_bytes():
    assert html_to_text("<div>" * 3000 + "deep <b>text</b>" + "</div>" * 3000) == "deep text"
    assert html_to_text("<p>caf\u00e9 <i>ok</i></p>".encode()) == "caf\u00e9 ok"
