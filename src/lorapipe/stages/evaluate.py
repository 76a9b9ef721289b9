"""DVC stage ``evaluate``: the fine-tuned model and its GGUF scored against the base model on the
validation rows (``eval.*``): ``reports/eval.json`` and ``reports/samples.md``; logged to MLflow.

Run: ``dvc repro evaluate`` (or ``python -m lorapipe.stages.evaluate``).
"""

from __future__ import annotations

from lorapipe import paths, tracking
from lorapipe.evaluate import evaluate_models
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(p: Params) -> None:
    e = p.eval
    metrics = evaluate_models(
        paths.VAL_ROWS,
        paths.PROMPTS,
        paths.MERGED,
        paths.GGUF,
        paths.EVAL,
        samples_path=paths.SAMPLES,
        base_metrics_path=paths.EVAL_BASE,
        base_answers_path=paths.BASE_ANSWERS,
        max_samples=e.max_samples,
        num_generations=e.num_generations,
        max_new_tokens=e.max_new_tokens,
        json_schema=e.json_schema,
        constrained=e.constrained,
    )
    tracking.log_stage(
        paths.ADAPTER / paths.RUN_INFO_NAME,
        "evaluate",
        section_dict(p, "evaluate"),
        {"eval": metrics},
        {"reports": paths.SAMPLES},
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate", run))
