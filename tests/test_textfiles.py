"""Every text file a user hands lorapipe reads the same whatever the editor saved it as: UTF-8 with a
byte-order mark, UTF-16 or UTF-32 with one; other encodings are refused naming the file and the fix.

Run: .venv/bin/pytest tests/test_textfiles.py
"""

import codecs
import json
from pathlib import Path

import pytest

from lorapipe import paths
from lorapipe.io import read_json, read_jsonl, read_provenance
from lorapipe.labeled import is_json_schema, load_labeled
from lorapipe.params import ParamsError, load_params, read_yaml
from lorapipe.textfiles import TextEncodingError, decode_document, decode_text, plain_utf8, read_text

# What Windows editors write: Notepad's "UTF-8 with BOM", "UTF-16 LE"/"Unicode", "UTF-16 BE", UTF-32.
BOM_ENCODINGS = ["utf-8-sig", "utf-16-le-bom", "utf-16-be-bom", "utf-32"]
PARAMS = Path(__file__).parents[1] / "params.yaml"
TEXT = "Café — naïve\r\nsecond line\n"


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)  # utf-8-sig and utf-32 write their mark themselves


def write(path: Path, text: str, encoding: str) -> Path:
    path.write_bytes(encode(text, encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", *BOM_ENCODINGS])
def test_read_text_drops_the_mark_and_keeps_the_text(tmp_path, encoding):
    path = write(tmp_path / "f.txt", TEXT, encoding)
    assert read_text(path) == "Café — naïve\nsecond line\n"


def test_windows_1252_is_refused_naming_the_file_the_line_and_the_fix(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"query": "ok"}\n{"query": "caf\xe9"}\n')
    with pytest.raises(TextEncodingError) as caught:
        read_text(path)
    message = str(caught.value)
    assert str(path) in message and "byte 0xe9 at line 2" in message and "save it as UTF-8" in message


def test_utf16_without_a_mark_is_named_as_such(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes("lora:\n  rank: 8\n".encode("utf-16-le"))
    with pytest.raises(TextEncodingError, match="UTF-16 without a byte-order mark"):
        read_text(path)


def test_a_mark_that_lies_is_refused():
    with pytest.raises(TextEncodingError, match="byte-order mark says UTF-16"):
        decode_text(codecs.BOM_UTF16_LE + b"a\x00\x00\xd8", "x.txt")  # a lone surrogate half


def test_documents_decode_by_mark_then_utf8_then_detection():
    assert decode_document(encode("Résumé of LoRA", "utf-16-le-bom"))[0] == "Résumé of LoRA"
    assert decode_document("Résumé".encode("utf-8-sig"))[0] == "Résumé"
    assert decode_document("Tschüß, Grüße an die Größe".encode("cp1252"))[0] == "Tschüß, Grüße an die Größe"
    with pytest.raises(ValueError, match="NUL bytes"):
        decode_document(b"\x00\x01\x02binary")


def test_plain_utf8_copies_only_a_file_that_needs_it(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("num_processes: 2\n", encoding="utf-8")
    assert plain_utf8(plain, tmp_path / "copies") == plain
    (tmp_path / "copies").mkdir()
    marked = write(tmp_path / "marked.json", '{"num_processes": 2}', "utf-16-le-bom")
    copy = plain_utf8(marked, tmp_path / "copies")
    assert copy == tmp_path / "copies" / "marked.json"
    assert copy.read_bytes() == b'{"num_processes": 2}'
    assert marked.read_bytes().startswith(codecs.BOM_UTF16_LE)  # the user's file is not modified


# --- every reader ------------------------------------------------------------------------------------

ROWS = [{"query": "play some jazz", "data": {"intent": "PlayMusic"}}, {"query": "rain?", "data": {"intent": "W"}}]


@pytest.mark.parametrize("encoding", BOM_ENCODINGS)
def test_labeled_jsonl_and_json_with_a_mark_load_every_row(tmp_path, encoding):
    jsonl = write(tmp_path / "rows.jsonl", "".join(json.dumps(r) + "\r\n" for r in ROWS), encoding)
    array = write(tmp_path / "rows.json", json.dumps(ROWS), encoding)
    for path in (jsonl, array):
        conversations, bad = load_labeled(path)
        assert bad == 0
        assert [c[0]["content"] for c in conversations] == ["play some jazz", "rain?"]
        assert conversations[0][1]["content"] == '{"intent": "PlayMusic"}'


def test_a_line_separator_inside_a_string_does_not_split_a_row(tmp_path):
    """U+2028 and U+0085 are line breaks to str.splitlines, not to JSONL (json.dumps leaves them raw)."""
    row = {"query": "one\u2028two\x85three", "data": {"intent": "X"}}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    conversations, _ = load_labeled(path)
    assert [c[0]["content"] for c in conversations] == ["one\u2028two\x85three"]
    assert read_jsonl(path) == [row]


@pytest.mark.parametrize("encoding", BOM_ENCODINGS)
def test_a_schema_with_a_mark_is_still_known_as_a_schema(tmp_path, encoding):
    path = write(tmp_path / "schema.json", json.dumps({"$schema": "x", "type": "object"}), encoding)
    assert is_json_schema(path)
    assert read_json(path) == {"$schema": "x", "type": "object"}


def test_params_yaml_with_a_utf8_mark_loads_as_the_original(tmp_path):
    path = write(tmp_path / "params.yaml", PARAMS.read_text(encoding="utf-8"), "utf-8-sig")
    assert load_params(path) == load_params(PARAMS)
    assert read_yaml(path) == read_yaml(PARAMS)


@pytest.mark.parametrize(
    ("encoding", "name"), [("utf-16-le-bom", "UTF-16"), ("utf-16-be-bom", "UTF-16"), ("utf-32", "UTF-32")]
)
def test_params_yaml_in_utf16_or_utf32_is_refused_as_dvc_cannot_read_it(tmp_path, encoding, name):
    path = write(tmp_path / "params.yaml", PARAMS.read_text(encoding="utf-8"), encoding)
    for read in (load_params, read_yaml):
        with pytest.raises(ParamsError) as caught:
            read(path)
        message = str(caught.value)
        assert message.startswith(f"{path} is saved as {name}, but DVC reads params files as UTF-8 only")
        assert "save it as UTF-8" in message


def test_params_yaml_in_windows_1252_is_a_params_error_naming_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes("dataset:\n  system_prompt: Réponds en JSON.\n".encode("cp1252"))
    with pytest.raises(ParamsError, match=r"params\.yaml is not UTF-8 text: byte 0xe9 at line 2"):
        load_params(path)


@pytest.mark.parametrize("encoding", BOM_ENCODINGS)
def test_jsonl_json_and_provenance_readers_take_a_mark(tmp_path, encoding):
    write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS), encoding)
    assert read_jsonl(tmp_path / "a.jsonl") == ROWS
    write(tmp_path / "prompts.json", json.dumps({"chat": "Réponds."}), encoding)
    assert read_json(tmp_path / "prompts.json") == {"chat": "Réponds."}
    write(tmp_path / paths.PROVENANCE_NAME, "model.name: smollm2\n", encoding)
    assert read_provenance(tmp_path) == {"model.name": "smollm2"}


@pytest.mark.parametrize("encoding", BOM_ENCODINGS)
def test_a_system_prompt_file_with_a_mark_is_read_without_it(tmp_path, monkeypatch, encoding):
    from lorapipe.param_files import prompt_text

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "prompt.txt", "Réponds en JSON.\r\n", encoding)
    assert prompt_text("prompt.txt") == "Réponds en JSON."


def test_a_prompt_file_that_is_not_utf8_stops_the_stage_before_any_work(tmp_path, monkeypatch):
    from lorapipe.param_files import check_param_files

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw/config").mkdir(parents=True)
    (tmp_path / "data/raw/config/prompt.txt").write_bytes("Réponds en JSON.".encode("cp1252"))
    params = load_params(PARAMS)
    dataset = params.dataset.model_copy(update={"system_prompt": "data/raw/config/prompt.txt"})
    params = params.model_copy(update={"dataset": dataset})
    with pytest.raises(ParamsError) as caught:
        check_param_files(params, "dataset")
    message = str(caught.value)
    assert "dataset.system_prompt" in message and "data/raw/config/prompt.txt is not UTF-8" in message


def test_an_accelerate_config_with_a_mark_is_handed_over_as_plain_utf8(tmp_path):
    from lorapipe.distributed import launch_command

    config = write(tmp_path / "accelerate.json", '{"distributed_type": "MULTI_CPU"}', "utf-8-sig")
    (tmp_path / "job").mkdir()
    command = launch_command(2, str(config), tmp_path / "job" / "job.json", tmp_path / "job" / "result.json")
    given = Path(command[command.index("--config_file") + 1])
    assert given.parent == tmp_path / "job" and json.loads(given.read_bytes()) == {"distributed_type": "MULTI_CPU"}


@pytest.mark.parametrize("encoding", BOM_ENCODINGS)
def test_extraction_reads_text_markdown_json_and_html_with_a_mark(tmp_path, encoding):
    from lorapipe import extract_documents

    docs = tmp_path / "docs"
    docs.mkdir()
    body = "Low-rank adaptation trains two thin matrices beside each frozen weight — très simple."
    write(docs / "a.txt", body + "\r\n", encoding)
    write(docs / "b.md", f"# Notes\r\n\r\n{body}\r\n", encoding)
    write(docs / "c.json", json.dumps({"sections": {"INTRO": {"improved": body}}}), encoding)
    write(docs / "d.html", f"<html><body><p>{body}</p></body></html>", encoding)
    rows = {Path(r["source"]).name: r for r in extract_documents(docs, tmp_path / "out", workers=1, min_length=10)}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "ok")
    texts = {name: (tmp_path / "out" / row["output"]).read_text(encoding="utf-8") for name, row in rows.items()}
    assert texts["a.txt"] == body + "\n"
    assert texts["b.md"] == f"# Notes\n\n{body}\n"
    assert texts["c.json"] == f"### INTRO:\n{body}\n"
    assert texts["d.html"] == body + "\n"
    assert not any("\ufeff" in text for text in texts.values())


