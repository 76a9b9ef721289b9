"""One function per DVC stage: take the validated params, call the library with explicit arguments,
write the outs that dvc.yaml declares, and record the run in MLflow.

The scripts in ``stages/`` and the ``lorapipe`` CLI both call these, so the two never drift.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from lorapipe import faults, paths, tracking
from lorapipe.dataset import build_dataset
from lorapipe.distributed import train_lora_distributed
from lorapipe.evaluate import evaluate_base, evaluate_models
from lorapipe.export import export_gguf
from lorapipe.extract import extract_documents
from lorapipe.merge import merge_adapter
from lorapipe.models import prepare_base_model
from lorapipe.params import Params, ParamsError, load_params, section_dict
from lorapipe.train import train_lora


def run_base(p: Params) -> None:
    faults.enter_stage("base")
    prepare_base_model(p.model.name, paths.BASE_MODEL, p.model.revision, p.model.trust_remote_code)


def run_extract(p: Params, input_dirs: list | None = None, out_dir=paths.EXTRACTED) -> None:
    faults.enter_stage("extract")
    e = p.extract
    extract_documents(input_dirs or [paths.RAW_DOCS], out_dir, e.pdf_backend, e.min_length, e.device, e.ocr,
                      e.docling_artifacts_path, e.timeout_s, e.workers, e.resume)


def run_dataset(p: Params, text_dir=paths.EXTRACTED, labeled_dir=paths.RAW_LABELED, out_dir=paths.DATASET) -> None:
    faults.enter_stage("dataset")
    d = p.dataset
    build_dataset(text_dir, paths.BASE_MODEL, out_dir, labeled_dir=labeled_dir, mode=d.mode,
                  tasks=[t.model_dump() for t in d.tasks], max_seq_len=d.max_seq_len,
                  overlap_tokens=d.overlap_tokens, split_by=d.split_by, val_fraction=d.val_fraction,
                  seed=p.common.seed, system_prompt=d.system_prompt, dedup_threshold=d.dedup_threshold,
                  max_samples=d.max_samples, min_tokens=d.min_tokens, on_overflow=d.on_overflow,
                  on_bad_row=d.on_bad_row, labeled_format=d.labeled_format, fields=d.fields)


def run_train(p: Params, task: str | None = None) -> None:
    """Train the adapter: of all tasks into models/lora_output, or of one `task` into
    models/lora_<task> (its own MLflow run); under `accelerate launch` when train.num_processes > 1."""
    faults.enter_stage("train")
    lora, train, quant = p.lora, p.train, p.quant
    adapter, metrics_path, loss_path = paths.task_outputs(task) if task else \
        (paths.ADAPTER, paths.TRAIN_METRICS, paths.TRAIN_LOSS)
    resolved = section_dict(p, "train")
    dataset_hash = tracking.files_hash(paths.TRAIN_ROWS, paths.VAL_ROWS)
    base = yaml.safe_load((paths.BASE_MODEL / paths.PROVENANCE_NAME).read_text())
    tags = {"dataset_hash": dataset_hash, "base_model": str(base["model.name"]), **({"task": task} if task else {})}
    run = tracking.start_training_run(resolved, tags)
    kwargs = dict(
        dataset_dir=paths.DATASET, base_dir=paths.BASE_MODEL, out_dir=adapter, lora=lora, train=train, quant=quant,
        seed=p.common.seed, task=task, metrics_path=metrics_path, loss_path=loss_path,
        plot_path=loss_path.with_suffix(".png"), run_info=run,
        provenance={**resolved, "dataset_hash": dataset_hash, "task": task},
    )
    try:
        if train.num_processes > 1:
            result = train_lora_distributed(train.num_processes, train.accelerate_config,
                                            mlflow_run_id=run["run_id"], **kwargs)
        else:
            result = train_lora(**kwargs, on_log=lambda step, metrics: tracking.log_step(run["run_id"], step, metrics))
    except BaseException:
        tracking.finish_run(run["run_id"], {}, status="FAILED")
        raise
    tracking.set_tags(run["run_id"], {f"resolved.{key}": str(value) for key, value in asdict(result.resolved).items()})
    tracking.finish_run(run["run_id"], asdict(result.metrics), {"adapter": adapter, "reports": loss_path,
                                                "charts": loss_path.with_suffix(".png"),
                                                "dataset": paths.DATASET_STATS})
    print(f"[train] MLflow run {run['run_id']} in {run['tracking_uri']}", flush=True)


def run_merge(p: Params, merged_dir=paths.MERGED) -> None:
    faults.enter_stage("merge")
    merge_adapter(paths.BASE_MODEL, paths.ADAPTER, merged_dir, p.merge.dtype)
    tracking.log_stage(paths.ADAPTER / paths.RUN_INFO_NAME, "merge", section_dict(p, "merge"), {})


def lineage() -> dict[str, str]:
    """Where an export comes from, written into every GGUF's metadata."""
    from lorapipe import __version__
    from lorapipe.io import read_json

    run = read_json(paths.ADAPTER / paths.RUN_INFO_NAME)
    adapter = yaml.safe_load((paths.ADAPTER / paths.PROVENANCE_NAME).read_text()) or {}
    base = yaml.safe_load((paths.BASE_MODEL / paths.PROVENANCE_NAME).read_text()) or {}
    return {"lorapipe.version": __version__, "lorapipe.git_commit": tracking.git_commit(),
            "lorapipe.mlflow_run_id": str(run.get("run_id") or ""),
            "lorapipe.dataset_hash": str(adapter.get("dataset_hash") or ""),
            "lorapipe.base_model": str(base.get("model.name") or ""),
            "lorapipe.base_revision": str(base.get("model.revision") or "")}


