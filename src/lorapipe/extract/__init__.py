"""Extract text from documents: one ``.txt`` per source, ``manifest.jsonl`` and ``extract.log``.

    from lorapipe import extract_documents
    manifest = extract_documents(["data/raw/docs", "more/"], "data/extracted_text", workers=2)

- Incremental: each source's raw text is cached by content (sha256 of the file, the fingerprint of
  the readers of its format and the params that change that format's result) in a cache folder
  outside the outputs, so adding one document extracts only that one, and a rerun after a crash
  resumes where it stopped. The fingerprint (`reader_fingerprint`) hashes the code that reads the
  format (its syntax tree: a comment does not count) and the versions of the libraries that convert
  it, so a changed reader or library never serves text cached by an older one, and a change to the
  HTML reader leaves the (expensive) PDF conversions cached.
- Crash-proof: documents are converted in worker processes with a time limit; a crash or time-out
  is retried with pdfplumber, and a document that still fails is recorded as ``failed``.
- Nothing in the input folders is modified; symbolic links out of an input folder are not followed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lorapipe import faults, paths, textfiles
from lorapipe.extract.clean import clean_pages, clean_text
from lorapipe.extract.formats import FORMATS, OCR_HINT, READERS, read_pdf, resolve_pdf_backend
from lorapipe.extract.workers import Job, run_jobs
from lorapipe.io import atomic_dir, hash_file, write_json, write_jsonl
from lorapipe.params import DEFAULTS

__all__ = ["extract_documents", "convertible_documents", "clean_text", "FORMATS"]

EXTRACTOR_VERSION = 3  # a manual bump on top of `reader_fingerprint`, for a change it cannot see
# Modules of this package (paths relative to it) that do not shape the raw text a cache entry holds:
# cleaning runs on cached text at every run, workers only carry it.
NOT_READERS = frozenset({"__init__.py", "clean.py", "workers.py", "ray_jobs.py"})
# The shared module of readers: per format, only the definitions its reader reaches count, and the
# lorapipe modules they import from (markup.py for HTML, pdftext.py for PDFs, …), with theirs.
READERS_MODULE = "formats.py"
# The distributions that turn each format into text (formats.py); docling under either of its names.
_DOCLING = ("docling", "docling-slim", "docling-core", "docling-ibm-models", "docling-parse")
_HTML = ("beautifulsoup4", "lxml", "chardet")  # chardet: a page in no declared charset (decode_document)
CONVERTER_DISTRIBUTIONS = {
    "pdf": (*_DOCLING, "pdfminer.six", "pdfplumber", "pypdfium2"),
    "html": _HTML,
    "epub": (*_HTML, "ebooklib"),
    "docx": (*_HTML, "python-docx"),
    "markdown": ("chardet",),
    "text": ("chardet",),
    "json": ("chardet",),
}
# The options (of `convert_document`) that change each format's text; PDF: only for these backends.
PDF_OPTIONS = {"docling": ("device", "ocr", "artifacts_path")}
LOG_NAME = "extract.log"
# Facts of one run, not of the documents: returned, printed, never written into the outputs, so the
# outputs depend on the inputs only (byte-equal after a resumed or repeated run).
RUN_FIELDS = ("cached", "seconds")


def convert_document(
    path: Path,
    kind: str,
    pdf_backend: str = "docling-native",
    device: str = "auto",
    ocr: bool = False,
    artifacts_path: str | None = None,
) -> dict[str, Any]:
    """Raw pages of one document (runs in a worker process)."""
    extracted = read_pdf(path, pdf_backend, device, ocr, artifacts_path) if kind == "pdf" else READERS[kind](path)
    return dict(vars(extracted))  # pages, extractor, paged, note


def _code(tree: ast.AST) -> str:
    """What a syntax tree does: its dump without docstrings (comments are not in it)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _reached(tree: ast.Module, root: str) -> list[ast.stmt]:
    """The top-level definitions of module `tree` that `root` (a name defined there) uses, itself
    and transitively, in the module's order."""
    defined: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                defined.update((name.id, node) for name in ast.walk(target) if isinstance(name, ast.Name))
    seen, todo = {root}, [root]
    while todo:
        node = defined.get(todo.pop())
        for name in ast.walk(node) if node is not None else ():
            if isinstance(name, ast.Name) and name.id in defined and name.id not in seen:
                seen.add(name.id)
                todo.append(name.id)
    return [node for node in tree.body if any(defined.get(name) is node for name in seen)]