def test_files_joined_with_cat_each_with_its_mark_load_every_row(tmp_path):
    """``cat a.jsonl b.jsonl > all.jsonl`` of two files a Windows editor saved: a mark starts line 3."""
    part = "".join(json.dumps(r) + "\n" for r in ROWS).encode("utf-8-sig")
    path = tmp_path / "all.jsonl"
    path.write_bytes(part + part)
    assert read_jsonl(path) == ROWS + ROWS
    conversations, bad = load_labeled(path)
    assert bad == 0 and [c[0]["content"] for c in conversations] == ["play some jazz", "rain?"] * 2


def test_a_mark_inside_a_string_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"query": "\ufeffodd", "data": {}}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_jsonl(path) == [{"query": "\ufeffodd", "data": {}}]


def test_a_mark_left_inside_an_extracted_text_is_dropped():
    from lorapipe.extract.clean import clean_text

    assert clean_text("First part.\n\ufeffSecond part, from another file.") == (
        "First part.\nSecond part, from another file."
    )


UTF8_BODY = "Überblick: LoRA-Adapter, naïve café résumé — “quotes” ✓ 日本語. " * 5


@pytest.mark.parametrize(
    ("data", "offsets", "replaced"),
    [
        # a stray byte in the middle
        (UTF8_BODY.encode() + b"\xff end", [len(UTF8_BODY.encode())], 1),
        # a file cut in the middle of its last character
        (UTF8_BODY.encode() + "é".encode()[:1], [len(UTF8_BODY.encode())], 1),
        # two flaws, one of two bytes
        (b"\xfe" + UTF8_BODY.encode() + b"\xc3\xc3 end", [0, 1 + len(UTF8_BODY.encode())], 3),
    ],
)
def test_utf8_with_a_few_bad_bytes_is_read_with_them_replaced_and_noted(data, offsets, replaced):

    text, note = decode_document(data, "notes.txt")
    assert UTF8_BODY in text and text.count("\ufffd") == replaced
    assert note == (
        f"{replaced} byte{'s' if replaced > 1 else ''} not UTF-8 replaced by U+FFFD at byte offset"
        f"{'s' if len(offsets) > 1 else ''} {', '.join(map(str, offsets))} (the rest is UTF-8)"
    )
    assert decode_document(data)[0] == text


