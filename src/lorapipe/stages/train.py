"""DVC stage ``train``: a LoRA/QLoRA adapter trained on ``data/dataset`` over ``models/base``
(``lora.*``, ``train.*``, ``quant.*``, ``common.seed``) into ``models/lora_output``, with its reports;
one MLflow run per adapter. Under ``accelerate launch`` when ``train.num_processes`` > 1.

Run: ``dvc repro train`` (or ``python -m lorapipe.stages.train``; ``lorapipe train --task NAME``).
Across machines this is machine 0; the others run ``lorapipe train --machine-rank R`` (lorapipe.distributed).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lorapipe import paths, tracking
from lorapipe.io import read_provenance
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(
    p: Params, task: str | None = None, *, dataset_dir: Path = paths.DATASET, base_dir: Path = paths.BASE_MODEL
) -> None:
    """Train the adapter of all tasks into models/lora_output, or of one `task` into
    models/lora_<task> (its own MLflow run and reports), on the rows in `dataset_dir` over `base_dir`."""
    adapter, metrics, loss, plot = paths.train_outputs(task)
    resolved, data = section_dict(p, "train"), Path(dataset_dir)
    dataset_hash = tracking.files_hash(data / paths.TRAIN_ROWS.name, data / paths.VAL_ROWS.name)
    tags = {"dataset_hash": dataset_hash, "base_model": str(read_provenance(base_dir).get("model.name"))}
    with tracking.training_run(resolved, {**tags, **({"task": task} if task else {})}) as run_info:
        provenance = {**resolved, "dataset_hash": dataset_hash, "task": task}
        reports = {"metrics_path": metrics, "loss_path": loss, "plot_path": plot}
        sections = {"lora": p.lora, "train": p.train, "quant": p.quant, "seed": p.common.seed, "task": task}
        kwargs = {"run_info": run_info, "provenance": provenance, **reports, **sections}
        if p.train.num_processes > 1:
            from lorapipe.distributed import train_lora_distributed

            folders = {"dataset_dir": dataset_dir, "base_dir": base_dir, "out_dir": adapter}
            launch = (p.train.num_processes, p.train.accelerate_config)
            result = train_lora_distributed(*launch, mlflow_run_id=run_info["run_id"], **folders, **kwargs)
        else:
            from lorapipe.train import train_lora

            log = lambda step, values: tracking.log_step(run_info["run_id"], step, values)  # noqa: E731
            result = train_lora(dataset_dir, base_dir, adapter, on_log=log, **kwargs)
        artifacts = {"adapter": adapter, "reports": loss, "charts": plot, "dataset": data / paths.DATASET_STATS.name}
        tracking.finish_training_run(run_info["run_id"], asdict(result.metrics), asdict(result.resolved), artifacts)
    print(f"[train] MLflow run {run_info['run_id']} in {run_info['tracking_uri']}", flush=True)


if __name__ == "__main__":  # `--task NAME`: one task's adapter (the README's foreach stage)
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lorapipe.stages.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="train on this task's rows only, into models/lora_TASK")
    task = parser.parse_args().task
    raise SystemExit(main("train", lambda params: run(params, task)))
