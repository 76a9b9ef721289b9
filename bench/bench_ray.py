"""Extraction on Ray against the local worker processes (issue 20): the overhead per document, and a
projection for a cluster.

Run: .venv/bin/python bench/bench_ray.py [--corpus ../shared/corpus] [--copies 4] [--repeats 2] [--cpus 2]

Each run extracts `--copies` copies of the corpus (so that per-document costs outweigh the fixed
ones) from an empty cache (`resume=False`, a fresh cache folder): the local executor (`--cpus` worker
processes, started inside the run), Ray on a local Ray already running in this process (`--cpus` CPUs,
its workers started before the clock: Ray's tasks, bytes shipped and results returned), and Ray
started for the run (what `extract.executor: ray` costs without a cluster). Medians of `--repeats`
runs, interleaved. The steady per-page cost of the PDF reader is timed in this process after a
warm-up (as bench_extract.py does). Then a projection, stated as such, for the seeds' library (600
files) on N Ray worker CPUs. Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from lorapipe import extract_documents

LIBRARY_FILES = 600  # the seeds' library: 600 files, 3 GB of PDFs (issue 20)
PAGES_PER_FILE = 30  # an assumption (5 MB per PDF, as reports and papers run): the projection scales with it
LAYOUT_PAGE_S = 1.0  # docling's layout models: about one page per second per CPU (issue 20's figure)


def _extract(corpus: Path, executor: str, cpus: int) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as folder:
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            rows = extract_documents(
                [corpus], Path(folder) / "out", executor=executor, workers=cpus, resume=False, cache_dir=folder
            )
        seconds = time.perf_counter() - started
    failed = [row["source"] for row in rows if row["status"] != "ok"]
    if failed:
        raise SystemExit(f"{executor}: not extracted: {failed}")  # a timing of failures is no timing
    return seconds, rows


def _pdf_page_seconds(corpus: Path) -> float:
    """CPU-seconds per page of docling-native on the corpus's PDFs, after a warm-up, in this process."""
    from lorapipe.extract import convert_document

    pdfs = sorted(corpus.glob("*.pdf"))
    convert_document(pdfs[0], "pdf", pdf_backend="docling-native")  # imports, first use
    started, pages = time.process_time(), 0
    for pdf in pdfs:
        pages += len(convert_document(pdf, "pdf", pdf_backend="docling-native")["pages"])
    return (time.process_time() - started) / pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="../shared/corpus", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()
    import ray

    corpus = args.corpus / "docs" if (args.corpus / "docs").is_dir() else args.corpus
    work = Path(tempfile.mkdtemp(prefix="bench-ray-docs-"))
    for copy in range(args.copies):
        shutil.copytree(corpus, work / f"copy{copy}")
    docs = work
    page_s = _pdf_page_seconds(corpus)
    times: dict[str, list[float]] = {"local": [], "ray (running)": [], "ray (started for the run)": []}
    rows: list[dict] = []
    for _ in range(args.repeats):
        seconds, rows = _extract(docs, "local", args.cpus)
        times["local"].append(seconds)
        seconds, _ = _extract(docs, "ray", args.cpus)
        times["ray (started for the run)"].append(seconds)
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
        try:
            seconds, _ = _extract(docs, "ray", args.cpus)
        finally:
            ray.shutdown()
        times["ray (running)"].append(seconds)
    shutil.rmtree(work)
    files = len(rows)
    pages = sum(row["pages"] or 1 for row in rows)
    median = {name: statistics.median(values) for name, values in times.items()}
    per_doc = (median["ray (running)"] - median["local"]) / files * args.cpus  # CPU-seconds per document
    startup = median["ray (started for the run)"] - median["ray (running)"]
    print(
        f"Corpus: {args.copies} copies of {corpus} ({files} files, {pages} pages; a non-PDF counts as one page); "
        f"{args.cpus} CPUs; medians of {args.repeats} runs.\n"
    )
    print("| executor | seconds (median; runs) | files/s | pages/s |")
    print("|---|---|---|---|")
    for name, values in times.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {median[name]:.1f} ({runs}) | {files / median[name]:.2f} | {pages / median[name]:.2f} |")
    print(
        f"\nRay's cost per document against the local executor: **{per_doc:+.2f} CPU-s** (negative: the local "
        f"executor starts its {args.cpus} worker processes, with their imports, inside the run; Ray's were "
        f"started before the clock); starting and stopping a local Ray for the run: **{startup:.1f} s**. "
        f"docling-native, warm, in one process: {page_s:.3f} CPU-s per PDF page.\n"
    )
    print(
        f"**Projection** (not a measurement): the seeds' library, {LIBRARY_FILES} files of an assumed "
        f"{PAGES_PER_FILE} pages ({LIBRARY_FILES * PAGES_PER_FILE} pages), on N Ray worker CPUs: "
        "time ≈ pages × s/page / N + files × max(0, Ray's cost per document) / N, plus joining the cluster "
        "and each worker's first import of its converter (seconds).\n"
    )
    print("| N worker CPUs | docling-native (measured s/page) | docling layout (1 s/page per CPU) |")
    print("|---|---|---|")
    total_pages = LIBRARY_FILES * PAGES_PER_FILE
    for n in (2, 8, 32, 128):
        cost = LIBRARY_FILES * max(per_doc, 0.0) / n
        native = (total_pages * page_s / n + cost) / 60
        layout = (total_pages * LAYOUT_PAGE_S / n + cost) / 60
        print(f"| {n} | {native:.1f} min | {layout:.1f} min |")


if __name__ == "__main__":
    main()
