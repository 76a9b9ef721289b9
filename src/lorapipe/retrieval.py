"""BM25 retrieval over the synth stage's passages: the index the knowledge evaluation measures and
`lorapipe serve/ask --retrieval` serve, and the one prompt format both use.

    from lorapipe.retrieval import load_index, retrieval_messages
    index = load_index()  # data/synth/index
    messages = retrieval_messages("You answer questions.", "What is LoRA?", index.search("What is LoRA?", 2))

Passages are rows of ``data/synth/passages.jsonl`` (``{"id", "source", "passage", "text"}``). Scoring is
bm25s's Lucene BM25 (k1 1.5, b 0.75) over lowercase word tokens of two or more characters, English
stopwords removed; text of a script written without spaces (Chinese, Japanese) as its
overlapping character bigrams. The ranking is deterministic: equal scores keep corpus order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import read_jsonl, write_jsonl

PASSAGES_NAME = "passages.jsonl"  # the corpus copy inside the index folder; row i is document i of the index
_STOPWORDS = "en"
_METHOD = "lucene"
_PARAMS_NAME = "params.index.json"  # bm25s writes it with the index
_INDEX_FILES = (_PARAMS_NAME, "vocab.index.json", "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")


# Chinese and Japanese (kana, kanji) are written without spaces between words: a run of their
# characters is one \w+ "word" as long as a sentence, so it is cut into the overlapping character
# bigrams that Lucene's CJK analyzer indexes (a single character is doubled to pass bm25s's 2+ rule).
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]+")


def _bigrams(match: re.Match) -> str:
    run = match.group()
    return " " + (" ".join(run[i : i + 2] for i in range(len(run) - 1)) if len(run) > 1 else run * 2) + " "


def _tokens(texts: list[str], vocabulary: bool):
    import bm25s

    texts = [_UNSPACED.sub(_bigrams, text) for text in texts]
    return bm25s.tokenize(texts, lower=True, stopwords=_STOPWORDS, return_ids=vocabulary, show_progress=False)


def build_index(passages: list[dict], out_dir: str | Path) -> None:
    """Index `passages` (rows with a ``"text"`` string) with BM25 and save it in `out_dir` (created):
    bm25s's index files plus ``passages.jsonl``, a copy of the rows in their order. An empty list, or
    passages without a single indexable word, write only ``passages.jsonl`` (an index that finds
    nothing). Raises ValueError for a row without a string ``"text"``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in _INDEX_FILES:  # a folder indexed before holds no leftover of that index
        (out / stale).unlink(missing_ok=True)
    texts = []
    for number, row in enumerate(passages):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"passage {number} has no text string: {str(row)[:80]!r}")
        texts.append(row["text"])
    tokens = _tokens(texts, vocabulary=True) if texts else None
    if tokens is not None and tokens.vocab:  # bm25s cannot index a corpus without a word
        import bm25s

        retriever = bm25s.BM25(method=_METHOD)
        retriever.index(tokens, show_progress=False)
        retriever.save(out, show_progress=False)
    write_jsonl(out / PASSAGES_NAME, passages)


@dataclass
class Index:
    """A loaded BM25 index: `passages` (rows of passages.jsonl, in index order) and the scorer."""

    passages: list[dict]
    _bm25: Any = field(default=None, repr=False)

    def search(self, query: str, k: int) -> list[dict]:
        """The `k` passages that best match `query`, best first, each a copy of its row with ``"score"``
        (float, BM25) added; equal scores keep corpus order. Passages sharing no word with the query
        are never returned, so the list is shorter when fewer match or the corpus is smaller; [] for an
        empty corpus, an empty query or k <= 0."""
        if self._bm25 is None or k <= 0 or not self.passages:
            return []
        words = [w for w in _tokens([query], vocabulary=False)[0] if w in self._bm25.vocab_dict]
        if not words:
            return []
        scores = self._bm25.get_scores(words)
        ranked = sorted(range(len(self.passages)), key=lambda i: (-float(scores[i]), i))
        return [{**self.passages[i], "score": float(scores[i])} for i in ranked[:k] if scores[i] > 0]


def load_index(folder: str | Path = paths.RETRIEVAL_INDEX) -> Index:
    """The index `build_index` saved in `folder` (default ``data/synth/index``). Raises FileNotFoundError
    naming the folder and the stage that writes it (``run `dvc repro synth```) when it or its
    passages.jsonl is missing, and ValueError when the passages and the index disagree in size."""
    folder = paths.require(folder, "--index")
    passages = read_jsonl(paths.require(Path(folder) / PASSAGES_NAME, "--index"))
    if not (Path(folder) / _PARAMS_NAME).is_file():
        if any(_tokens([p.get("text", "")], vocabulary=False)[0] for p in passages):
            raise FileNotFoundError(f"{folder}: the BM25 index files are missing: rebuild it with `dvc repro synth`")
        return Index(passages=passages)  # empty, or not one indexable word: finds nothing
    import bm25s

    retriever = bm25s.BM25.load(folder, load_corpus=False, show_progress=False)
    if retriever.scores["num_docs"] != len(passages):
        raise ValueError(
            f"{folder}: the index holds {retriever.scores['num_docs']} passages but {PASSAGES_NAME} "
            f"{len(passages)}: rebuild it with `dvc repro synth`"
        )
    return Index(passages=passages, _bm25=retriever)


def retrieval_messages(system_prompt: str, question: str, passages: list[dict]) -> list[dict]:
    """The chat messages that ask `question` with `passages` (rows with ``"source"`` and ``"text"``, as
    `Index.search` returns) in the prompt: ``[{"role": "system", ...}, {"role": "user", "content":
    "Answer the question using these passages.\\n\\n[1] (source) text\\n\\n[2] ...\\n\\nQuestion: ..."}]``.
    With no passages the user message holds only the question line after the instruction."""
    blocks = [f"[{n}] ({p.get('source', '')}) {p['text'].strip()}" for n, p in enumerate(passages, 1)]
    content = "\n\n".join(["Answer the question using these passages.", *blocks, f"Question: {question}"])
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]