@pytest.mark.parametrize(
    "text",
    [
        "Größe und Maß",
        "He said “hello” – it’s fine…",
        "The LoRA rank sets the capacity of the adapter. " * 20 + "Café",  # one bad byte, no UTF-8 in it
        "Die Größe der Matrix bestimmt die Kapazität des Adapters. Übung macht den Meister. " * 3,
    ],
)
def test_latin1_and_windows_1252_documents_are_still_detected_not_replaced(text):

    assert decode_document(text.encode("cp1252")) == (text, None)


# One or two sentences per language, saved in the code page its users' Windows wrote (a legacy .txt,
# .md or .html): charset-normalizer, detecting alone, read 21 of these 50 (each short and 8 times over)
# wrongly, German as Mac Turkish among them; chardet with lorapipe's candidates and near-tie rule reads all.
LEGACY_TEXTS = {
    "cp1252": [
        "Größe, Übermaß und Straße: Müller fährt über die Brücke.",
        "La crème brûlée est un dessert français. Où est le château? L'été à Noël, garçon.",
        "El niño comió piña en el año pasado; ¿qué más?",
        "A coração da cidade é São Paulo; não há nada mais. Ações e informações.",
        "Café crème brûlée naïve résumé déjà vu façade.",
        "Der Bericht enthält die Ergebnisse der Prüfung für das Geschäftsjahr 2023. Die Gesellschaft hat ihre "
        "Verbindlichkeiten vollständig erfüllt.",
        "Smörgåsbord är en måltid med många rätter. Köttbullar och sill äts ofta på julafton.",
        "Het rapport beschrijft de resultaten van het onderzoek naar ‘efficiëntie’ – en de gevolgen daarvan.",
        "Il perché della città è più bello dell'età dell'oro, così dicono.",
        "Prices rose 5% in 2023 — the “core” index, excluding food and energy, rose 4½%; see § 3.",
        "Æble, øl og blåbær. Søren Kierkegaard blev født i København.",
        "Hyvää päivää! Äiti ja isä ovat kotona tänään.",
    ],
    "cp1250": [
        "Česká republika je vnitrozemský stát ve střední Evropě. Hlavní město je Praha. "
        "Žluťoučký kůň úpěl ďábelské ódy.",
        "Zażółć gęślą jaźń. Polska jest państwem w Europie Środkowej, stolicą jest Warszawa.",
        "Magyarország közép-európai ország. Fővárosa Budapest. Árvíztűrő tükörfúrógép.",
        "Slovenská republika je vnútrozemský štát v strednej Európe. Hlavným mestom je Bratislava.",
        "Hrvatska je država u jugoistočnoj Europi. Glavni grad je Zagreb; čćžšđ.",
    ],
    "cp1251": [
        "Россия — государство в Восточной Европе и Северной Азии. Столица — Москва.",
        "Україна — держава у Східній Європі. Столиця — Київ.",
        "България е държава в Югоизточна Европа. Столица е София.",
    ],
    "cp1253": ["Η Ελλάδα είναι χώρα της νοτιοανατολικής Ευρώπης. Πρωτεύουσα είναι η Αθήνα."],
    "cp1254": [
        "Türkiye Cumhuriyeti, başkenti Ankara olan bir ülkedir. Işık, ğ, ş, ç, ö, ü harfleri. İstanbul'da yaşıyorum."
    ],
    "cp1257": [
        "Lietuvos Respublika yra valstybė Šiaurės Europoje, rytinėje Baltijos jūros pakrantėje. Sostinė – Vilnius. "
        "Žmonės kalba lietuviškai.",
        "Latvijas Republika ir valsts Ziemeļeiropā, Baltijas jūras austrumu krastā. Galvaspilsēta ir Rīga.",
        "Eesti Vabariik on riik Põhja-Euroopas. Pealinn on Tallinn. Õun, äri, öö, üks.",
    ],
}


