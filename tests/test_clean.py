"""De-hyphenation: a line-end hyphen that belongs to the word stays, a syllable break is joined, decided
by the document's own vocabulary, and both are counted (in the manifest too).

Run: .venv/bin/pytest tests/test_clean.py
"""

from collections import Counter
from pathlib import Path

import pytest

from lorapipe.extract.clean import clean_pages, clean_text, keeps_hyphen, vocabulary

B12 = (
    "Low-rank adaptation is a well-known method for tuning large models cheaply.\n"
    "In practice it is a well-\nknown and cheap method; for exam-\nple, a rank of eight is common.\n"
    "The state-of-the-art results use a rank of sixteen, as state-of-the-\nart systems do.\n"
)


def test_the_documents_own_words_decide():
    counts: Counter[str] = Counter()
    text = clean_text(B12, counts)
    assert "a well-known and cheap method; for example, a rank" in text
    assert "as state-of-the-art systems do." in text
    assert "wellknown" not in text and "theart" not in text and "exam-" not in text
    assert counts == {"hyphens_joined": 1, "hyphens_kept": 2}


@pytest.mark.parametrize(
    ("text", "expected", "joined", "kept"),
    [
        # the joined form is used elsewhere: join, even where both halves are words
        ("We under-\nstand it. To understand more, read on.", "We understand it.", 1, 0),
        # the hyphenated form is used elsewhere: keep it, even where the halves are not words
        ("A co-\nop and another co-op.", "A co-op and another", 0, 1),
        # the form used more often wins
        ("e-\nmail, e-mail, email, email.", "email, e-mail", 1, 0),
        # neither form elsewhere: a syllable break is joined
        ("The conver-\nsion runs.", "The conversion runs.", 1, 0),
        # neither form elsewhere: a hyphenated word, a number, an acronym keep their hyphen
        ("The up-to-\ndate list.", "The up-to-date list.", 0, 1),
        ("A 3-\nfold rise.", "A 3-fold rise.", 0, 1),
        ("A GPT-\nbased judge.", "A GPT-based judge.", 0, 1),
        # neither form elsewhere, two words the document uses alone (3+ letters): a compound
        ("A model-\nfree method: no model, free of charge.", "A model-free method", 0, 1),
        # a short first part is a prefix, not a word: joined
        ("An in-\nformation leak; in the formation.", "An information leak", 1, 0),
        # before a capital or a number the hyphen belongs to the word: kept, on one line
        ("Jean-\nPaul wrote it.", "Jean-Paul wrote it.", 0, 1),
        ("The COVID-\n19 pandemic.", "The COVID-19 pandemic.", 0, 1),
        ("We used GPT-\n4 here.", "We used GPT-4 here.", 0, 1),
        ("A non-\nEnglish text.", "A non-English text.", 0, 1),
        # a productive prefix keeps its hyphen where the document says nothing, unless a suffix follows
        ("The model uses self-\nattention.", "The model uses self-attention.", 0, 1),
        ("A non-\nlinear activation.", "A non-linear activation.", 0, 1),
        ("Low-\nrank adaptation adds a low-\nrank update.", "Low-rank adaptation adds a low-rank update.", 0, 2),
        ("It is self-\nish, non-\nsense.", "It is selfish, nonsense.", 2, 0),
        (
            "multi-\nhead, multi-\nple, semi-\nsupervised, semi-\nnar",
            "multi-head, multiple, semi-supervised, seminar",
            2,
            2,
        ),
        ("zero-\nshot and few-\nshot fine-\ntuning", "zero-shot and few-shot fine-tuning", 0, 3),
        # a single letter keeps its hyphen
        ("An X-\nray image and an x-\nray beam.", "An X-ray image and an x-ray beam.", 0, 2),
        ("Send an e-\nmail to us.", "Send an e-mail to us.", 0, 1),
        # a suspended hyphen keeps its hyphen, and the line break becomes a space
        ("Both pre-\nand post-training matter.", "Both pre- and post-training matter.", 0, 1),
        ("First-\nor second-order terms.", "First- or second-order terms.", 0, 1),
        # a hyphen in a URL, a path or an address is a character of it
        ("See https://my-\nsite.example.com/some-\npath now.", "See https://my-site.example.com/some-path now.", 0, 2),
        ("Visit my-\nsite.example.com or mail me.my-\nname@example.org.", "my-site.example.com", 0, 2),
        ("Mail me.my-\nname@example.org.", "me.my-name@example.org.", 0, 1),
        # prose with a slash is no path
        ("training/vali-\ndation data", "training/validation data", 1, 0),
        # a non-breaking hyphen (U+2011) is always kept
        ("a non\u2011\nbreaking one", "a non\u2011breaking one", 0, 1),
        # the HYPHEN character (U+2010) too, kept as it was
        ("The state\u2010of\u2010the\u2010\nart.", "The state\u2010of\u2010the\u2010art.", 0, 1),
        # a soft hyphen at a line end is always a syllable break, spaces around the break or not
        ("Conver\u00ad\nsion.", "Conversion.", 1, 0),
        ("exam\u00ad \n ple", "example", 1, 0),
        # a blank line after a hyphen is a paragraph break: never swallowed
        ("The end of a dash-\n\nnew paragraph here.", "The end of a dash-\n\nnew paragraph here.", 0, 0),
        ("a paragraph-\n \t\n\nnext", "a paragraph-\n\nnext", 0, 0),
        # ... unless a word split in two continues in lower case after it: a paragraph that a PDF converter
        # cut between two columns or blocks ("Ef-", blank line, "fects")
        (
            "trained only on PubTabNet. Ef-\n\nfects of reducing the layers",
            "trained only on PubTabNet. Effects of reducing the layers",
            1,
            0,
        ),
        ("A sentence that ends-\n\nThe next paragraph.", "A sentence that ends-\n\nThe next paragraph.", 0, 0),
        # dashes are not hyphens; a list item is not a broken word
        ("He paused\u2014\nthen spoke.", "He paused\u2014\nthen spoke.", 0, 0),
        ("- item with a trailing word-\n- next item", "- item with a trailing word-\n- next item", 0, 0),
    ],
)
def test_line_end_hyphens(text, expected, joined, kept):
    counts: Counter[str] = Counter()
    assert expected in clean_text(text, counts)
    assert (counts["hyphens_joined"], counts["hyphens_kept"]) == (joined, kept)


