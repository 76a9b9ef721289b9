"""Convert documents as Ray tasks (``extract.executor: ray``): the same answers as `workers.run_jobs`,
from a cluster instead of this machine's worker processes.

Each document is one task that receives the file's bytes (no shared filesystem), writes them to a
temporary file of the same name on its node, converts it with the same converter and returns the
result, with the reader fingerprint of its format on that node. The driver keeps as many tasks in
flight as the cluster has CPUs free when the run starts (one CPU each), so a task starts when it is
submitted; its time limit counts from then. Ray's retries are off (``max_retries=0``): a task whose worker dies (a
converter's segfault, a killed worker, a lost node) or that overruns ``extract.timeout_s`` is cancelled
and handed to the caller's fallback, as a crashed or hung worker process is locally.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from lorapipe import faults
from lorapipe.cluster import FingerprintMismatch, ray_session, scratch_folder
from lorapipe.extract.workers import Job, _inject_fault, error_text, next_attempt


def convert_bytes(
    data: bytes,
    name: str,
    source: str,
    options: dict[str, Any],
    convert: Callable[..., Any],
    fingerprint: Callable[[str], str],
    attempt: int = 0,
) -> dict:
    """What one Ray task runs: `data` (a document's bytes) written as ``<temporary folder>/<name>``,
    converted by ``convert(path, **options)``; the tests' LORAPIPE_FAULT crash or hang only on the
    first `attempt`. Returns ``{"status": "ok" | "error", "result": the converter's result or the
    error message (the temporary path replaced by `source`), "fingerprint": ``fingerprint(kind)``
    (the reader fingerprint of ``options["kind"]``) on this node, "node": its IP address}``."""
    import ray

    answer = {"fingerprint": fingerprint(options["kind"]), "node": ray.util.get_node_ip_address()}
    folder = scratch_folder("extract")
    path = folder / name
    try:
        path.write_bytes(data)
        if attempt == 0:
            _inject_fault(path, options)
        return {**answer, "status": "ok", "result": convert(path, **options)}
    except Exception as exc:  # noqa: BLE001 - reported per document, as workers._serve does
        return {**answer, "status": "error", "result": error_text(exc).replace(str(path), source)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _checked(answer: dict, expected: Callable[[str], str], kind: str) -> tuple[str, Any]:
    """``(status, result)`` of a task's answer; FingerprintMismatch when its node's reader fingerprint
    for `kind` is not this machine's (its text would be cached under a key that does not describe it)."""
    if answer["fingerprint"] != expected(kind):
        raise FingerprintMismatch(
            f"the Ray node {answer['node']} reads {kind} files with other code or converter versions than this "
            f"machine (reader fingerprint {answer['fingerprint']} there, {expected(kind)} here): install the same "
            "lorapipe commit and pinned versions on every node (pip install -c requirements.lock -e '.[ray]')"
        )
    return answer["status"], answer["result"]


def _lost(exc: Exception) -> str:
    """Why a task returned no answer, in the words of a local worker's crash."""
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"the converter crashed (Ray {name}: {first})" if first else f"the converter crashed (Ray {name})"


def run_jobs_ray(
    jobs: list[Job],
    convert: Callable[..., Any],
    timeout_s: float,
    fallback: Callable[[Job, str], dict[str, Any] | None],
    *,
    fingerprint: Callable[[str], str],
    address: str | None,
    num_cpus: int,
) -> Iterator[tuple[Job, str, Any]]:
    """Yield ``(job, status, result)`` as documents finish, as `workers.run_jobs` does, with each
    conversion a Ray task on the cluster `address` names (`lorapipe.cluster.ray_session`: the param,
    RAY_ADDRESS, else a local Ray of `num_cpus` CPUs). `fingerprint(kind)`: the reader fingerprint of a
    format (`lorapipe.extract.reader_fingerprint`), computed by each task on its node and compared with
    this machine's. A task that crashes or overruns `timeout_s` seconds is cancelled and
    ``fallback(job, reason)`` gives the options of one more attempt (`workers.next_attempt`; None: the
    job fails with that reason). Leaving early (an error, a kill) cancels the tasks in flight.

    Raises lorapipe.cluster.ClusterError (no Ray, no cluster) before any work and FingerprintMismatch
    when a node's converters differ from this machine's."""
    faults.active()  # a malformed LORAPIPE_FAULT is refused here, as in run_jobs
    if not jobs:
        return
    with ray_session(address, num_cpus=num_cpus, param="extract.ray_address") as ray:
        from ray.exceptions import GetTimeoutError, RayError

        task = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(convert_bytes)
        # the CPUs free now (not the cluster's total): a task submitted beyond them would wait for one, and
        # its time limit, which counts from submission, would run out while it waits
        capacity = max(1, int(ray.available_resources().get("CPU", 1)))
        pending = list(reversed(jobs))
        running: dict[Any, Job] = {}
        try:
            while pending or running:
                while pending and len(running) < capacity:
                    job = pending.pop()
                    job.started = time.monotonic()
                    try:
                        data = job.path.read_bytes()
                    except OSError as exc:  # unreadable here: as a local worker reports its reader's error
                        yield job, "error", f"{type(exc).__name__}: {exc}"
                        continue
                    ref = task.remote(
                        data, job.path.name, str(job.path), job.options, convert, fingerprint, job.attempt
                    )
                    running[ref] = job
                if not running:
                    continue
                deadline = min(job.started for job in running.values()) + timeout_s
                ready, _ = ray.wait(list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                failed: list[tuple[Job, str]] = []
                for ref in ready:
                    job = running.pop(ref)
                    try:
                        answer = ray.get(ref)
                    except (RayError, GetTimeoutError) as exc:
                        failed.append((job, _lost(exc)))
                    else:
                        yield (job, *_checked(answer, fingerprint, job.options["kind"]))
                for ref, job in list(running.items()):
                    if time.monotonic() - job.started >= timeout_s:
                        ray.cancel(ref, force=True)
                        del running[ref]
                        failed.append((job, f"timed out after {timeout_s:g} s (extract.timeout_s)"))
                for job, reason in failed:
                    retry = next_attempt(job, reason, fallback)
                    if retry is None:
                        yield job, "error", reason
                    else:
                        pending.append(retry)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