# Short Western snippets (a price, a table cell, a quote): chardet alone read these as DOS Hebrew or
# Cyrillic ("Preis: 5 א"); the Windows-1252 rule for Latin text strewn with foreign letters reads them.
LEGACY_TEXTS["cp1252"] += [
    "Preis: 5 €",
    "Budget 2024\nTravel: 1,200 €\nHotel: 800 €",
    "L’hôtel coûte 80 € par nuit.",
    "Déjà vu",
    "He said: «Oui»",
    "Tel.: +49 (0)30 123456 – Fax …",
]


@pytest.mark.parametrize(
    ("encoding", "text"), [(encoding, text) for encoding, texts in LEGACY_TEXTS.items() for text in texts]
)
def test_a_legacy_code_page_is_detected_in_many_languages(encoding, text):
    for variant in (text, text * 8):  # one sentence, and a page of it
        assert decode_document(variant.encode(encoding)) == (variant, None)


def test_a_page_declared_utf8_but_saved_as_latin1_keeps_its_accents(tmp_path):
    from lorapipe.extract.formats import read_html

    page = '<html><head><meta charset="utf-8"></head><body><p>Café crème brûlée naïve résumé déjà vu.</p></body></html>'
    (tmp_path / "p.html").write_bytes(page.encode("cp1252"))
    assert read_html(tmp_path / "p.html").pages[0].strip() == "Café crème brûlée naïve résumé déjà vu."


