"""The only module that talks to MLflow: one run per trained adapter, later stages log into it.

Default store: ``sqlite:///<workspace>/mlflow.db`` with artifacts in ``<workspace>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides both. Params are immutable in an MLflow run, so a downstream
stage that reruns with changed params of its own logs into a nested child run instead.

A killed training process (SIGKILL, OOM killer, power loss) cannot close its run. Every run records
who owns it (tags ``lorapipe.host``, ``lorapipe.pid``, ``lorapipe.pid_started``: host name, process
id and the process's start time, which tells a reused pid apart). When training starts, the runs of
the experiment still RUNNING whose owner was on this host and is gone are settled: the newest one
with the same params and inputs (tag ``lorapipe.identity``) is continued, since the resumed
training picks up its checkpoint and belongs to the same curve; the others are closed as KILLED.
A run owned by a live process, by another host, or by no recorded process is never touched.
`log_step` logs a metric only at steps after the last one the run holds, so the steps between the
checkpoint and the kill, which the resumed training repeats, are not logged twice.

The experiment is tagged ``mlflow.experimentKind = custom_model_development`` (what MLflow 3's UI
writes when a user marks an experiment "Machine learning"). MLflow 3.17's UI takes the kind from its
own GenAI / Model training switch instead (URL parameter ``workflowType``, else the browser's last
choice, GenAI by default), so `runs_page_url` gives the address that opens on the runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import hash_file

EXPERIMENT = os.environ.get("LORAPIPE_EXPERIMENT", "lorapipe")
_MAX_PARAM = 500  # MLflow's limit on a param value's length (characters)
# MLflow 3's experiment type ("Machine learning" in the UI's selector; the other is genai_development).
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
HOST_TAG, PID_TAG, STARTED_TAG = "lorapipe.host", "lorapipe.pid", "lorapipe.pid_started"
IDENTITY_TAG, RESUMES_TAG = "lorapipe.identity", "lorapipe.resumes"
# psutil's start times come from clock ticks (10 ms); a reused pid starts seconds to days later.
_START_TOLERANCE_S = 0.05


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.workspace_root() / 'mlflow.db'}"


def _client():
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str) -> str:
    """The experiment's id, made if missing; tagged as a model-training experiment (also one made
    before lorapipe tagged them, unless someone chose another kind)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, KIND_TAG, TRAINING_KIND)
        return experiment.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (paths.workspace_root() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: TRAINING_KIND})


def runs_page_url(ui_url: str, experiment: str | None = None) -> str:
    """The address in the MLflow UI at `ui_url` (``http://127.0.0.1:5000``) that opens
    `experiment` (default lorapipe's) on its runs with their metric charts, in the UI's model
    training view; the experiments list in that view while the experiment does not exist yet."""
    client = _client()
    found = client.get_experiment_by_name(experiment or EXPERIMENT)
    view = "workflowType=machine_learning"
    if found is None:
        return f"{ui_url.rstrip('/')}/#/experiments?{view}"
    _experiment_id(client, found.name)  # tags an experiment made before lorapipe tagged them
    return f"{ui_url.rstrip('/')}/#/experiments/{found.experiment_id}/runs?{view}&compareRunsMode=CHART"


def _written(cwd: str | Path | None) -> list[str]:
    """What the pipeline itself writes in the project at `cwd`, so no sign of an edit: dvc.lock and each
    out, metric and plot its dvc.yaml declares (metrics kept in git, ``cache: false``, are rewritten by
    every rerun: reports/train.json holds the run's seconds)."""
    import yaml

    written = ["dvc.lock"]
    try:
        stages = (yaml.safe_load((Path(cwd or ".") / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return written
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(kind) or []:
                if isinstance(entry, str):
                    written.append(entry)
                elif isinstance(entry, dict):  # {path: {cache: false, ...}}
                    written += [str(key) for key in entry]
    return written


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit checked out in `cwd` (default: here), with ``-dirty`` appended when tracked files differ
    from it (as ``git describe --dirty`` marks it: params.yaml edited, or a ``dvc exp run`` applied; not
    what the pipeline writes itself, `_written`, nor files git does not track), so a record never claims
    a commit the run did not use; "unknown" outside a git repository. Files are those under `cwd`, the
    project root where the stages run."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *map(":!{}".format, _written(cwd))],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if changed else head


def files_hash(*files: str | Path) -> str:
    """16 hex characters of the sha256 of the files' bytes in a row (the dataset hash of a run)."""
    digest = hashlib.sha256()
    for path in files:
        hash_file(path, digest)
    return digest.hexdigest()[:16]


def _as_params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)[:_MAX_PARAM]) for key, value in params.items()]