def test_soft_hyphens_are_dropped_everywhere():
    counts: Counter[str] = Counter()
    text = clean_text("co\u00adoperate and exam\u00ad \nple, a para\u00ad\n\nnext", counts)
    assert text == "cooperate and example, a para\n\nnext"
    assert counts == {"hyphens_joined": 1, "soft_hyphens_dropped": 2}


def test_a_word_broken_across_pages_is_joined_but_pages_stay_paragraphs():
    counts: Counter[str] = Counter()
    pages = ["This is an exam-", "ple of text.", "A well-known self-", "attention layer.", "End of a page.", "Next."]
    text = clean_pages(pages, paged=True, counts=counts)
    assert text == "This is an example of text.\n\nA well-known self-attention layer.\n\nEnd of a page.\n\nNext."
    assert counts == {"hyphens_joined": 1, "hyphens_kept": 1}


def test_a_chain_of_breaks_is_resolved_link_by_link():
    assert clean_text("a con-\nver-\nsion, and a mother-in-\nlaw") == "a conversion, and a mother-in-law"


def test_the_vocabulary_skips_the_broken_words_themselves():
    words = vocabulary("a well-known\nexam-\nple of it")
    assert words["well-known"] == 1 and words["well"] == 1 and words["known"] == 1
    assert words["exam"] == 0 and words["ple"] == 0 and words["example"] == 0
    assert keeps_hyphen("well", "known", words) and not keeps_hyphen("exam", "ple", words)


def test_counts_add_up_over_pages():
    counts: Counter[str] = Counter()
    pages = ["An exam-\nple here.", "A well-\nknown one, well-known.", "A conver-\nsion."]
    text = clean_pages(pages, paged=True, counts=counts)
    assert "An example here." in text and "A well-known one" in text and "A conversion." in text
    assert counts == {"hyphens_joined": 2, "hyphens_kept": 1}


def test_the_manifest_counts_joined_and_kept_hyphens(tmp_path):
    from lorapipe import extract_documents
    from lorapipe.io import read_jsonl

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text(B12, encoding="utf-8")
    (docs / "plain.md").write_text("No line ends in a hyphen in this short note at all.\n", encoding="utf-8")
    rows = extract_documents(docs, tmp_path / "out", workers=1, min_length=10)
    written = {Path(r["source"]).name: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    for by_name in ({Path(r["source"]).name: r for r in rows}, written):
        assert (by_name["notes.txt"]["hyphens_joined"], by_name["notes.txt"]["hyphens_kept"]) == (1, 2)
        assert (by_name["plain.md"]["hyphens_joined"], by_name["plain.md"]["hyphens_kept"]) == (0, 0)
    assert "state-of-the-art systems" in (tmp_path / "out" / written["notes.txt"]["output"]).read_text()
