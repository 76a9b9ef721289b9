"""DVC stage ``dataset``: training and validation rows from the extracted text, the labeled examples
and the synth stage's question–answer pairs (``data/synth/pairs.jsonl``, the task ``synth.task``),
tokenized with ``models/base``'s tokenizer, into ``data/dataset`` (``dataset.*``, ``common.seed``,
``synth.task``, ``synth.system_prompt``).

Run: ``dvc repro dataset`` (or ``python -m lorapipe.stages.dataset``; ``lorapipe dataset --output-dir D``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.dataset import build_dataset
from lorapipe.params import Params
from lorapipe.stages import main


def run(
    p: Params,
    text_dir: Path = paths.EXTRACTED,
    labeled_dir: Path = paths.RAW_LABELED,
    out_dir: Path = paths.DATASET,
    base_dir: Path = paths.BASE_MODEL,
    *,
    synth_dir: Path = paths.SYNTH,
) -> None:
    d = p.dataset
    build_dataset(
        text_dir,
        base_dir,
        out_dir,
        labeled_dir=labeled_dir,
        mode=d.mode,
        tasks=d.tasks,
        max_seq_len=d.max_seq_len,
        overlap_tokens=d.overlap_tokens,
        split_by=d.split_by,
        val_fraction=d.val_fraction,
        seed=p.common.seed,
        system_prompt=d.system_prompt,
        dedup_threshold=d.dedup_threshold,
        max_samples=d.max_samples,
        min_tokens=d.min_tokens,
        on_overflow=d.on_overflow,
        on_bad_row=d.on_bad_row,
        labeled_format=d.labeled_format,
        fields=d.fields,
        span_substitution=d.span_substitution,
        rare_key_oversampling=d.rare_key_oversampling,
        synth_dir=synth_dir,
        qa_task=p.synth.task,
        qa_system_prompt=p.synth.system_prompt,
        json_schema=p.eval.json_schema,
    )


if __name__ == "__main__":
    raise SystemExit(main("dataset", run))