def _reader_name(kind: str) -> str:
    return "read_pdf" if kind == "pdf" else READERS[kind].__name__


def _lorapipe_imports(tree: ast.Module, names: set[str] | None = None) -> set[str]:
    """The lorapipe modules (dotted) that `tree` imports from at its top level; with `names`, only
    those it imports one of `names` from."""
    return {
        node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lorapipe"
        if names is None or any((alias.asname or alias.name) in names for alias in node.names)
    }


def _module_file(module: str, package: Path) -> Path:
    """The file of lorapipe module `module`; those of this package are looked up in `package`."""
    here = __name__.split(".")
    parts = module.split(".")
    root, parts = (package, parts[len(here) :]) if parts[: len(here)] == here else (_SRC, parts)
    path = root.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


_SRC = Path(textfiles.__file__).parents[1]


def _reader_modules(kind: str, package: Path, readers: ast.Module, reached: list[ast.stmt]) -> dict[str, Path]:
    """The modules that read format `kind` besides `READERS_MODULE`: those its `reached`
    definitions import from, with what they import from lorapipe in turn; and every module of
    `package` (but `NOT_READERS`) that `READERS_MODULE` does not import (one added later)."""
    used = {node.id for stmt in reached for node in ast.walk(stmt) if isinstance(node, ast.Name)}
    todo = sorted(_lorapipe_imports(readers, used))
    found: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        path = _module_file(module, package)
        if module in found or not path.is_file() or path.name == "__init__.py":
            continue
        found[module] = path
        todo += sorted(_lorapipe_imports(ast.parse(path.read_bytes())))
    imported = {_module_file(m, package) for m in _lorapipe_imports(readers)}
    for path in package.rglob("*.py"):
        name = path.relative_to(package).as_posix()
        if name not in NOT_READERS | {READERS_MODULE} and path not in imported:
            found[name] = path
    return found


@functools.cache
def reader_fingerprint(kind: str, package: Path = Path(__file__).parent) -> str:
    """A hash (16 hex characters) of what decides the raw text of a document of format `kind` (a
    value of `FORMATS`): the syntax tree (not comments or docstrings) of its reader in
    `READERS_MODULE` and the definitions there that the reader uses, of the modules they import from
    (`_reader_modules`) and of `convert_document`;
    `EXTRACTOR_VERSION`, the Python version (the standard library decodes and parses too) and the
    installed version of each of its `CONVERTER_DISTRIBUTIONS`. Cache entries are keyed by it, so a
    fixed reader or an upgraded library converts that format again, and only that format.
    `package`: the folder of the reader modules (this package's; tests pass a copy). Computed once
    per process and format. Raises KeyError for an unknown `kind`."""
    digest = hashlib.sha256(f"extractor {EXTRACTOR_VERSION} {kind} python {sys.version_info[:2]}\n".encode())
    readers = ast.parse((package / READERS_MODULE).read_bytes())
    reached = _reached(readers, _reader_name(kind))
    for name, path in sorted(_reader_modules(kind, package, readers, reached).items()):
        digest.update(f"{name}\n{_code(ast.parse(path.read_bytes()))}\n".encode())
    for node in reached:
        digest.update(f"{READERS_MODULE}\n{_code(node)}\n".encode())
    digest.update(_code(ast.parse(inspect.getsource(convert_document))).encode())
    for name in CONVERTER_DISTRIBUTIONS[kind]:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\n".encode())
    return digest.hexdigest()[:16]


