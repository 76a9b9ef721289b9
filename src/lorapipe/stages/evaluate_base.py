"""DVC stage ``evaluate_base``: the base model's perplexity and answers on the validation rows
(``eval.max_samples``, ``eval.max_new_tokens``), so that experiments do not recompute them.

Run: ``dvc repro evaluate_base`` (or ``python -m lorapipe.stages.evaluate_base``).
"""

from __future__ import annotations

from lorapipe import paths
from lorapipe.evaluate import evaluate_base
from lorapipe.params import Params
from lorapipe.stages import main


def run(p: Params) -> None:
    evaluate_base(
        paths.VAL_ROWS,
        paths.BASE_MODEL,
        paths.EVAL_BASE,
        prompts_path=paths.PROMPTS,
        answers_path=paths.BASE_ANSWERS,
        max_samples=p.eval.max_samples,
        max_new_tokens=p.eval.max_new_tokens,
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate_base", run))
