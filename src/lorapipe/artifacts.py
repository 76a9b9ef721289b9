"""Readers of what the stages leave beside their outputs: which GGUF is the model, and where a model
folder comes from.

    from lorapipe.artifacts import model_gguf, lineage
    model_gguf("models/gguf")                        # models/gguf/lorapipe.Q4_K_M.gguf
    lineage("models/lora_output", "models/base")     # {"lorapipe.version": ..., ...}

The export stage writes ``export.json`` into its folder; its ``model`` entry names the GGUF that the
Modelfile's ``FROM`` uses (the first of ``export.quants``). ``lorapipe ask``, ``lorapipe chat``,
``lorapipe serve`` and the evaluate stage all serve or score that file, through `model_gguf`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from lorapipe import paths
from lorapipe.io import read_json, read_provenance
from lorapipe.tracking import git_commit

EXPORT_INFO = "export.json"  # written by export_gguf into its output folder


def export_info(gguf_dir: str | Path) -> dict[str, Any]:
    """The contents of ``<gguf_dir>/export.json``: ``model`` (file name of the model's GGUF),
    ``files`` ({quantization or "lora": file name}), verification and metadata.

    Raises FileNotFoundError naming the folder and the command that writes it when it is absent."""
    path = Path(gguf_dir) / EXPORT_INFO
    if not path.is_file():
        raise FileNotFoundError(
            f"{gguf_dir} has no {EXPORT_INFO}, which names the model's GGUF: run the export "
            "stage first (`dvc repro export`)"
        )
    return read_json(path)


def model_gguf(gguf_dir: str | Path) -> Path:
    """The GGUF that is "the model" of an export folder: the one ``export.json`` names, which is the
    file the Modelfile's ``FROM`` uses.

    Raises FileNotFoundError (naming the folder and `dvc repro export`) when ``export.json`` or the
    file it names is missing, or when ``export.json`` predates the ``model`` entry."""
    info = export_info(gguf_dir)
    if not info.get("model"):
        raise FileNotFoundError(
            f"{Path(gguf_dir) / EXPORT_INFO} names no model (written by an older lorapipe): "
            "run the export stage again (`dvc repro export --force`)"
        )
    path = Path(gguf_dir) / info["model"]
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}, the model {EXPORT_INFO} names, is missing: run the export stage again "
            "(`dvc repro export --force`)"
        )
    return path


def export_ggufs(gguf_dir: str | Path) -> dict[str, Path]:
    """Every whole-model GGUF of an export folder by quantization (``{"Q8_0": …/x.Q8_0.gguf}``), in
    ``export.quants`` order; the adapter-only ``<name>.lora.gguf`` is left out. Raises as `model_gguf`."""
    model_gguf(gguf_dir)  # the same checks, the same messages
    files = export_info(gguf_dir)["files"]
    return {quant: Path(gguf_dir) / name for quant, name in files.items() if quant != "lora"}


def package_version() -> str:
    """lorapipe's installed version (``lorapipe.__version__``: "unknown" from a source tree that is not
    installed)."""
    import lorapipe

    return lorapipe.__version__


def lineage(adapter_dir: str | Path, base_dir: str | Path) -> dict[str, str]:
    """Where an export comes from, as GGUF metadata strings: lorapipe's version and git commit, the
    adapter's MLflow run id and dataset hash, the base model's name and revision ("" where unknown).

    Raises FileNotFoundError when the adapter's ``run.json`` or either provenance file is missing."""
    run = read_json(Path(adapter_dir) / paths.RUN_INFO_NAME)
    adapter, base = read_provenance(adapter_dir), read_provenance(base_dir)
    return {
        "lorapipe.version": package_version(),
        "lorapipe.git_commit": git_commit(),
        "lorapipe.mlflow_run_id": str(run.get("run_id") or ""),
        "lorapipe.dataset_hash": str(adapter.get("dataset_hash") or ""),
        "lorapipe.base_model": str(base.get("model.name") or ""),
        "lorapipe.base_revision": str(base.get("model.revision") or ""),
    }
