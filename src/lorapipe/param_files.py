"""Files that params name (a system prompt file, the JSON schema, an accelerate config) are inputs:
DVC must see them change. Each must lie under ``data/raw/config/``, which every stage that reads
such a key (dataset, train, evaluate) lists in its ``deps``, or the stage refuses to start, naming
the key and the path. A folder of their own, not all of ``data/raw``: a new document must not rerun
training unless it changes the dataset.

Keys that name models or tools rather than inputs (``model.name`` as a local folder,
``extract.docling_artifacts_path``, ``export.llama_cpp_dir``, ``train.resume``'s checkpoint folder)
are not checked: change their value (a new folder name, ``model.revision``) to rerun.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from lorapipe import paths
from lorapipe.params import Params, ParamsError
from lorapipe.textfiles import TextEncodingError, read_text

# The folder every file a param names must lie under; dvc.yaml lists it in the deps of every stage
# in STAGE_FILE_KEYS (tests/test_param_files.py checks that).
ROOT = paths.RAW_CONFIG
_PROMPT_SUFFIXES = (".txt", ".md", ".prompt", ".jinja")

# The keys of each stage that may name a file ("prompt": a text or a file path).
STAGE_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "synth": ("synth.prompt",),
    "dataset": ("dataset.system_prompt", "dataset.tasks[].system_prompt", "synth.system_prompt", "eval.json_schema"),
    "train": ("train.accelerate_config",),
    "evaluate": ("eval.json_schema",),
}


def prompt_file(value: str) -> Path | None:
    """The file that a text-or-path param (``dataset.system_prompt``) names, or None when the value
    is a text: it is a file when it names an existing one. A value the OS cannot take as a file name
    (over 255 bytes, 4096 characters or more) is a text. The one rule, used by this check and by the
    dataset stage that reads the prompt."""
    if len(value) >= 4096:
        return None
    try:
        path = Path(value)
        return path if path.is_file() else None
    except (OSError, ValueError):  # "File name too long", an embedded NUL
        return None


def prompt_text(value: str) -> str:
    """The text a text-or-path param stands for: the named file's content (read_text, stripped) when
    `value` names a file (`prompt_file`), else `value` itself. Raises TextEncodingError for a file that
    is not text."""
    file = prompt_file(value)
    return read_text(file).strip() if file else value


def looks_like_path(value: str) -> bool:
    """True when a text-or-path param is meant as a path: it names an existing file (`prompt_file`),
    or it is one line without spaces that names a folder or ends in a text-file suffix.
    ``"You are a helpful assistant."`` is a text; ``prompts/system.txt`` a path (a missing one)."""
    if prompt_file(value) is not None:
        return True
    return "\n" not in value and " " not in value.strip() and ("/" in value or value.lower().endswith(_PROMPT_SUFFIXES))


def named_files(params: Params, stage: str | None) -> list[tuple[str, str]]:
    """(dotted key, path) of every file the params of `stage` name (None: of every stage, each key once)."""
    found = []
    keys = STAGE_FILE_KEYS.get(stage, ()) if stage else dict.fromkeys(k for v in STAGE_FILE_KEYS.values() for k in v)
    for key in keys:
        if key == "dataset.tasks[].system_prompt":
            found += [
                (f"dataset.tasks[{i}].system_prompt", t.system_prompt)
                for i, t in enumerate(params.dataset.tasks)
                if t.system_prompt and looks_like_path(t.system_prompt)
            ]
            continue
        section, _, name = key.partition(".")
        value = getattr(getattr(params, section), name)
        if value and (not key.endswith("prompt") or looks_like_path(value)):
            found.append((key, value))
    return found


def _is_file(path: Path) -> bool:
    """Path.is_file, False for a name the file system cannot take (too long: OSError)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _near_file(value: str, root: Path) -> str:
    """`` (did you mean …?)`` naming the file under `root` (``data/raw/config/``, searched through)
    whose path is closest to the missing `value` (difflib, case-insensitive), or `` (it is a folder…)``
    when `value` names a folder; empty when neither. Only files under `root` are named: one elsewhere
    would be refused next."""
    try:
        if Path(value).is_dir():
            return " (it is a folder: name a file in it)"
        files = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.is_dir() else []
    except OSError:  # a name too long for the file system: no hint
        return ""
    by_path = {p.as_posix().lower(): p.as_posix() for p in files}
    near = difflib.get_close_matches(Path(value).as_posix().lower(), sorted(by_path), n=1, cutoff=0.8)
    if near:
        return f" (did you mean {by_path[near[0]]}?)"
    by_name = {p.name.lower(): p.as_posix() for p in sorted(files)}  # a close name in another folder
    near = difflib.get_close_matches(Path(value).name.lower(), sorted(by_name), n=1, cutoff=0.75)
    return f" (did you mean {by_name[near[0]]}?)" if near else ""


def check_param_files(params: Params, stage: str | None, root: Path = ROOT, source: Path = paths.PARAMS) -> None:
    """Raise ParamsError, naming each key and path, when a file the stage's params name (`stage` None:
    any stage's, as `lorapipe check` asks) does not exist, lies outside `root` (``data/raw/config/``,
    relative to the project root), is not text that `lorapipe.textfiles.read_text` reads (UTF-8, or
    UTF-16/32 with a byte-order mark), or, for ``eval.json_schema``, is not a valid JSON Schema
    (`lorapipe.labeled.load_json_schema`); `source` is the params file the message names. Returns None
    when all are in place. A valid schema with a keyword its draft does not define (a misspelling JSON
    Schema would ignore: `lorapipe.labeled.unknown_keywords`) is named on stderr as a warning."""
    from lorapipe.labeled import load_json_schema

    problems = []
    base = root.resolve()
    for key, value in named_files(params, stage):
        path = prompt_file(value)
        if path is None:
            beside = Path(source).parent / value
            where = (
                f" (there is one beside {source}: paths are read from the folder you run in, so run from "
                f"{Path(source).parent}/)"
                if _is_file(beside) and Path(source).parent.resolve() != Path.cwd().resolve()
                else _near_file(value, root)
            )
            problems.append(f"  - {key}: {value} is not a file{where}; put the file under {root}/ and name that path")
        elif not path.resolve().is_relative_to(base):
            rerun = f"the {stage} stage" if stage else "the stages that read it"
            problems.append(
                f"  - {key}: {value} lies outside {root}/, so DVC would not rerun {rerun} when it changes; "
                f"move it under {root}/ and name that path"
            )
        else:
            try:
                read_text(path)
            except TextEncodingError as exc:
                problems.append(f"  - {key}: {exc}")
                continue
            if key == "eval.json_schema":
                try:
                    load_json_schema(path, key, warn=f"[{stage or 'check'}] warning: {key}: {value}")
                except ValueError as exc:  # its message names the key and the file
                    problems.append(f"  - {exc}")
    if problems:
        who = f"the {stage} stage" if stage else "the pipeline"
        raise ParamsError(f"{source} names file(s) {who} cannot use:\n" + "\n".join(problems))
