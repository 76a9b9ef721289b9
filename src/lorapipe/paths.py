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
EXTRACTED = Path("data/extracted_text")
MANIFEST_NAME = "manifest.jsonl"

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
BASE_ANSWERS = REPORTS / "answers_base.jsonl"
EVAL = REPORTS / "eval.json"
SAMPLES = REPORTS / "samples.md"

PROVENANCE_NAME = "lorapipe_params.yaml"  # the resolved params written beside each model folder


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