def format_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The conversion `options` (those of `convert_document`) that change the text of format
    `kind`: none but for PDFs, whose backend always counts and device, OCR and the model folder
    only for the layout backend (``docling``)."""
    if kind != "pdf":
        return {}
    backend = options["pdf_backend"]
    return {"pdf_backend": backend, **{name: options[name] for name in PDF_OPTIONS.get(backend, ())}}


NAME_BYTES = 200  # output names stay well under the 255 bytes a file name may have


def _printable(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not (an old Latin-1 name) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _out_name(relative: Path, taken: set[str]) -> str:
    """``sub/dir/paper.pdf`` → ``sub__dir__paper.pdf.txt``: flat, keeps the extension. A name that is
    too long, or already `taken` (``a__b/c.md`` and ``a/b__c.md``), starts with a hash of the source
    path instead of its first folders, so two sources never share an output."""
    name = _printable("__".join(relative.parts) + ".txt")
    if len(name.encode()) > NAME_BYTES or name in taken:
        digest = hashlib.sha256(str(relative).encode("utf-8", "surrogateescape")).hexdigest()[:12]
        tail = name.encode()[-(NAME_BYTES - len(digest) - 2) :].decode("utf-8", "ignore")
        name = f"{digest}__{tail}"
    taken.add(name)
    return name


def _suffix(name: str) -> str:
    """A file name's extension, lowercase; a hidden file's name that is all extension (``.md``) counts."""
    return (Path(name).suffix or (name if name.count(".") == 1 else "")).lower()


def _walk(root: Path) -> list[Path]:
    """Files under `root`, sorted, symbolic links to folders (reported, never followed: a link may
    lead out of the inputs or round in a loop) and hidden folders (reported, not read: ``.git``).
    Hidden files are reported when named as a document is (``.notes.md``), else left out unseen
    (``.gitkeep``, ``.DS_Store``: bookkeeping, in every folder, never a document)."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        found += [
            Path(folder) / name
            for name in files
            # hidden: listed when named as a document is, unless a dangling link (an editor's lock file)
            if not name.startswith(".") or (_suffix(name) in FORMATS and os.path.exists(Path(folder) / name))
        ]
        found += [Path(folder) / name for name in dirs if name.startswith(".") or (Path(folder) / name).is_symlink()]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _sources(input_dirs: list[Path]) -> list[tuple[Path, Path, Path]]:
    """``(path, name relative to the inputs, input folder)`` of every file, in a stable order."""
    for root in input_dirs:
        if root.is_file():
            raise FileNotFoundError(f"input folder {root} is a file: name the folder that holds the documents")
        if not root.is_dir():
            raise FileNotFoundError(f"input folder not found: {root}")
    found = []
    for root in input_dirs:
        for path in _walk(root):
            relative = path.relative_to(root)
            found.append((path, Path(root.name) / relative if len(input_dirs) > 1 else relative, root))
    return found


def _precheck(path: Path, root: Path) -> str | None:
    """Why a file is skipped before any conversion, or None."""
    if path.name.startswith("."):
        if path.is_dir():
            return "hidden folder (its name starts with a dot): not read; rename it to extract what it holds"
        return "hidden file (its name starts with a dot): left out; rename it to extract it"
    if path.is_symlink() and path.is_dir():
        return "symbolic link to a folder: not followed (add the folder it points to as an input instead)"
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return "symbolic link to a file outside the input folder: not followed"
    if not path.is_file():
        return "not a regular file"
    if path.suffix.lower() not in FORMATS:
        return f"unsupported format {path.suffix or '(no extension)'}; supported: {', '.join(sorted(FORMATS))}"
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def convertible_documents(input_dir: str | Path) -> list[Path]:
    """The files under `input_dir` (read recursively; none when it is not a folder) that
    `extract_documents` would try to convert: of a supported format, not empty, not hidden, not a
    symbolic link leading out of the folder. Whether each yields usable text shows only on conversion."""
    root = Path(input_dir)
    return [path for path in _walk(root) if _precheck(path, root) is None] if root.is_dir() else []


class _Cache:
    """Raw conversion results keyed by file content and everything that changes the result of its
    format (`reader_fingerprint`, `format_options`)."""

    def __init__(self, folder: Path, options: dict[str, Any], read: bool):
        self.folder, self.read, self.options = folder, read, options

    @functools.cache  # noqa: B019 - one cache per stage run, a handful of formats
    def suffix(self, kind: str) -> str:
        key = {"format": kind, "readers": reader_fingerprint(kind), **format_options(kind, self.options)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    def path(self, sha: str, kind: str) -> Path:
        return self.folder / sha[:2] / f"{sha}-{self.suffix(kind)}.json"

    def get(self, sha: str, kind: str) -> dict | None:
        path = self.path(sha, kind)
        if not self.read or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged entry is converted again

    def put(self, sha: str, kind: str, entry: dict) -> None:
        write_json(self.path(sha, kind), entry)


def _scan(sources: list[tuple[Path, Path, Path]], cache: _Cache, options: dict) -> tuple[list[dict], list[Job]]:
    """One manifest row per source (skipped ones with the reason, cached ones with their cache entry
    under ``_entry``) and the conversion jobs of the others."""
    rows: list[dict] = []
    jobs: list[Job] = []
    for index, (path, relative, root) in enumerate(sources):
        row = {
            "source": _printable(str(path)),
            "sha256": None,
            "bytes": None,
            "format": FORMATS.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "unknown"),
            "extractor": None,
            "pages": None,
            "chars": 0,
            "hyphens_joined": 0,
            "hyphens_kept": 0,
            "status": "ok",
            "error": None,
            "output": None,
            "cached": False,
            "seconds": 0.0,
            "_relative": relative,
        }
        rows.append(row)
        reason = _precheck(path, root)
        if reason:
            row.update(status="skipped", error=reason, _log=f"skipped {row['source']} ({reason})")
            continue
        row.update(sha256=hash_file(path).hexdigest(), bytes=path.stat().st_size)
        entry = cache.get(row["sha256"], row["format"])
        if entry is not None:
            row["cached"] = True
            row["_entry"] = entry
        else:
            jobs.append(Job(index, path, {"kind": row["format"], **options}))
    return rows, jobs


