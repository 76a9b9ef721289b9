"""DVC stage ``evaluate_base``: the base model's perplexity and answers on the validation rows
(``eval.max_samples``, ``eval.max_new_tokens``), so that experiments do not recompute them.

Run: ``dvc repro evaluate_base`` (or ``python -m lorapipe.stages.evaluate_base``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.evaluate import evaluate_base
from lorapipe.params import Params
from lorapipe.stages import main


def run(
    p: Params,
    *,
    dataset_dir: Path = paths.DATASET,
    base_dir: Path = paths.BASE_MODEL,
    reports_dir: Path = paths.REPORTS,
) -> None:
    """The base's scores into `reports_dir` (``eval_base.json``, ``answers_base.json``)."""
    evaluate_base(
        Path(dataset_dir) / paths.VAL_ROWS.name,
        base_dir,
        Path(reports_dir) / paths.EVAL_BASE.name,
        prompts_path=Path(dataset_dir) / paths.PROMPTS.name,
        answers_path=Path(reports_dir) / paths.BASE_ANSWERS.name,
        max_samples=p.eval.max_samples,
        max_new_tokens=p.eval.max_new_tokens,
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate_base", run))
