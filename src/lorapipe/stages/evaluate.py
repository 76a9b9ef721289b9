"""DVC stage ``evaluate``: the fine-tuned model and its GGUF scored against the base model on the
validation rows (``eval.*``): ``reports/eval.json`` and ``reports/samples.md``; logged to MLflow.

Run: ``dvc repro evaluate`` (or ``python -m lorapipe.stages.evaluate``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths, tracking
from lorapipe.evaluate import evaluate_models
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(
    p: Params,
    *,
    dataset_dir: Path = paths.DATASET,
    merged_dir: Path = paths.MERGED,
    gguf_dir: Path = paths.GGUF,
    reports_dir: Path = paths.REPORTS,
    adapter_dir: Path = paths.ADAPTER,
) -> None:
    """evaluate_base's results are read from `reports_dir`, and eval.json and samples.md written there;
    the metrics go into the MLflow run of the adapter in `adapter_dir`."""
    data, reports = Path(dataset_dir), Path(reports_dir)
    e = p.eval
    metrics = evaluate_models(
        data / paths.VAL_ROWS.name,
        data / paths.PROMPTS.name,
        merged_dir,
        gguf_dir,
        reports / paths.EVAL.name,
        samples_path=reports / paths.SAMPLES.name,
        base_metrics_path=reports / paths.EVAL_BASE.name,
        base_answers_path=reports / paths.BASE_ANSWERS.name,
        max_samples=e.max_samples,
        num_generations=e.num_generations,
        max_new_tokens=e.max_new_tokens,
        json_schema=e.json_schema,
        constrained=e.constrained,
    )
    tracking.log_stage(
        Path(adapter_dir) / paths.RUN_INFO_NAME,
        "evaluate",
        section_dict(p, "evaluate"),
        {"eval": metrics},
        {"reports": reports / paths.SAMPLES.name},
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate", run))