def _is_hidden(row: dict) -> bool:
    """A row `_precheck` skipped for its name: a hidden file or folder."""
    return row["status"] == "skipped" and Path(row["source"]).name.startswith(".")


class _Progress:
    """Finishes rows as their results come in: their text, status and log line, a progress bar with
    files and pages per second, and the stage's ``mid`` fault point after the first document."""

    def __init__(self, total: int, min_length: int):
        from tqdm import tqdm

        self.write = tqdm.write
        self.bar = tqdm(total=total, desc="[extract]", unit="file", mininterval=1.0, dynamic_ncols=True)
        self.min_length = min_length
        self.started, self.pages_done, self.finished, self.hidden = time.monotonic(), 0, 0, 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def skipped(self, row: dict) -> None:
        """Log a skipped row; hidden files and folders are counted for one line (`hidden_note`), not
        named one by one (a checkout or a synced folder may hold many)."""
        if _is_hidden(row):
            self.hidden += 1
        else:
            self.write(f"[extract] skipped {row['source']} ({row['error']})", file=sys.stderr)
        self.bar.update(1)

    def hidden_note(self) -> None:
        if self.hidden:
            self.write(
                f"[extract] left out {self.hidden} hidden file(s) or folder(s) (names starting with a dot; "
                f"listed in {paths.MANIFEST_NAME} with the reason)",
                file=sys.stderr,
            )

    def finish(self, row: dict, entry: dict) -> None:
        row.pop("_entry", None)
        row["seconds"] = entry.get("seconds", 0.0)
        if entry["status"] == "ok":
            row.update(
                extractor=entry["extractor"],
                error=entry.get("note"),
                pages=len(entry["pages"]) if entry["paged"] else None,
            )
            counts: Counter[str] = Counter()
            row["_text"] = clean_pages(entry["pages"], entry["paged"], counts)
            row.update(
                chars=len(row["_text"]), hyphens_joined=counts["hyphens_joined"], hyphens_kept=counts["hyphens_kept"]
            )
            self.pages_done += len(entry["pages"]) if entry["paged"] else 0
            if row["chars"] < self.min_length:
                hint = f": {OCR_HINT}" if row["format"] == "pdf" else ""
                row.update(
                    status="skipped",
                    error=f"only {row['chars']} characters of text (extract.min_length is {self.min_length}){hint}",
                )
        else:
            row.update(status="failed", error=entry["error"])
        elapsed = max(self.elapsed(), 1e-9)
        detail = f"{row['chars']} chars via {row['extractor']}" if row["status"] == "ok" else row["error"]
        line = f"{row['status']:7} {row['source']} ({detail}"
        row["_log"] = line + ")"  # the log holds no run facts (cached, seconds): see RUN_FIELDS
        self.write(f"[extract] {line}{', cached' if row['cached'] else ''}; {row['seconds']:.1f} s)", file=sys.stderr)
        self.bar.set_postfix_str(f"{self.bar.n / elapsed:.2f} files/s, {self.pages_done / elapsed:.1f} pages/s")
        self.bar.update(1)
        self.finished += 1
        if self.finished == 1:
            faults.fault_point("mid")  # one document done (and cached), the others not

    def close(self) -> None:
        self.bar.close()


