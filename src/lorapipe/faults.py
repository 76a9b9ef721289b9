"""Deterministic fault injection for the tests: one environment variable, ``LORAPIPE_FAULT``, names
one fault; the code at that place makes it happen (RELIABILITY.md lists what each test checks).

Grammar, ``LORAPIPE_FAULT=<stage>:<point>[:<argument>]``:

==============================================  =============================================================
``<stage>:early``                               SIGKILL when the stage starts: params validated, nothing read
``<stage>:mid``                                 SIGKILL with part of the work done (the first document
                                                converted, half the training steps, …)
``<stage>:writing``                             SIGKILL with the outputs written into their temporary folder
                                                or files, not yet renamed into place (``lorapipe.io``)
``train:kill-after-checkpoint:<step>``          SIGKILL right after the checkpoint of optimizer step
                                                ``<step>`` is saved
``train:oom-at-step:<step>``                    raise ``torch.OutOfMemoryError`` as step ``<step>`` begins
``extract:crash:<file name>``                   the worker converting that document dies of SIGSEGV (first
                                                attempt only; never the pdfplumber fallback)
``extract:hang:<file name>``                    the worker converting that document hangs (first attempt only)
==============================================  =============================================================

``<stage>`` is a DVC stage name (``base``, ``extract``, ``dataset``, ``train``, …: a misspelt one would
never fire, so it is refused); ``<step>`` a positive integer written plainly (``3``, not ``03``); a file
name may itself contain ``:``. Any other value is refused with a ValueError that
quotes it and this grammar, the first time a fault point reads it (`enter_stage` reads it first).

The three points every stage has (early, mid, writing) fire in the process that called
`enter_stage` for that stage; the others fire wherever their code runs (a training run called from
Python, an extraction worker), since they name their stage themselves. Unset (the normal case) a
fault point costs one environment lookup.
"""

from __future__ import annotations

import os
import re
import signal
from typing import NamedTuple

from lorapipe.params import STAGE_SECTIONS

FAULT_ENV = "LORAPIPE_FAULT"
POINTS = ("early", "mid", "writing")
# Points of one stage that take an argument: (stage, point) -> what the argument is.
_STEP, _FILE = "step", "file name"
ARGUMENT_POINTS: dict[tuple[str, str], str] = {
    ("train", "kill-after-checkpoint"): _STEP,
    ("train", "oom-at-step"): _STEP,
    ("extract", "crash"): _FILE,
    ("extract", "hang"): _FILE,
}
_STEP_NUMBER = re.compile(r"[1-9][0-9]*")  # as the step is written in logs: no sign, no leading zero

_stage: str | None = None


class Fault(NamedTuple):
    """One parsed value of LORAPIPE_FAULT; `argument` is None for early, mid and writing."""

    stage: str
    point: str
    argument: str | None = None


def _grammar() -> str:
    special = ", ".join(f"{stage}:{point}:<{what}>" for (stage, point), what in ARGUMENT_POINTS.items())
    return f"expected <stage>:<point> with the point one of {', '.join(POINTS)}, or one of {special}"


def parse(value: str) -> Fault:
    """The fault a LORAPIPE_FAULT value names; raises ValueError, quoting it and the grammar, if it
    names none (an unknown stage or point, a missing or extra argument, a step that is not a positive
    integer)."""
    stage, _, rest = value.partition(":")
    point, _, argument = rest.partition(":")
    kind = ARGUMENT_POINTS.get((stage, point))
    valid = stage in STAGE_SECTIONS and (
        (point in POINTS and not argument and ":" not in rest)
        or (kind == _STEP and bool(_STEP_NUMBER.fullmatch(argument)))
        or (kind == _FILE and bool(argument))
    )
    if not valid:
        raise ValueError(f"{FAULT_ENV}={value!r}: {_grammar()}")
    return Fault(stage, point, argument if kind else None)


def active() -> Fault | None:
    """The fault LORAPIPE_FAULT names now, or None when it is unset or empty; ValueError if malformed."""
    value = os.environ.get(FAULT_ENV)
    return parse(value) if value else None


def armed(stage: str, point: str, argument: object = None) -> bool:
    """Whether LORAPIPE_FAULT names exactly this fault (`argument` compared as text, e.g. a step)."""
    fault = active()
    return fault is not None and fault == Fault(stage, point, None if argument is None else str(argument))


def kill(fault: str) -> None:
    """Say which fault fired, then SIGKILL this process (no cleanup, no exit handlers)."""
    print(f"[fault] {fault}: killing process {os.getpid()} with SIGKILL", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def enter_stage(stage: str) -> None:
    """Mark this process as running `stage` (each stage calls it first), check LORAPIPE_FAULT's
    value (ValueError if malformed), and fire the stage's early point."""
    global _stage
    _stage = stage
    active()
    fault_point("early")


def fault_point(point: str) -> None:
    """SIGKILL this process if LORAPIPE_FAULT names the current stage (`enter_stage`) and `point`,
    one of early, mid, writing."""
    if _stage and armed(_stage, point):
        kill(f"{_stage}:{point}")
