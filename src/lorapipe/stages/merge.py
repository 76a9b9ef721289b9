"""DVC stage ``merge``: the adapter in ``models/lora_output`` folded into the base model's weights,
written to ``models/merged`` (``merge.dtype``); logged into the adapter's MLflow run.

Run: ``dvc repro merge`` (or ``python -m lorapipe.stages.merge``; ``lorapipe merge --merged-dir D``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths, tracking
from lorapipe.merge import merge_adapter
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(
    p: Params, merged_dir: Path = paths.MERGED, *, base_dir: Path = paths.BASE_MODEL, adapter_dir: Path = paths.ADAPTER
) -> None:
    merge_adapter(base_dir, adapter_dir, merged_dir, dtype=p.merge.dtype)
    tracking.log_stage(Path(adapter_dir) / paths.RUN_INFO_NAME, "merge", section_dict(p, "merge"), {})


if __name__ == "__main__":
    raise SystemExit(main("merge", run))
