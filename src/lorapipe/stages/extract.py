"""DVC stage ``extract``: the text of every document in ``data/raw/docs`` into ``data/extracted_text``
(one text file per source and ``manifest.jsonl``), with ``extract.*``.

Run: ``dvc repro extract`` (or ``python -m lorapipe.stages.extract``; ``lorapipe extract --input-dir D``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.cluster import ClusterError
from lorapipe.extract import extract_documents
from lorapipe.params import Params
from lorapipe.stages import main


def run(p: Params, input_dirs: list[Path] | None = None, out_dir: Path = paths.EXTRACTED) -> None:
    """Raises SystemExit with the message (exit status 1) when extract.executor is ray and Ray is missing
    or the cluster does not answer (before any work), or a node's converters differ from this machine's."""
    e = p.extract
    try:
        extract_documents(
            input_dirs or [paths.RAW_DOCS],
            out_dir,
            pdf_backend=e.pdf_backend,
            min_length=e.min_length,
            device=e.device,
            ocr=e.ocr,
            docling_artifacts_path=e.docling_artifacts_path,
            timeout_s=e.timeout_s,
            workers=e.workers,
            resume=e.resume,
            executor=e.executor,
            ray_address=e.ray_address,
        )
    except ClusterError as exc:
        raise SystemExit(f"[extract] error: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main("extract", run))
