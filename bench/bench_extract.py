"""Extraction benchmark: quality and speed of every PDF backend on the real corpus.

Run: .venv/bin/python bench/bench_extract.py [--corpus ../shared/corpus] [--repeats 3]

For each backend and document: the word-sequence similarity to docling's ground truth (the scorer of
../shared/tools/textsim.py) after lorapipe's cleaning, and pages per second of the conversion
(median, min and max of --repeats warm runs in this process). Then the whole extract stage
(worker processes, cold cache) on the corpus. Prints a Markdown section for bench/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import re
import statistics
import tempfile
import time
from pathlib import Path

from lorapipe import extract_documents
from lorapipe.extract import FORMATS, convert_document
from lorapipe.extract.clean import clean_pages
from lorapipe.extract.formats import docling_layout_available


def words(text: str) -> list[str]:
    return re.sub(r"\s+", " ", re.sub(r"[#*|`_>\-]+", " ", text)).strip().lower().split()


def similarity(text: str, truth: str) -> float:
    return difflib.SequenceMatcher(None, words(text), words(truth), autojunk=False).ratio()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="../shared/corpus", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    docs = sorted((args.corpus / "docs").iterdir())
    backends = ["docling-native", "pdfplumber"] + (["docling"] if docling_layout_available() else [])
    lines = ["| backend | document | pages | similarity | pages/s median (min–max) |", "|---|---|---|---|---|"]
    for backend in backends:
        for doc in docs:
            kind = FORMATS[doc.suffix.lower()]
            if kind != "pdf" and backend != backends[0]:
                continue  # non-PDF readers do not depend on the PDF backend
            convert_document(doc, kind, pdf_backend=backend)  # warm-up: imports, model load
            speeds, result = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = convert_document(doc, kind, pdf_backend=backend)
                speeds.append(len(result["pages"]) / (time.perf_counter() - started))
            truth = (args.corpus / "groundtruth" / f"{doc.stem}.md").read_text()
            score = similarity(clean_pages(result["pages"], result["paged"]), truth)
            name = result["extractor"] if kind != "pdf" else backend
            lines.append(
                f"| {name} | {doc.name} | {len(result['pages'])} | {score:.3f} | "
                f"{statistics.median(speeds):.1f} ({min(speeds):.1f}–{max(speeds):.1f}) |"
            )
    if "docling" not in backends:
        lines.append("| docling (layout models) | – | – | not installed here (`lorapipe[layout]`) | – |")
    stage = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # keep the stage's summary out of the report
                manifest = extract_documents(
                    args.corpus / "docs",
                    Path(tmp) / "out",
                    workers=workers,
                    resume=False,
                    cache_dir=Path(tmp) / "cache",
                )
            seconds = time.perf_counter() - started
            pages = sum(row["pages"] or 0 for row in manifest)
            stage.append(
                f"- whole stage, `extract.workers: {workers}`, cold cache: {len(manifest)} files, "
                f"{pages} PDF pages in {seconds:.1f} s (worker start-up and docling import included)"
            )
    print("\n".join(lines + [""] + stage))


if __name__ == "__main__":
    main()