@pytest.mark.parametrize(("declared", "saved"), [("iso-8859-1", "cp1252"), ("us-ascii", "cp1252"), ("utf-16", "utf-8")])
def test_html_charset_labels_are_read_as_browsers_read_them(tmp_path, declared, saved):
    from lorapipe.extract.formats import read_html

    page = f'<html><head><meta charset="{declared}"></head><body><p>25 € – „Größe“ …</p></body></html>'
    (tmp_path / "p.html").write_bytes(page.encode(saved))
    assert read_html(tmp_path / "p.html").pages[0].strip() == "25 € – „Größe“ …"


def test_binary_data_stays_refused():
    import gzip
    import random

    from lorapipe.textfiles import repair_utf8

    noise = bytes(random.Random(0).randrange(1, 256) for _ in range(4000))  # no NUL, mostly not UTF-8
    assert repair_utf8(noise) is None  # far more than a few bad bytes: not "UTF-8 with flaws"
    assert repair_utf8(UTF8_BODY.encode()) is None  # nothing to repair
    with pytest.raises(ValueError, match="binary data, not text"):
        decode_document(gzip.compress(UTF8_BODY.encode(), mtime=0))


def test_extraction_keeps_a_utf8_document_with_a_bad_byte_and_says_where(tmp_path):
    from lorapipe import extract_documents
    from lorapipe.io import read_jsonl

    docs = tmp_path / "docs"
    docs.mkdir()
    cut = UTF8_BODY.encode() + "é".encode()[:1]
    (docs / "a.txt").write_bytes(cut)
    (docs / "b.md").write_bytes(b"# Notes\n\n" + UTF8_BODY.encode() + b"\xff")
    (docs / "c.json").write_bytes(b'{"sections": {"I": {"improved": "' + UTF8_BODY.encode() + b'\xff"}}}')
    (docs / "d.html").write_bytes(b'<html><head><meta charset="utf-8"></head><p>' + UTF8_BODY.encode() + b"\xff</p>")
    declared = '<meta charset="windows-1252"><p>Café crème, naïve: “ok”</p>'  # its declaration is followed
    (docs / "e.html").write_bytes(declared.encode("cp1252"))
    extract_documents(docs, tmp_path / "out", workers=1, min_length=10)
    rows = {Path(r["source"]).name: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(rows, "ok")
    for name, offset in [("a.txt", len(UTF8_BODY.encode())), ("b.md", 9 + len(UTF8_BODY.encode()))]:
        assert rows[name]["error"] == f"1 byte not UTF-8 replaced by U+FFFD at byte offset {offset} (the rest is UTF-8)"
    for name in ("c.json", "d.html"):
        assert rows[name]["error"].startswith("1 byte not UTF-8 replaced by U+FFFD at byte offset ")
    texts = {name: (tmp_path / "out" / row["output"]).read_text(encoding="utf-8") for name, row in rows.items()}
    for name in ("a.txt", "b.md", "c.json", "d.html"):
        assert UTF8_BODY.strip() in texts[name] and texts[name].count("\ufffd") == 1, name
    assert texts["e.html"] == "Café crème, naïve: “ok”\n" and rows["e.html"]["error"] is None
