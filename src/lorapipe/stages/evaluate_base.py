"""DVC stage ``evaluate_base``: the base model's perplexity and answers on the validation rows
(``eval.max_samples``, ``eval.max_new_tokens``) and its closed-book and retrieval answers to the
knowledge questions (``eval.knowledge_*``, ``eval.retrieval_top_k``), so that experiments do not
recompute them.

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
    synth_dir: Path = paths.SYNTH,
    eval_qa: Path = paths.EVAL_QA,
) -> None:
    """The base's scores into `reports_dir` (``eval_base.json``, ``answers_base.json``, and its knowledge
    answers ``knowledge_base.json`` to the held-out pairs of `synth_dir` and the questions of `eval_qa`,
    a file that may be absent)."""
    data, reports = Path(dataset_dir), Path(reports_dir)
    e = p.eval
    evaluate_base(
        data / paths.VAL_ROWS.name,
        base_dir,
        reports / paths.EVAL_BASE.name,
        prompts_path=data / paths.PROMPTS.name,
        answers_path=reports / paths.BASE_ANSWERS.name,
        knowledge_path=reports / paths.KNOWLEDGE_BASE.name,
        synth_dir=paths.require(synth_dir, "--synth-dir"),
        eval_qa_path=eval_qa,
        train_path=data / paths.TRAIN_ROWS.name,
        max_samples=e.max_samples,
        max_new_tokens=e.max_new_tokens,
        knowledge_questions=e.knowledge_questions,
        knowledge_max_new_tokens=e.knowledge_max_new_tokens,
        retrieval_top_k=e.retrieval_top_k,
    )


if __name__ == "__main__":
    raise SystemExit(main("evaluate_base", run))
