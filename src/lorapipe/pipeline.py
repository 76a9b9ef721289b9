"""One function per DVC stage: take the validated params, call the library with explicit arguments,
write the outs that dvc.yaml declares, and record the run in MLflow.

The scripts in ``stages/`` and the ``lorapipe`` CLI both call these, so the two never drift.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from lorapipe import faults, paths, tracking
from lorapipe.artifacts import lineage
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
        dataset_dir=paths.DATASET, base_dir=paths.BASE_MODEL, out_dir=adapter,
        rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules,
        epochs=train.epochs, max_steps=train.max_steps, lr=train.lr, batch_size=train.batch_size,
        grad_accum=train.grad_accum, warmup_steps=train.warmup_steps, weight_decay=train.weight_decay,
        log_every=train.log_every, eval_steps=train.eval_steps, early_stopping_patience=train.early_stopping_patience,
        packing=train.packing, torch_compile=train.torch_compile, precision=train.precision, load_in_4bit=quant.load_in_4bit,
        quant_type=quant.quant_type, double_quant=quant.double_quant, seed=p.common.seed, preset=train.preset,
        autofit=train.autofit, save_steps=train.save_steps, save_total_limit=train.save_total_limit,
        resume=train.resume, task=task, metrics_path=metrics_path, loss_path=loss_path,
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
    tracking.set_tags(run["run_id"], {f"resolved.{key}": str(value) for key, value in result["resolved"].items()})
    tracking.finish_run(run["run_id"], result, {"adapter": adapter, "reports": loss_path,
                                                "charts": loss_path.with_suffix(".png"),
                                                "dataset": paths.DATASET_STATS})
    print(f"[train] MLflow run {run['run_id']} in {run['tracking_uri']}", flush=True)


def run_merge(p: Params, merged_dir=paths.MERGED) -> None:
    faults.enter_stage("merge")
    merge_adapter(paths.BASE_MODEL, paths.ADAPTER, merged_dir, p.merge.dtype)
    tracking.log_stage(paths.ADAPTER / paths.RUN_INFO_NAME, "merge", section_dict(p, "merge"), {})


def run_export(p: Params, merged_dir=paths.MERGED, out_dir=paths.GGUF) -> None:
    faults.enter_stage("export")
    e = p.export
    info = export_gguf(merged_dir, paths.PROMPTS, out_dir, quants=e.quants, outtype=e.outtype, name=e.name,
                       llama_cpp_dir=e.llama_cpp_dir, lora_gguf=e.lora_gguf, ollama_name=e.ollama_name,
                       adapter_dir=paths.ADAPTER, base_dir=paths.BASE_MODEL,
                       metadata=lineage(paths.ADAPTER, paths.BASE_MODEL))
    tracking.log_stage(paths.ADAPTER / paths.RUN_INFO_NAME, "export", section_dict(p, "export"),
                       {"export": info["verification"]}, {"gguf": Path(out_dir) / "Modelfile"})


def run_evaluate_base(p: Params) -> None:
    faults.enter_stage("evaluate_base")
    evaluate_base(paths.VAL_ROWS, paths.BASE_MODEL, paths.EVAL_BASE, prompts_path=paths.PROMPTS,
                  answers_path=paths.BASE_ANSWERS, max_samples=p.eval.max_samples,
                  max_new_tokens=p.eval.max_new_tokens)


def run_evaluate(p: Params) -> None:
    faults.enter_stage("evaluate")
    e = p.eval
    metrics = evaluate_models(paths.VAL_ROWS, paths.PROMPTS, paths.MERGED, paths.GGUF, paths.EVAL,
                              samples_path=paths.SAMPLES, base_metrics_path=paths.EVAL_BASE,
                              base_answers_path=paths.BASE_ANSWERS, max_samples=e.max_samples,
                              num_generations=e.num_generations, max_new_tokens=e.max_new_tokens,
                              json_schema=e.json_schema, constrained=e.constrained)
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
