"""Every path a stage reads or writes, defined once; `dvc.yaml` names the same paths.

Paths are relative to the project root (DVC runs each stage there). Caches and the MLflow
store are resolved against the *workspace* root, which is the project root except inside a
queued DVC experiment, where DVC runs the stage in a temporary copy under
`<project>/.dvc/tmp/exps/`; those are resolved back to `<project>` so that a queued run
finds the same caches and logs into the same MLflow store.
"""

from __future__ import annotations

import os
from pathlib import Path

PARAMS = Path("params.yaml")

RAW = Path("data/raw")
RAW_DOCS = RAW / "docs"
RAW_LABELED = RAW / "labeled"
RAW_CONFIG = RAW / "config"  # files that params name: system prompt files, JSON schemas, accelerate configs
RAW_MODELS = RAW / "models"  # local base models (model.name a folder here): the base stage depends on it
EXTRACTED = Path("data/extracted_text")
MANIFEST_NAME = "manifest.jsonl"

SYNTH = Path("data/synth")  # the synth stage's one out: passages, pairs, stats and the retrieval index
PASSAGES = SYNTH / "passages.jsonl"
PAIRS = SYNTH / "pairs.jsonl"
SYNTH_STATS = SYNTH / "stats.json"
RETRIEVAL_INDEX = SYNTH / "index"
EVAL_QA = RAW / "eval_qa.jsonl"  # the user's own knowledge questions

DATASET = Path("data/dataset")
TRAIN_ROWS = DATASET / "train.jsonl"
VAL_ROWS = DATASET / "val.jsonl"
PROMPTS = DATASET / "prompts.json"
DATASET_STATS = DATASET / "stats.json"

BASE_MODEL = Path("models/base")
ADAPTER = Path("models/lora_output")
RUN_INFO_NAME = "run.json"
MERGED = Path("models/merged")
GGUF = Path("models/gguf")

REPORTS = Path("reports")
TRAIN_METRICS = REPORTS / "train.json"
TRAIN_LOSS = REPORTS / "train_loss.tsv"
TRAIN_PLOT = REPORTS / "train_loss.png"
EVAL_BASE = REPORTS / "eval_base.json"
BASE_ANSWERS = REPORTS / "answers_base.json"  # a JSON object: never an empty file, which DVC warns about
EVAL = REPORTS / "eval.json"
SAMPLES = REPORTS / "samples.md"
KNOWLEDGE_BASE = REPORTS / "knowledge_base.json"  # the base model's knowledge answers, computed once
KNOWLEDGE = REPORTS / "knowledge.json"
KNOWLEDGE_MD = REPORTS / "knowledge.md"

PROVENANCE_NAME = "lorapipe_params.yaml"  # the resolved params written beside each model folder
MERGE_INFO_NAME = "merge.json"  # beside the merged model: what it was merged from (fingerprint, selected_step)


# The stage that writes each path a later stage or command reads: "not found" names it.
MADE_BY = {
    EXTRACTED: "extract",
    SYNTH: "synth",
    PASSAGES: "synth",
    PAIRS: "synth",
    SYNTH_STATS: "synth",
    RETRIEVAL_INDEX: "synth",
    DATASET: "dataset",
    TRAIN_ROWS: "dataset",
    VAL_ROWS: "dataset",
    PROMPTS: "dataset",
    DATASET_STATS: "dataset",
    BASE_MODEL: "base",
    ADAPTER: "train",
    MERGED: "merge",
    GGUF: "export",
    EVAL_BASE: "evaluate_base",
    BASE_ANSWERS: "evaluate_base",
    KNOWLEDGE_BASE: "evaluate_base",
}


def missing(path: str | Path, flag: str | None = None, made_by: str | None = None) -> FileNotFoundError:
    """The error for an input `path` that does not exist, naming it and the fix. For one of the
    pipeline's own paths (``MADE_BY``, relative to the working folder; a file in such a folder too):
    the command that writes it and `flag`, the option that points elsewhere (``models/base not found:
    run `dvc repro base` (or `lorapipe base`) or pass --base-dir``). For another path: the flag it came from and, with
    `made_by`, the stage whose output it must be (``x/manifest.jsonl not found (--text-dir: the extract
    stage's output, `lorapipe extract`)``)."""
    given = Path(path)
    given = given.relative_to(Path.cwd()) if given.is_absolute() and given.is_relative_to(Path.cwd()) else given
    stage = next((s for p, s in MADE_BY.items() if given == p), None)
    stage = stage or next((s for p, s in MADE_BY.items() if p in given.parents), None)  # a file in that folder
    if given == RAW_DOCS:  # the user's own input, which no stage writes
        return FileNotFoundError(f"{path} not found: put your documents there" + (f" or pass {flag}" if flag else ""))
    if stage is not None:
        return FileNotFoundError(
            f"{path} not found: run `dvc repro {stage}` (or `lorapipe {stage}`)" + (f" or pass {flag}" if flag else "")
        )
    if flag and made_by:
        return FileNotFoundError(f"{path} not found ({flag}: the {made_by} stage's output, `lorapipe {made_by}`)")
    return FileNotFoundError(f"{path} not found" + (f" ({flag})" if flag else ""))


def require(path: str | Path, flag: str | None = None, made_by: str | None = None) -> Path:
    """`path` as a Path; raises `missing(path, flag, made_by)` when it does not exist (a folder or a file that an
    earlier stage writes is never looked up elsewhere, such as on the Hugging Face Hub)."""
    if not Path(path).exists():
        raise missing(path, flag, made_by)
    return Path(path)


def train_outputs(task: str | None = None) -> tuple[Path, Path, Path, Path]:
    """Adapter folder, metrics, loss table and loss chart of the adapter of all tasks, or of one task
    (`lorapipe train --task NAME`: models/lora_NAME, reports/train_NAME.json, ...)."""
    if task is None:
        return ADAPTER, TRAIN_METRICS, TRAIN_LOSS, TRAIN_PLOT
    loss = REPORTS / f"train_loss_{task}.tsv"
    return Path(f"models/lora_{task}"), REPORTS / f"train_{task}.json", loss, loss.with_suffix(".png")


_QUEUE_MARKER = (".dvc", "tmp", "exps")


def workspace_root(cwd: Path | None = None) -> Path:
    """The project root that owns caches and the MLflow store (see the module docstring)."""
    if os.environ.get("LORAPIPE_HOME"):
        return Path(os.environ["LORAPIPE_HOME"]).resolve()
    here = (cwd or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_QUEUE_MARKER) + 1):
        if parts[i : i + len(_QUEUE_MARKER)] == _QUEUE_MARKER:
            return Path(*parts[:i])
    return here


def cache_dir() -> Path:
    """Per-project cache that survives DVC's removal of outs (git-ignored)."""
    return Path(os.environ.get("LORAPIPE_CACHE_DIR") or workspace_root() / ".lorapipe-cache")


def user_cache_dir() -> Path:
    """Per-user cache for things shared by every project (llama.cpp's converter)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lorapipe"