def owner_tags() -> dict[str, str]:
    """Who owns a run this process starts: ``lorapipe.host`` (host name), ``lorapipe.pid`` and
    ``lorapipe.pid_started`` (the process's start time, seconds since the epoch, as psutil gives it)."""
    import psutil

    me = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(me.pid), STARTED_TAG: repr(me.create_time())}


def owner_gone(tags: dict[str, str]) -> bool:
    """Whether a run's owner (`owner_tags`) was a process on this host that no longer runs: its pid
    is free, a zombie, or taken by a process started at another time. False for another host's run, a run
    without owner tags, and a live owner (or one psutil may not inspect)."""
    import psutil

    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid, started = int(tags[PID_TAG]), float(tags[STARTED_TAG])
    except (KeyError, ValueError):
        return False
    try:
        process = psutil.Process(pid)
        reused = abs(process.create_time() - started) > _START_TOLERANCE_S
        return reused or process.status() == psutil.STATUS_ZOMBIE  # a zombie has exited, not yet reaped
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # AccessDenied and the like: someone's process, alive
        return False


def _identity(params: dict[str, Any], tags: dict[str, str]) -> str:
    """16 hex characters naming a training run's params and inputs (dataset hash, base model, task):
    a run killed and resumed has the same one."""
    text = json.dumps({"params": {k: str(v)[:_MAX_PARAM] for k, v in params.items()}, "tags": tags}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _host_lock() -> Iterator[None]:
    """Serialises settling orphans among this host's processes (two resumed trainings must not both
    continue one run); other hosts never settle this host's runs."""
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"lorapipe-mlflow-orphans-{os.getuid()}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def settle_orphans(client, experiment_id: str, identity: str | None = None) -> str | None:
    """Close the experiment's RUNNING runs whose owner is gone (`owner_gone`) as KILLED, except the
    newest one tagged with `identity`, which is returned for the caller to continue (None if none).
    Call it under `_host_lock`."""
    from mlflow.entities import RunTag

    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=10000)
    orphans = sorted((r for r in running if owner_gone(r.data.tags)), key=lambda r: r.info.start_time, reverse=True)
    heir = next((r for r in orphans if identity and r.data.tags.get(IDENTITY_TAG) == identity), None)
    for run in orphans:
        if run is heir:
            continue
        dead = f"{run.data.tags[HOST_TAG]} pid {run.data.tags[PID_TAG]}"
        print(f"[mlflow] closing run {run.info.run_id} as KILLED: its process ({dead}) is gone", flush=True)
        client.log_batch(run.info.run_id, tags=[RunTag("lorapipe.closed", f"KILLED: {dead} was gone")])
        client.set_terminated(run.info.run_id, "KILLED")
    return heir.info.run_id if heir else None


def _continue_run(client, run_id: str, tags: dict[str, str]) -> None:
    """Make this process the owner of a killed run that it continues."""
    from mlflow.entities import RunTag

    resumes = int(client.get_run(run_id).data.tags.get(RESUMES_TAG, "0")) + 1
    updated = {**tags, RESUMES_TAG: str(resumes)}
    if os.environ.get("DVC_EXP_NAME"):  # the run is named after the DVC experiment that finishes it
        updated["mlflow.runName"] = os.environ["DVC_EXP_NAME"]
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_PARAM]) for k, v in updated.items()])
    print(f"[mlflow] continuing run {run_id}: its training was killed and resumes here", flush=True)


def start_training_run(params: dict[str, Any], tags: dict[str, str] | None = None) -> dict[str, str]:
    """Open the adapter's run with every resolved param; return ``{"run_id", "experiment", "tracking_uri"}``.

    A run of the same params and inputs (`tags`) whose process on this host was killed is continued
    instead of opening a new one, and other killed runs of this host are closed as KILLED (see the
    module docstring)."""
    from mlflow.entities import RunTag

    client = _client()
    experiment_id = _experiment_id(client, EXPERIMENT)
    identity = _identity(params, tags or {})
    all_tags = {
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "lorapipe.stage": "train",
        **(tags or {}),
        **owner_tags(),
        IDENTITY_TAG: identity,
    }
    with _host_lock():
        heir = settle_orphans(client, experiment_id, identity)
        if heir is not None:
            _continue_run(client, heir, all_tags)
            return {"run_id": heir, "experiment": EXPERIMENT, "tracking_uri": tracking_uri()}
        run = client.create_run(experiment_id, tags=all_tags, run_name=os.environ.get("DVC_EXP_NAME") or None)
    client.log_batch(run.info.run_id, params=_as_params(params), tags=[RunTag("mlflow.source.name", "lorapipe train")])
    return {"run_id": run.info.run_id, "experiment": EXPERIMENT, "tracking_uri": tracking_uri()}


