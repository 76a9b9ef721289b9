"""Files that params name (a system prompt file, the JSON schema, an accelerate config) are inputs:
DVC must see them change. Each must lie under ``data/raw/``, which every stage that reads such a
key lists in its ``deps``, or the stage refuses to start, naming the key and the path.

Keys that name models or tools rather than inputs (``model.name`` as a local folder,
``extract.docling_artifacts_path``, ``export.llama_cpp_dir``, ``train.resume``'s checkpoint folder)
are not checked: change their value (a new folder name, ``model.revision``) to rerun.
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.params import Params, ParamsError

# The folder every file a param names must lie under; dvc.yaml lists it in the deps of every stage
# in STAGE_FILE_KEYS (tests/test_stages.py checks that).
ROOT = paths.RAW
_PROMPT_SUFFIXES = (".txt", ".md", ".prompt", ".jinja")

# The keys of each stage that may name a file ("prompt": a text or a file path).
STAGE_FILE_KEYS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset.system_prompt", "dataset.tasks[].system_prompt"),
    "train": ("train.accelerate_config",),
    "evaluate": ("eval.json_schema",),
}


def looks_like_path(value: str) -> bool:
    """True when a text param that may be a text or a file path (``dataset.system_prompt``) is meant
    as a path: one line without spaces that names a folder or ends in a text-file suffix, or any
    existing file. ``"You are a helpful assistant."`` is a text; ``prompts/system.txt`` a path."""
    if "\n" in value or len(value) >= 4096:
        return False
    if Path(value).is_file():
        return True
    return " " not in value.strip() and ("/" in value or value.lower().endswith(_PROMPT_SUFFIXES))


def named_files(params: Params, stage: str) -> list[tuple[str, str]]:
    """(dotted key, path) of every file the params of `stage` name."""
    found = []
    for key in STAGE_FILE_KEYS.get(stage, ()):
        if key == "dataset.tasks[].system_prompt":
            found += [
                (f"dataset.tasks[{i}].system_prompt", t.system_prompt)
                for i, t in enumerate(params.dataset.tasks)
                if t.system_prompt and looks_like_path(t.system_prompt)
            ]
            continue
        section, _, name = key.partition(".")
        value = getattr(getattr(params, section), name)
        if value and (not key.endswith("system_prompt") or looks_like_path(value)):
            found.append((key, value))
    return found


def check_param_files(params: Params, stage: str, root: Path = ROOT) -> None:
    """Raise ParamsError, naming each key and path, when a file the stage's params name does not
    exist or lies outside `root` (``data/raw/``, relative to the project root); returns None when
    all are in place."""
    problems = []
    base = root.resolve()
    for key, value in named_files(params, stage):
        path = Path(value)
        if not path.is_file():
            problems.append(f"  - {key}: {value} is not a file; put the file under {root}/ and name that path")
        elif not path.resolve().is_relative_to(base):
            problems.append(
                f"  - {key}: {value} lies outside {root}/, so DVC would not rerun the {stage} stage when "
                f"it changes; move it under {root}/ and name that path"
            )
    if problems:
        raise ParamsError(f"{paths.PARAMS} names file(s) the {stage} stage cannot use:\n" + "\n".join(problems))
