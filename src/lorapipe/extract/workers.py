"""Convert documents in worker processes, each with a time limit, so that a crash (segfault) or a
hang in a converter costs one document, never the stage.

Each worker is a fresh Python process (no inherited threads or locks, as with `spawn`), started as
``python -c <boot> <fd>`` with a socket to this process, and reused from one document to the next; a
worker that crashed or ran out of time is killed and replaced. Unlike multiprocessing's `spawn` and
`forkserver`, which run the caller's ``__main__`` script again in every worker (and die there when it
starts workers itself: README's API example saved as a script without ``if __name__ ==
"__main__":``), a worker imports only lorapipe and the module of the converter. POSIX only
(``pass_fds``).

Workers die with this process, however it ends: on Linux each asks the kernel for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``), and elsewhere a thread in it watches its parent pid; a SIGTERM or
SIGHUP to this process (dvc, ``timeout``, a closed terminal) kills the live workers before it dies
(`run_jobs`). A worker that waits for its next document also exits when the socket closes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from lorapipe import faults


@dataclass
class Job:
    index: int
    path: Path
    options: dict[str, Any]
    attempt: int = 0
    note: str | None = None  # why an earlier attempt failed
    started: float = field(default=0.0)


def _inject_fault(path: Path, options: dict[str, Any]) -> None:
    """The tests' ``LORAPIPE_FAULT=extract:crash:<name>`` / ``extract:hang:<name>`` (lorapipe.faults);
    only on the first (docling) attempt, never on the pdfplumber fallback."""
    if options.get("pdf_backend") == "pdfplumber":
        return
    if faults.armed("extract", "crash", path.name):
        os.kill(os.getpid(), signal.SIGSEGV)
    elif faults.armed("extract", "hang", path.name):
        time.sleep(3600)


def _serve(connection: Connection, convert: Callable[..., Any]) -> None:
    while True:
        try:
            job = connection.recv()
        except EOFError:
            return
        if job is None:
            return
        path, options = job
        try:
            _inject_fault(path, options)
            connection.send(("ok", convert(path, **options)))
        except Exception as exc:  # noqa: BLE001 - reported per document
            connection.send(("error", error_text(exc)))


def error_text(exc: Exception) -> str:
    """A converter's exception as a document's error: ``Type: message`` (the traceback's last line when
    the message is empty)."""
    detail = str(exc) or traceback.format_exc(limit=1).strip().splitlines()[-1]
    return f"{type(exc).__name__}: {detail}"


def next_attempt(job: Job, reason: str, fallback: Callable[[Job, str], dict[str, Any] | None]) -> Job | None:
    """After `job` crashed or timed out (`reason`): the job of one more attempt with the options that
    ``fallback(job, reason)`` gives, or None, with ``job.note`` set to the reason, when it fails for good.
    A retry with the same options (the same converter again) is a fresh attempt without a note, so its
    answer is cached as a first attempt's; another converter's (a fallback) carries the reason."""
    retry = fallback(job, reason)
    if retry is None:
        job.note = reason  # a crash or time-out, not an answer from the converter
        return None
    return Job(job.index, job.path, retry, job.attempt + 1, None if retry == job.options else reason)


# What a worker runs: first it ties its life to its parent's (argv[2], the parent's pid): PR_SET_PDEATHSIG
# (option 1) on Linux, then the parent pid checked once (it may have died before) and by a watchdog
# thread every second (other systems; a converter that blocks in C code cannot read the socket's EOF).
# Then the parent's sys.path (so it imports the same lorapipe and the converter's module from where the
# parent does), then `_serve` with the converter it is sent (pickled by name).
_BOOT = (
    "import os, signal, sys, threading, time\n"
    "parent = int(sys.argv[2])\n"
    "if sys.platform.startswith('linux'):\n"
    "    import ctypes\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "def watch():\n"
    "    while os.getppid() == parent:\n"
    "        time.sleep(1.0)\n"
    "    os._exit(1)\n"
    "if os.getppid() != parent:\n"
    "    os._exit(1)\n"
    "threading.Thread(target=watch, name='lorapipe-parent-watch', daemon=True).start()\n"
    "from multiprocessing.connection import Connection\n"
    "connection = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = connection.recv()\n"
    "from lorapipe.extract.workers import _serve\n"
    "_serve(connection, connection.recv())\n"
)


class _Worker:
    """One converter process and the connection to it (`_BOOT`)."""

    def __init__(self, convert: Callable[..., Any]):
        ours, theirs = socket.socketpair()
        flags = subprocess._args_from_interpreter_flags()  # -X utf8, -O and the like, as spawn passes them
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, *flags, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        _LIVE.add(self.process)
        self.connection = Connection(ours.detach())
        self.job: Job | None = None
        try:
            self.connection.send(sys.path)
            self.connection.send(convert)
        except OSError:
            pass  # it died at once: its job's recv reports the crash

    def exit_code(self, timeout: float) -> int | None:
        """The worker's exit status (negative: the signal that ended it), None while it still runs."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        if self.exit_code(timeout=10) is None:
            self.process.kill()
            self.process.wait()
        _LIVE.discard(self.process)
        self.connection.close()


