"""The DVC stages, one module each, run by ``dvc.yaml`` as ``python -m lorapipe.stages.<stage>``.

Each module's ``run(params, ...)`` reads its own params section, calls the library with keyword
arguments and writes exactly the outs ``dvc.yaml`` declares; the ``lorapipe`` CLI calls the same
``run`` functions. Each module imports only the code its stage uses, so that its ``deps`` in
``dvc.yaml`` cover every project file it executes (``tests/test_stages.py`` computes the import
closure and checks it). This package file imports nothing at module level for the same reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def main(stage: str, run: Callable[[Any], None]) -> int:
    """What ``python -m lorapipe.stages.<stage>`` runs: the stage with ``params.yaml``.

    Returns the exit status: 0 done; 2 when ``params.yaml`` is missing, not YAML or invalid, a file
    it names is missing or outside the folder the stage depends on, or ``LORAPIPE_FAULT`` is
    malformed (one message naming each bad key, before any work). Other errors keep their
    traceback."""
    from lorapipe import faults
    from lorapipe.param_files import check_param_files
    from lorapipe.params import ParamsError, load_params

    try:
        params = load_params()
        check_param_files(params, stage)
        faults.enter_stage(stage)
    except (ParamsError, FileNotFoundError, ValueError) as exc:  # ValueError: a malformed LORAPIPE_FAULT
        print(f"[{stage}] {exc}", file=sys.stderr)
        return 2
    run(params)
    return 0
