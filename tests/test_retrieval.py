"""BM25 retrieval over passages: the right passage first, k beyond the corpus, an empty corpus, the saved
index ranking as the built one, and the one prompt format of evaluation and serving.

Run: .venv/bin/pytest tests/test_retrieval.py
"""

import json

import pytest

from lorapipe.retrieval import build_index, load_index, retrieval_messages

TEXTS = {
    "lora.md": "LoRA freezes the pretrained weights and trains two small low-rank matrices per layer; the adapter "
    "can be merged into the base weights after training.",
    "bread.md": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the flour; the starter "
    "is fed with water and flour every day.",
    "volcano.md": "A volcano erupts when magma from the mantle rises through cracks in the crust; basalt lava "
    "flows far before it cools.",
    "chess.md": "In chess the king castles by moving two squares toward a rook, which then jumps over the king; "
    "castling is illegal while the king is in check.",
    "tides.md": "Ocean tides follow the gravitational pull of the moon and the sun; spring tides come at new "
    "and full moon.",
}
PASSAGES = [{"id": f"{source}#0", "source": source, "passage": 0, "text": text} for source, text in TEXTS.items()]
QUESTIONS = {
    "lora.md": "What does LoRA train instead of the pretrained weights?",
    "bread.md": "Why does sourdough bread rise?",
    "volcano.md": "When does a volcano erupt?",
    "chess.md": "When is castling illegal for the king?",
    "tides.md": "What causes the ocean tides?",
}


@pytest.fixture
def index_dir(tmp_path):
    build_index(PASSAGES, tmp_path / "index")
    return tmp_path / "index"


def test_the_passage_a_question_was_built_from_comes_first(index_dir):
    index = load_index(index_dir)
    assert index.passages == PASSAGES
    for source, question in QUESTIONS.items():
        hits = index.search(question, 2)
        assert hits[0]["source"] == source, (question, hits)
        assert hits[0]["id"] == f"{source}#0" and hits[0]["text"] == TEXTS[source]
        assert all(hit["score"] > 0 for hit in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "score" not in index.passages[0]  # search returns copies


def test_k_beyond_the_corpus_and_queries_that_match_nothing(index_dir):
    index = load_index(index_dir)
    hits = index.search("the king and the moon and the flour and the magma and LoRA", 50)
    assert len(hits) == len(PASSAGES) and len({h["id"] for h in hits}) == len(PASSAGES)
    assert index.search("castling", 50) == [index.search("castling", 1)[0]]  # only passages that share a word
    assert index.search("zebra quantum", 3) == []
    assert index.search("", 3) == [] and index.search("the a of", 3) == []  # nothing left after stopwords
    assert index.search("volcano", 0) == []


def test_ties_keep_corpus_order(tmp_path):
    twins = [{"id": f"t#{n}", "source": "t", "passage": n, "text": "identical words here"} for n in range(4)]
    build_index(twins, tmp_path)
    assert [h["id"] for h in load_index(tmp_path).search("identical", 4)] == ["t#0", "t#1", "t#2", "t#3"]


def test_an_empty_corpus_finds_nothing(tmp_path):
    build_index([], tmp_path / "empty")
    index = load_index(tmp_path / "empty")
    assert index.passages == [] and index.search("anything at all", 3) == []
    wordless = [{"id": "w#0", "source": "w", "passage": 0, "text": "the a of !!"}]
    build_index(wordless, tmp_path / "wordless")
    assert load_index(tmp_path / "wordless").search("the", 2) == []


def test_rebuilding_a_folder_leaves_nothing_of_the_old_index(index_dir):
    build_index([], index_dir)
    assert load_index(index_dir).search("volcano", 2) == []


def test_save_and_load_give_the_same_ranking_and_the_same_bytes(index_dir, tmp_path):
    from lorapipe.retrieval import Index

    import bm25s

    built = bm25s.BM25(method="lucene")
    built.index(bm25s.tokenize([p["text"] for p in PASSAGES], stopwords="en", show_progress=False), show_progress=False)
    in_memory = Index(passages=PASSAGES, _bm25=built)
    loaded = load_index(index_dir)
    for question in [*QUESTIONS.values(), "king moon flour"]:
        assert loaded.search(question, 5) == in_memory.search(question, 5)
    build_index(PASSAGES, tmp_path / "again")
    for path in sorted(index_dir.iterdir()):
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    copy = [json.loads(line) for line in (index_dir / "passages.jsonl").read_text().splitlines()]
    assert copy == PASSAGES


def test_a_missing_index_names_the_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="dvc repro synth"):
        load_index("data/synth/index")
    with pytest.raises(FileNotFoundError, match="--index"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "passages.jsonl").write_text(json.dumps(PASSAGES[0]) + "\n")
    with pytest.raises(FileNotFoundError, match="index files are missing"):
        load_index(tmp_path / "broken")


def test_a_passage_without_text_is_refused(tmp_path):
    with pytest.raises(ValueError, match="passage 1 has no text"):
        build_index([PASSAGES[0], {"id": "x"}], tmp_path)


def test_retrieval_messages_format():
    hits = [{"source": "a.md", "text": " first passage \n"}, {"source": "b.pdf", "text": "second"}]
    assert retrieval_messages("Be brief.", "Why?", hits) == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": "Answer the question using these passages.\n\n[1] (a.md) first passage\n\n"
            "[2] (b.pdf) second\n\nQuestion: Why?",
        },
    ]
    assert (
        retrieval_messages("S", "Q?", [])[1]["content"] == "Answer the question using these passages.\n\nQuestion: Q?"
    )
