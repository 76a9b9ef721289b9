"""DVC stage ``synth``: question–answer pairs about the extracted documents, written by a teacher
model, and the passages with their BM25 index, into ``data/synth`` (``synth.*``, ``common.seed``,
``model.name``).

Run: ``dvc repro synth`` (or ``python -m lorapipe.stages.synth``; ``lorapipe synth --output-dir D``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.params import Params
from lorapipe.stages import main
from lorapipe.synth import synthesize
from lorapipe.teacher import TeacherError, make_teacher


def run(
    p: Params, text_dir: Path = paths.EXTRACTED, base_dir: Path = paths.BASE_MODEL, out_dir: Path = paths.SYNTH
) -> None:
    """Raises SystemExit with the message (exit status 1) when the teacher cannot be used or goes away
    mid-run (TeacherError: what it answered is cached, data/synth is left as it was)."""
    s = p.synth
    teacher = None
    try:
        if s.questions_per_passage > 0:  # 0: no teacher is made, checked or asked
            teacher = make_teacher(s, model_name=p.model.name, base_dir=base_dir)
            teacher.check()  # an unreachable endpoint or a missing model is named before any work
        synthesize(
            text_dir,
            base_dir,
            out_dir,
            teacher=teacher,
            questions_per_passage=s.questions_per_passage,
            passage_tokens=s.passage_tokens,
            overlap_tokens=s.overlap_tokens,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            prompt=s.prompt,
            max_question_chars=s.max_question_chars,
            max_answer_chars=s.max_answer_chars,
            min_grounding=s.min_grounding,
            dedup_threshold=s.dedup_threshold,
            eval_fraction=s.eval_fraction,
            resume=s.resume,
            seed=p.common.seed,
            model_name=p.model.name,
        )
    except TeacherError as exc:
        raise SystemExit(f"[synth] error: {exc}") from None
    finally:
        if teacher is not None:
            teacher.close()


if __name__ == "__main__":
    raise SystemExit(main("synth", run))
