"""Atomic writes: outputs go to a temporary sibling and are renamed into place on success,
so a killed stage never leaves a half-written output behind. Reads of JSON, JSONL and YAML go
through `lorapipe.textfiles.read_text` (a byte-order mark or UTF-16 from a Windows editor is read)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from lorapipe import faults, paths
from lorapipe.textfiles import jsonl_lines, read_text


@contextlib.contextmanager
def atomic_outputs() -> Iterator[Callable[..., Path]]:
    """Write a stage's outputs so that a kill never leaves one half-written.

    ``place(final)`` (a file) or ``place(final, folder=True)`` returns a new temporary sibling of
    `final` to write instead. When the block ends without error, every placed output is renamed onto
    its final path, one rename each, after all the writing is done and flushed to disk (fsync); on an
    error they are all removed.
    Leftovers of a killed earlier run (``.<name>.tmp-*`` beside `final`) are removed by `place`.
    """
    pending: list[tuple[Path, Path]] = []

    def place(final: str | Path, folder: bool = False) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        for kind in ("tmp", "old"):
            for stale in final.parent.glob(f".{glob.escape(final.name)}.{kind}-*"):
                _remove(stale)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.chmod(0o644)
        pending.append((final, tmp))
        return tmp

    try:
        yield place
    except BaseException:
        for _, tmp in pending:
            _remove(tmp)
        raise
    for _, tmp in pending:  # on disk before the renames, so a power cut cannot leave a renamed, empty file
        for path in sorted(tmp.rglob("*")) if tmp.is_dir() else [tmp]:
            if path.is_file() and not path.is_symlink():
                _fsync(path)
    faults.fault_point("writing")
    for final, tmp in pending:
        if tmp.is_dir() and final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            _remove(old)
        else:
            os.replace(tmp, final)
    for folder in {final.parent for final, _ in pending}:
        _fsync(folder)  # the renames themselves


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on error it is removed."""
    with atomic_outputs() as place:
        yield place(final, folder=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON value in `path` (UTF-8, with or without a byte-order mark, or UTF-16/32 with one).
    Raises OSError when unreadable, TextEncodingError (a ValueError) naming a file in another encoding,
    and json.JSONDecodeError for invalid JSON."""
    return json.loads(read_text(path))


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return write_text_atomic(path, text)


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON values of the lines of `path`, blank lines skipped; encodings as `read_json`, lines as
    `lorapipe.textfiles.jsonl_lines`. Raises ValueError naming ``path:line`` for a line that is not
    valid JSON."""
    rows = []
    for number, line in jsonl_lines(read_text(path)):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return rows


def write_provenance(folder: str | Path, params: dict[str, Any]) -> None:
    """Write the resolved params that produced `folder` beside its files (litgpt style)."""
    Path(folder, paths.PROVENANCE_NAME).write_text(yaml.safe_dump(params, sort_keys=False))


def read_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The resolved params written beside a model folder (``<model_dir>/lorapipe_params.yaml``, flat
    dotted keys such as ``model.name``); {} when the file is empty.

    Raises FileNotFoundError naming the file when it is absent (the stage that built the folder writes it)."""
    path = Path(model_dir) / paths.PROVENANCE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the stage that builds {model_dir} writes it; run that stage again")
    return yaml.safe_load(read_text(path)) or {}


def hash_file(path: str | Path, digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """The sha256 hash object of a file's bytes (``hash_file(p).hexdigest()``: 64 hex characters),
    read in blocks by ``hashlib.file_digest`` (never the whole file in memory). With `digest`, a running
    hash object of any algorithm, the file's bytes are added to it instead and it is returned: a hash of
    several files' bytes in a row. Raises OSError (FileNotFoundError, IsADirectoryError) if unreadable."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256" if digest is None else lambda: digest)
