"""DVC stage ``evaluate`` (``eval.*``, ``export.quant_tolerance``): the fine-tuned model and its GGUFs against the
base on the validation rows and evaluate_base's knowledge questions (``reports/``); logged to MLflow.

Run: ``dvc repro evaluate`` (or ``python -m lorapipe.stages.evaluate``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths, tracking
from lorapipe.evaluate import evaluate_models
from lorapipe.knowledge import knowledge_metrics
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
    """evaluate_base's results are read from `reports_dir`, the reports written there; metrics: `adapter_dir`'s run."""
    data, reports, e = Path(dataset_dir), Path(reports_dir), p.eval
    metrics = evaluate_models(
        data / paths.VAL_ROWS.name,
        data / paths.PROMPTS.name,
        merged_dir,
        gguf_dir,
        reports / paths.EVAL.name,
        samples_path=reports / paths.SAMPLES.name,
        base_metrics_path=reports / paths.EVAL_BASE.name,
        base_answers_path=reports / paths.BASE_ANSWERS.name,
        knowledge_base_path=reports / paths.KNOWLEDGE_BASE.name,
        knowledge_path=reports / paths.KNOWLEDGE.name,
        knowledge_md_path=reports / paths.KNOWLEDGE_MD.name,
        max_samples=e.max_samples,
        num_generations=e.num_generations,
        max_new_tokens=e.max_new_tokens,
        json_schema=e.json_schema,
        constrained=e.constrained,
        span_constraint=e.span_constraint,
        knowledge_max_new_tokens=e.knowledge_max_new_tokens,
        quant_tolerance=p.export.quant_tolerance,
    )
    tracking.log_stage(
        Path(adapter_dir) / paths.RUN_INFO_NAME,
        "evaluate",
        section_dict(p, "evaluate"),
        {"eval": metrics, **knowledge_metrics(reports / paths.KNOWLEDGE.name)},
        {"reports": reports / paths.SAMPLES.name, "knowledge": reports / paths.KNOWLEDGE_MD.name},
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate", run))
