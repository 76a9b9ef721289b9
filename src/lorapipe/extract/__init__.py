"""Extract text from documents: one ``.txt`` per source plus ``manifest.jsonl`` (the extract stage).

    from lorapipe import extract_documents
    manifest = extract_documents(["data/raw/docs"], "data/extracted_text")

One bad document never loses the others: it is recorded as ``failed`` with its error. Nothing in
the input folders is modified.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from pathlib import Path

from lorapipe import paths
from lorapipe.extract.formats import FORMATS, READERS, read_pdf
from lorapipe.io import atomic_dir, write_jsonl

__all__ = ["extract_documents", "clean_text", "FORMATS"]


def clean_text(text: str) -> str:
    """Unicode NFC, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _out_name(relative: Path) -> str:
    """``sub/dir/paper.pdf`` → ``sub__dir__paper.pdf.txt`` (unique, flat, keeps the extension)."""
    return "__".join(relative.parts) + ".txt"


def _sources(input_dirs: list[Path]) -> list[tuple[Path, Path]]:
    found = []
    for root in input_dirs:
        if not root.is_dir():
            raise FileNotFoundError(f"input folder not found: {root}")
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                relative = path.relative_to(root)
                found.append((path, Path(root.name) / relative if len(input_dirs) > 1 else relative))
    return found


def extract_one(path: Path, pdf_backend: str = "auto") -> tuple[str, int | None, str]:
    kind = FORMATS[path.suffix.lower()]
    if kind == "pdf":
        return read_pdf(path, pdf_backend)
    return READERS[kind](path)


def extract_documents(
    input_dirs: list[str | Path] | str | Path = paths.RAW_DOCS,
    out_dir: str | Path = paths.EXTRACTED,
    pdf_backend: str = "auto",
    min_length: int = 20,
) -> list[dict]:
    """Extract every supported file under `input_dirs` (recursively) into `out_dir`.

    Returns the manifest rows. Raises FileNotFoundError for a missing input folder and
    ValueError when no document yields usable text.
    """
    dirs = [Path(d) for d in ([input_dirs] if isinstance(input_dirs, (str, Path)) else input_dirs)]
    sources = _sources(dirs)
    manifest: list[dict] = []
    with atomic_dir(out_dir) as tmp:
        for number, (path, relative) in enumerate(sources, 1):
            started = time.perf_counter()
            row = {"source": str(path), "sha256": _sha256(path), "bytes": path.stat().st_size,
                   "format": FORMATS.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "unknown"),
                   "extractor": None, "pages": None, "chars": 0, "status": "ok", "error": None,
                   "output": None, "seconds": 0.0}
            if path.suffix.lower() not in FORMATS:
                row.update(status="skipped", error=f"unsupported format {path.suffix or '(no extension)'}")
            else:
                try:
                    text, pages, extractor = extract_one(path, pdf_backend)
                    text = clean_text(text)
                    row.update(extractor=extractor, pages=pages, chars=len(text))
                    if len(text) < min_length:
                        row.update(status="skipped", error=f"only {len(text)} characters of text (extract.min_length is {min_length})")
                    else:
                        row["output"] = _out_name(relative)
                        (tmp / row["output"]).write_text(text + "\n", encoding="utf-8")
                except Exception as exc:  # noqa: BLE001 - one bad document never stops the others
                    row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            row["seconds"] = round(time.perf_counter() - started, 3)
            manifest.append(row)
            detail = f"{row['chars']} chars via {row['extractor']}" if row["status"] == "ok" else row["error"]
            print(f"[extract] {number}/{len(sources)} {row['status']:7} {path} ({detail})", flush=True)
        ok = sum(row["status"] == "ok" for row in manifest)
        if not ok:
            counts = {s: sum(r["status"] == s for r in manifest) for s in ("failed", "skipped")}
            raise ValueError(
                f"no text was extracted from {', '.join(map(str, dirs))}: {len(manifest)} file(s), "
                f"{counts['failed']} failed, {counts['skipped']} skipped. Supported: {', '.join(sorted(FORMATS))}"
            )
        write_jsonl(tmp / paths.MANIFEST_NAME, manifest)
    print(f"[extract] {ok} of {len(manifest)} document(s) extracted into {out_dir}", flush=True)
    return manifest
