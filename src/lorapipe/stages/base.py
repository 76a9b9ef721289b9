"""DVC stage ``base``: the base model (``model.*``) as a Hugging Face folder in ``models/base``.

Run: ``dvc repro base`` (or ``python -m lorapipe.stages.base``; ``lorapipe base --model.name X``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.models import prepare_base_model
from lorapipe.params import Params
from lorapipe.stages import main


def run(p: Params, out_dir: Path = paths.BASE_MODEL) -> None:
    prepare_base_model(p.model.name, out_dir, revision=p.model.revision, trust_remote_code=p.model.trust_remote_code)


if __name__ == "__main__":
    raise SystemExit(main("base", run))