def _pdfplumber_instead(job: Job, reason: str) -> dict | None:
    """The options to retry a PDF with after its converter failed, crashed or timed out; None: no retry."""
    if job.options["kind"] == "pdf" and job.options["pdf_backend"] != "pdfplumber":
        return {**job.options, "pdf_backend": "pdfplumber"}
    return None


def _retry_on_ray(job: Job, reason: str) -> dict | None:
    """`_pdfplumber_instead`, and on Ray one more attempt with the same converter for a document whose
    worker died (a lost node or a killed worker is seldom the document's fault; a document that kills
    its converter twice fails). A same-converter retry is a new first attempt: its answer is cached."""
    retry = _pdfplumber_instead(job, reason)
    if retry is None and job.attempt == 0 and reason.startswith("the converter crashed"):
        print(f"[extract] {job.path}: {reason}; trying it once more", file=sys.stderr, flush=True)
        return job.options
    return retry


def _cacheable(job: Job, status: str, result: Any) -> bool:
    """Whether a finished job's entry may be cached under its key (which names the converter asked
    for): only the primary converter's own answer. A fallback's text (pdfplumber after docling
    crashed, timed out or raised) is not cached, nor a failure after a crash or time-out: either
    may not happen again (a one-off slowdown, a larger extract.timeout_s), so the next run tries
    the primary converter again instead of serving the fallback's text for good."""
    if job.note is not None:  # a retry after a crash or time-out
        return False
    return not (status == "ok" and result.get("fallback"))


def _entry(job: Job, status: str, result: Any, backend: str) -> dict:
    """The cache entry of one finished conversion job."""
    seconds = round(time.monotonic() - job.started, 3)
    if status == "ok":
        note = f"{backend} failed ({job.note}); pdfplumber used" if job.note else result.get("note")
        return {"status": "ok", **result, "note": note, "seconds": seconds}
    message = f"{job.note}; pdfplumber: {result}" if job.note and job.note != result else result
    return {"status": "failed", "error": message, "seconds": seconds}


def _write_outputs(out_dir: str | Path, rows: list[dict], ok: list[dict]) -> list[dict]:
    """Write the texts of the `ok` rows, ``manifest.jsonl`` and ``extract.log`` into `out_dir`
    together; return the manifest rows (with run facts, without private keys)."""
    taken: set[str] = set()
    with atomic_dir(out_dir) as tmp:
        for row in ok:
            row["output"] = _out_name(row["_relative"], taken)
            (tmp / row["output"]).write_text(row["_text"] + "\n", encoding="utf-8")
        manifest = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
        write_jsonl(
            tmp / paths.MANIFEST_NAME, [{k: v for k, v in row.items() if k not in RUN_FIELDS} for row in manifest]
        )
        # one line per source, in the sources' order (not the order conversions finished in)
        (tmp / LOG_NAME).write_text("".join(row["_log"] + "\n" for row in rows), encoding="utf-8")
    return manifest


def _refuse_overlap(dirs: list[Path], out_dir: Path) -> None:
    """ValueError when `out_dir` is an input folder, holds one, or lies inside one: the stage empties
    its output folder before writing (every file in it would be lost), and outputs inside an input
    folder would be read back as documents on the next run."""
    out = out_dir.resolve()
    for folder in dirs:
        source = folder.resolve()
        if out == source or source.is_relative_to(out) or out.is_relative_to(source):
            where = "is" if out == source else "holds" if source.is_relative_to(out) else "lies inside"
            raise ValueError(
                f"the output folder {out_dir} {where} the input folder {folder}: extracting there would "
                "delete or re-read the documents. Write the texts to a folder of their own (the pipeline's "
                "is data/text)"
            )