_LIVE: set[subprocess.Popen] = set()  # every worker process started and not yet stopped
_DEADLY = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _kill_workers_and_die(signum: int, _frame: object) -> None:
    """A SIGTERM or SIGHUP handler: kill every live worker, then die of the signal as without it."""
    for process in list(_LIVE):
        process.kill()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _kill_workers_on_signals() -> dict[int, Any]:
    """Install `_kill_workers_and_die` for SIGTERM and SIGHUP where they still have their default
    action (a caller's own handler is left alone) and this is the main thread (only it may install
    handlers); returns the handlers replaced, for `signal.signal` to put back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    replaced = {}
    for signum in _DEADLY:
        if signal.getsignal(signum) == signal.SIG_DFL:
            replaced[signum] = signal.signal(signum, _kill_workers_and_die)
    return replaced


def run_jobs(
    jobs: list[Job],
    convert: Callable[..., Any],
    workers: int,
    timeout_s: float,
    fallback: Callable[[Job, str], dict[str, Any] | None],
) -> Iterator[tuple[Job, str, Any]]:
    """Yield ``(job, status, result)`` as documents finish: status ``ok`` with the converter's
    result, or ``error`` with a message. A crash or time-out asks `fallback(job, reason)` for the
    options of one more attempt (None: give up with that reason). While it runs, a SIGTERM or SIGHUP
    that would end this process kills the workers first (`_kill_workers_on_signals`)."""
    faults.active()  # a malformed LORAPIPE_FAULT is refused here, not once per document in the workers
    if not jobs:
        return
    pending = list(reversed(jobs))
    replaced = _kill_workers_on_signals()
    pool = [_Worker(convert) for _ in range(max(1, min(workers, len(jobs))))]
    try:
        while pending or any(w.job for w in pool):
            for worker in pool:
                if worker.job is None and pending:
                    worker.job = pending.pop()
                    worker.job.started = time.monotonic()
                    worker.connection.send((worker.job.path, worker.job.options))
            busy = [w for w in pool if w.job]
            deadline = min(w.job.started for w in busy) + timeout_s
            ready = wait([w.connection for w in busy], timeout=max(0.0, deadline - time.monotonic()))
            for i, worker in enumerate(pool):
                job = worker.job
                if job is None:
                    continue
                reason = None
                if worker.connection in ready:
                    try:
                        status, result = worker.connection.recv()
                    except (EOFError, ConnectionResetError):
                        code = worker.exit_code(timeout=5)
                        name = signal.Signals(-code).name if code and code < 0 else f"exit code {code}"
                        reason = f"the converter crashed ({name})"
                    else:
                        worker.job = None
                        yield job, status, result
                        continue
                elif time.monotonic() - job.started >= timeout_s:
                    reason = f"timed out after {timeout_s:g} s (extract.timeout_s)"
                if reason is None:
                    continue
                worker.stop(kill=True)
                pool[i] = _Worker(convert)
                retry = next_attempt(job, reason, fallback)
                if retry is None:
                    yield job, "error", reason
                else:
                    pending.append(retry)
    finally:
        for worker in pool:
            worker.stop(kill=worker.job is not None)
        for signum, handler in replaced.items():
            signal.signal(signum, handler)
