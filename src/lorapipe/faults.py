"""Deterministic fault points: the tests kill a stage with SIGKILL at a named place to check that
nothing is lost or half-written (RELIABILITY.md lists them).

``LORAPIPE_FAULT=<stage>:<point>`` (e.g. ``train:mid``) makes the process running that stage kill
itself with SIGKILL when it reaches the point. Every stage has three points:

- ``early``: the params are validated, nothing is read or written yet;
- ``mid``: part of the work is done (the first document converted, half the training steps, …);
- ``writing``: the outputs are written into their temporary folder or files, not yet renamed into
  place (``lorapipe.io``'s atomic writers call it just before the rename).

Unset (the normal case) it costs one environment lookup per point.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "LORAPIPE_FAULT"
POINTS = ("early", "mid", "writing")

_stage: str | None = None


def enter_stage(stage: str) -> None:
    """Mark this process as running `stage` (the pipeline calls it first), and fire its early point."""
    global _stage
    _stage = stage
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted.partition(":")[2] not in POINTS:
        raise ValueError(f"{FAULT_ENV}={wanted!r}: expected <stage>:<point>, the point one of {', '.join(POINTS)}")
    fault_point("early")


def fault_point(point: str) -> None:
    """SIGKILL this process if LORAPIPE_FAULT names the current stage and `point`."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and _stage and wanted == f"{_stage}:{point}":
        print(f"[fault] {wanted}: killing process {os.getpid()} with SIGKILL", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