def extract_documents(
    input_dirs: list[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    pdf_backend: str = DEFAULTS.extract.pdf_backend,
    min_length: int = DEFAULTS.extract.min_length,
    device: str = DEFAULTS.extract.device,
    ocr: bool = DEFAULTS.extract.ocr,
    docling_artifacts_path: str | None = DEFAULTS.extract.docling_artifacts_path,
    timeout_s: float = DEFAULTS.extract.timeout_s,
    workers: int = DEFAULTS.extract.workers,
    resume: bool = DEFAULTS.extract.resume,
    executor: str = DEFAULTS.extract.executor,
    ray_address: str | None = DEFAULTS.extract.ray_address,
    cache_dir: str | Path | None = None,
) -> list[dict]:
    """Extract every supported file under `input_dirs` (one folder or several, read recursively)
    into `out_dir`: one ``.txt`` per source, ``manifest.jsonl`` and ``extract.log``. Hidden files and
    folders (names starting with a dot) are not read; the manifest lists hidden folders and hidden
    files named as documents are (``.notes.md``) as skipped, with why.

    The knobs are the ``extract`` section of params.yaml (see `lorapipe.params.ExtractParams` for
    their meaning and units). `cache_dir`: where converted texts are cached across runs; None: the
    user cache (``<cache>/extract``). With `executor` ``ray`` each conversion is a Ray task
    (`lorapipe.extract.ray_jobs`) on the cluster `ray_address` or RAY_ADDRESS names, or on a local Ray
    with `workers` CPUs; the outputs are byte-equal to the local executor's.

    Returns the manifest rows, with this run's `cached` and `seconds` of each (not written). Raises
    FileNotFoundError for a missing input folder, ValueError for an unknown `executor`, no folder, an output
    folder that is, holds or lies inside an input folder (the stage empties it), or when files
    are there but none yields usable text (folders with no files, or hidden ones alone, give a manifest
    with no text), and
    with Ray lorapipe.cluster.ClusterError (Ray missing, no cluster at the address) before any work.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray' (extract.executor), not {executor!r}")
    dirs = [Path(d) for d in ([input_dirs] if isinstance(input_dirs, (str, Path)) else input_dirs)]
    if not dirs:
        raise ValueError("no input folder given: name at least one folder of documents")
    _refuse_overlap(dirs, Path(out_dir))
    sources = _sources(dirs)
    backend = resolve_pdf_backend(pdf_backend, docling_artifacts_path)
    options = {"pdf_backend": backend, "device": device, "ocr": ocr, "artifacts_path": docling_artifacts_path}
    cache = _Cache(Path(cache_dir or paths.cache_dir() / "extract"), options, read=resume)
    rows, jobs = _scan(sources, cache, options)
    if all(_is_hidden(row) for row in rows):
        # An empty input folder is a task from labeled rows alone: an empty manifest, not an error
        # (the dataset stage refuses when there are neither texts nor labeled rows).
        manifest = _write_outputs(out_dir, rows, [])
        what = f"a manifest of {len(rows)} hidden file(s) or folder(s), left out," if rows else "an empty manifest"
        print(
            f"[extract] no documents in {', '.join(map(str, dirs))}: wrote {what} into {out_dir} "
            f"(labeled rows alone need none; put documents there to train on their text). "
            f"Supported: {', '.join(sorted(FORMATS))}",
            flush=True,
        )
        return manifest

    progress = _Progress(len(sources), min_length)
    for row in rows:
        if row["status"] == "skipped":
            progress.skipped(row)
        elif row["cached"]:
            progress.finish(row, row["_entry"])
    progress.hidden_note()
    if executor == "ray":
        from lorapipe.extract.ray_jobs import run_jobs_ray

        results = run_jobs_ray(
            jobs,
            convert_document,
            timeout_s,
            _retry_on_ray,
            fingerprint=reader_fingerprint,
            address=ray_address,
            num_cpus=workers,
        )
    else:
        results = run_jobs(jobs, convert_document, workers, timeout_s, _pdfplumber_instead)
    for job, status, result in results:
        entry = _entry(job, status, result, options["pdf_backend"])
        if _cacheable(job, status, result):
            # Written per document, so a killed stage resumes here.
            cache.put(rows[job.index]["sha256"], rows[job.index]["format"], entry)
        progress.finish(rows[job.index], entry)
    progress.close()

    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("failed", "skipped")}
        raise ValueError(
            f"no text was extracted from {', '.join(map(str, dirs))}: {len(rows)} file(s), "
            f"{counts['failed']} failed, {counts['skipped']} skipped (see the reasons above). "
            f"Supported: {', '.join(sorted(FORMATS))}"
        )
    manifest = _write_outputs(out_dir, rows, ok)
    print(
        f"[extract] {len(ok)} of {len(rows)} document(s) extracted into {out_dir} "
        f"({sum(r['cached'] for r in rows)} from cache, {len(jobs)} converted, {progress.elapsed():.1f} s; "
        f"line-end hyphens: {sum(r['hyphens_joined'] for r in ok)} joined, {sum(r['hyphens_kept'] for r in ok)} kept)",
        flush=True,
    )
    return manifest
