"""The only module that talks to MLflow: one run per trained adapter, later stages log into it.

Default store: ``sqlite:///<workspace>/mlflow.db`` with artifacts in ``<workspace>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides both. Params are immutable in an MLflow run, so a downstream
stage that reruns with changed params of its own logs into a nested child run instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import hash_file

EXPERIMENT = os.environ.get("LORAPIPE_EXPERIMENT", "lorapipe")
_MAX_PARAM = 500  # MLflow's limit on a param value's length (characters)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.workspace_root() / 'mlflow.db'}"


def _client():
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        location = (paths.workspace_root() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def files_hash(*files: str | Path) -> str:
    """16 hex characters of the sha256 of the files' bytes in a row (the dataset hash of a run)."""
    digest = hashlib.sha256()
    for path in files:
        hash_file(path, digest)
    return digest.hexdigest()[:16]


def _as_params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)[:_MAX_PARAM]) for key, value in params.items()]


def start_training_run(params: dict[str, Any], tags: dict[str, str] | None = None) -> dict[str, str]:
    """Open the adapter's run with every resolved param; return ``{"run_id", "experiment", "tracking_uri"}``."""
    from mlflow.entities import RunTag

    client = _client()
    experiment_id = _experiment_id(client, EXPERIMENT)
    all_tags = {
        "git_commit": git_commit(),
        "dvc_experiment": os.environ.get("DVC_EXP_NAME", ""),
        "lorapipe.stage": "train",
        **(tags or {}),
    }
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


def log_step(run_id: str, step: int, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


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
        child = client.create_run(
            parent.info.experiment_id, run_name=f"{stage}", tags={"mlflow.parentRunId": run_id, "lorapipe.stage": stage}
        )
        target = child.info.run_id
    fresh = {k: v for k, v in params.items() if clash or k not in logged}
    client.log_batch(target, params=_as_params(fresh), tags=[RunTag(f"lorapipe.{stage}", "done")])
    finish_run(target, flatten(metrics), artifacts, status="FINISHED")
    return target


def read_run_id(run_info_path: str | Path) -> str | None:
    path = Path(run_info_path)
    if not path.is_file():
        return None
    import json

    return json.loads(path.read_text()).get("run_id")
