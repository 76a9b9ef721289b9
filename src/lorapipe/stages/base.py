"""DVC stage ``base``: the base model (``model.*``) as a Hugging Face folder in ``models/base``.

Run: ``dvc repro base`` (or ``python -m lorapipe.stages.base``; ``lorapipe base --model.name X``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths
from lorapipe.models import describe_source, prepare_base_model
from lorapipe.params import Params
from lorapipe.stages import main


def untracked_local_model(name: str) -> str | None:
    """A warning when `name` (``model.name``) is a local folder outside ``data/raw/models``, the folder the
    base stage depends on in dvc.yaml: DVC sees a change of its params, not of the files in such a folder,
    so retrained weights there would leave ``models/base`` (and all after it) stale. None otherwise."""
    if describe_source(name) != "local" or Path(name).expanduser().resolve().is_relative_to(paths.RAW_MODELS.resolve()):
        return None
    return (
        f"[base] warning: model.name {name!r} is a folder outside {paths.RAW_MODELS}, so DVC does not see "
        f"changes to its files: after changing them, run `dvc repro -f base`; or move the model (or `dvc add` "
        f"it) under {paths.RAW_MODELS}/, which this stage depends on"
    )


def run(p: Params, out_dir: Path = paths.BASE_MODEL) -> None:
    warning = untracked_local_model(p.model.name)
    if warning:
        print(warning, flush=True)
    prepare_base_model(p.model.name, out_dir, revision=p.model.revision, trust_remote_code=p.model.trust_remote_code)


if __name__ == "__main__":
    raise SystemExit(main("base", run))