def run_export(p: Params, merged_dir=paths.MERGED, out_dir=paths.GGUF) -> None:
    faults.enter_stage("export")
    e = p.export
    info = export_gguf(merged_dir, paths.PROMPTS, out_dir, e.quants, e.outtype, e.name, e.llama_cpp_dir,
                       metadata=lineage(), lora_gguf=e.lora_gguf, ollama_name=e.ollama_name)
    tracking.log_stage(paths.ADAPTER / paths.RUN_INFO_NAME, "export", section_dict(p, "export"),
                       {"export": info["verification"]}, {"gguf": Path(out_dir) / "Modelfile"})


def run_evaluate_base(p: Params) -> None:
    faults.enter_stage("evaluate_base")
    evaluate_base(paths.VAL_ROWS, paths.BASE_MODEL, paths.EVAL_BASE, p.eval.max_samples, paths.PROMPTS,
                  paths.BASE_ANSWERS, p.eval.max_new_tokens)


def run_evaluate(p: Params) -> None:
    faults.enter_stage("evaluate")
    e = p.eval
    metrics = evaluate_models(paths.VAL_ROWS, paths.PROMPTS, paths.MERGED, paths.GGUF, paths.EVAL_BASE,
                              paths.EVAL, paths.SAMPLES, e.max_samples, e.num_generations, e.max_new_tokens,
                              paths.BASE_ANSWERS, e.json_schema, e.constrained)
    tracking.log_stage(paths.ADAPTER / paths.RUN_INFO_NAME, "evaluate", section_dict(p, "evaluate"),
                       {"eval": metrics}, {"reports": paths.SAMPLES})


def main(stage: str) -> int:
    """What ``stages/<stage>.py`` runs: the stage with params.yaml. A bad params.yaml stops it before
    any work with one message that names each bad key (exit 2); other errors keep their traceback."""
    try:
        params = load_params()
    except ParamsError as exc:
        print(f"[{stage}] {exc}", file=sys.stderr)
        return 2
    STAGES[stage](params)
    return 0


STAGES = {
    "base": run_base, "extract": run_extract, "dataset": run_dataset, "train": run_train,
    "merge": run_merge, "export": run_export, "evaluate_base": run_evaluate_base, "evaluate": run_evaluate,
}
