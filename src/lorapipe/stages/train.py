"""DVC stage ``train``: a LoRA/QLoRA adapter trained on ``data/dataset`` over ``models/base``
(``lora.*``, ``train.*``, ``quant.*``, ``common.seed``) into ``models/lora_output``, with its reports;
one MLflow run per adapter. Under ``accelerate launch`` when ``train.num_processes`` > 1.

Run: ``dvc repro train`` (or ``python -m lorapipe.stages.train``; ``lorapipe train --task NAME``).
"""

from __future__ import annotations

from dataclasses import asdict

from lorapipe import paths, tracking
from lorapipe.artifacts import read_provenance
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(p: Params, task: str | None = None) -> None:
    """Train the adapter of all tasks into models/lora_output, or of one `task` into
    models/lora_<task> (its own MLflow run and reports)."""
    adapter, metrics_path, loss_path = (
        paths.task_outputs(task) if task else (paths.ADAPTER, paths.TRAIN_METRICS, paths.TRAIN_LOSS)
    )
    resolved = section_dict(p, "train")
    dataset_hash = tracking.files_hash(paths.TRAIN_ROWS, paths.VAL_ROWS)
    base_model = str(read_provenance(paths.BASE_MODEL).get("model.name"))
    run_info = tracking.start_training_run(
        resolved, {"dataset_hash": dataset_hash, "base_model": base_model, **({"task": task} if task else {})}
    )
    kwargs = dict(
        dataset_dir=paths.DATASET,
        base_dir=paths.BASE_MODEL,
        out_dir=adapter,
        lora=p.lora,
        train=p.train,
        quant=p.quant,
        seed=p.common.seed,
        task=task,
        metrics_path=metrics_path,
        loss_path=loss_path,
        plot_path=loss_path.with_suffix(".png"),
        run_info=run_info,
        provenance={**resolved, "dataset_hash": dataset_hash, "task": task},
    )
    try:
        if p.train.num_processes > 1:
            from lorapipe.distributed import train_lora_distributed

            result = train_lora_distributed(
                p.train.num_processes, p.train.accelerate_config, mlflow_run_id=run_info["run_id"], **kwargs
            )
        else:
            from lorapipe.train import train_lora

            result = train_lora(
                **kwargs, on_log=lambda step, metrics: tracking.log_step(run_info["run_id"], step, metrics)
            )
    except BaseException:
        tracking.finish_run(run_info["run_id"], {}, status="FAILED")
        raise
    tracking.set_tags(
        run_info["run_id"], {f"resolved.{key}": str(value) for key, value in asdict(result.resolved).items()}
    )
    tracking.finish_run(
        run_info["run_id"],
        asdict(result.metrics),
        {
            "adapter": adapter,
            "reports": loss_path,
            "charts": loss_path.with_suffix(".png"),
            "dataset": paths.DATASET_STATS,
        },
    )
    print(f"[train] MLflow run {run_info['run_id']} in {run_info['tracking_uri']}", flush=True)


if __name__ == "__main__":  # `--task NAME`: one task's adapter (the README's foreach stage)
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lorapipe.stages.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", help="train on this task's rows only, into models/lora_TASK")
    task = parser.parse_args().task
    raise SystemExit(main("train", lambda params: run(params, task)))