@contextmanager
def training_run(params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Open the adapter's run (`start_training_run`) for the block; if the block raises (or is
    killed by an exception such as KeyboardInterrupt), the run is closed as FAILED and the error
    propagates. The block closes a successful run itself (`finish_training_run`)."""
    run = start_training_run(params, tags)
    try:
        yield run
    except BaseException:
        finish_run(run["run_id"], {}, status="FAILED")
        raise


def finish_training_run(
    run_id: str, metrics: dict[str, Any], resolved: dict[str, Any], artifacts: dict[str, str | Path]
) -> None:
    """Close the adapter's run: what params left open (auto, presets) came to as ``resolved.*`` tags,
    the final metrics (numbers only) and the artifacts."""
    set_tags(run_id, {f"resolved.{key}": str(value) for key, value in resolved.items()})
    finish_run(run_id, metrics, artifacts)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    _client().log_batch(run_id, tags=[RunTag(k, str(v)[:_MAX_PARAM]) for k, v in tags.items()])


# The last step each metric of a run holds, per run this process logged into: (run id) -> {key: step}.
_last_steps: dict[str, dict[str, int]] = {}


def _logged_through(client, run_id: str) -> dict[str, int]:
    """The last step of each metric the run holds (read once per run and process, then kept)."""
    if run_id not in _last_steps:
        keys = client.get_run(run_id).data.metrics
        _last_steps[run_id] = {k: max(m.step for m in client.get_metric_history(run_id, k)) for k in keys}
    return _last_steps[run_id]


def log_step(run_id: str, step: int, metrics: dict[str, float]) -> None:
    """Log one optimizer step's metrics. A metric the run already holds at this step or a later one
    is left out: training resumed from a checkpoint repeats the steps its killed run logged after
    the checkpoint, and MLflow would keep both values (one curve, each step once)."""
    import time

    from mlflow.entities import Metric

    client = _client()
    last = _logged_through(client, run_id)
    fresh = {k: v for k, v in metrics.items() if step > last.get(k, -1)}
    if not fresh:
        return
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in fresh.items()])
    last.update(dict.fromkeys(fresh, step))


def finish_run(
    run_id: str, metrics: dict[str, Any], artifacts: dict[str, str | Path] | None = None, status: str = "FINISHED"
) -> None:
    """Log final metrics (numbers only) and artifact folders/files, then close the run."""
    import time

    from mlflow.entities import Metric

    client = _client()
    now = int(time.time() * 1000)
    numbers = [
        Metric(k, float(v), now, 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if numbers:
        client.log_batch(run_id, metrics=numbers)
    for artifact_path, local in (artifacts or {}).items():
        if Path(local).is_dir():
            client.log_artifacts(run_id, str(local), artifact_path)
        elif Path(local).is_file():
            client.log_artifact(run_id, str(local), artifact_path)
    client.set_terminated(run_id, status)


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def log_stage(
    run_info_path: str | Path,
    stage: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    artifacts: dict[str, str | Path] | None = None,
) -> str | None:
    """Add a later stage's params, metrics and artifacts to the adapter's run.

    If the run already holds one of these params with another value (the stage was rerun with new
    params of its own), log into a nested child run instead. Returns the run id used.
    """
    from mlflow.entities import RunTag

    info = Path(run_info_path)
    run_id = read_run_id(info)
    if run_id is None:
        print(f"[{stage}] no MLflow run recorded in {info}; not logging", flush=True)
        return None
    client = _client()
    parent = client.get_run(run_id)
    logged = parent.data.params
    clash = any(key in logged and logged[key] != str(value)[:_MAX_PARAM] for key, value in params.items())
    target = run_id
    if clash:
        tags = {"mlflow.parentRunId": run_id, "lorapipe.stage": stage, **owner_tags()}
        child = client.create_run(parent.info.experiment_id, run_name=f"{stage}", tags=tags)
        target = child.info.run_id
    fresh = {k: v for k, v in params.items() if clash or k not in logged}
    client.log_batch(target, params=_as_params(fresh), tags=[RunTag(f"lorapipe.{stage}", "done")])
    finish_run(target, flatten(metrics), artifacts, status="FINISHED")
    return target


def read_run_id(run_info_path: str | Path) -> str | None:
    path = Path(run_info_path)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("run_id")


if __name__ == "__main__":  # `make ui`: python -m lorapipe.tracking --runs-url http://127.0.0.1:5000
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lorapipe.tracking", description=runs_page_url.__doc__)
    parser.add_argument("--runs-url", metavar="UI_URL", required=True, help="the UI's address")
    print(runs_page_url(parser.parse_args().runs_url))
