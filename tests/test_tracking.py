"""Tracking: one MLflow run per adapter; later stages log into it or into a nested child run.

Run: .venv/bin/pytest tests/test_tracking.py
"""

import json

import pytest

from lorapipe import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LORAPIPE_HOME", str(tmp_path))
    return tmp_path


def test_default_store_is_sqlite_in_the_workspace(store):
    assert tracking.tracking_uri() == f"sqlite:///{store / 'mlflow.db'}"


def test_run_lifecycle_and_child_runs(store, tmp_path):
    from mlflow.tracking import MlflowClient

    run = tracking.start_training_run({"lora.rank": 8, "train.lr": 0.001}, {"dataset_hash": "abc"})
    for step in (1, 2):
        tracking.log_step(run["run_id"], step, {"loss": 3.0 / step})
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tracking.finish_run(run["run_id"], {"val_loss": 1.5, "device": "cpu"}, {"adapter": adapter})
    info = tmp_path / "run.json"
    info.write_text(json.dumps(run))

    assert tracking.log_stage(info, "export", {"export.quants": ["Q8_0"]}, {"export": {"top1": 1.0}}) == run["run_id"]
    child = tracking.log_stage(info, "export", {"export.quants": ["Q4_K_M"]}, {"export": {"top1": 0.9}})
    assert child != run["run_id"]

    client = MlflowClient(tracking.tracking_uri())
    parent = client.get_run(run["run_id"])
    assert parent.data.params["lora.rank"] == "8" and parent.data.tags["dataset_hash"] == "abc"
    assert [m.value for m in client.get_metric_history(run["run_id"], "loss")] == [3.0, 1.5]
    assert parent.data.metrics["export.top1"] == 1.0
    assert client.list_artifacts(run["run_id"], "adapter")[0].path == "adapter/adapter_config.json"
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == run["run_id"]
    assert (store / "mlartifacts").is_dir()


def test_queued_experiment_copies_resolve_to_the_project(tmp_path, monkeypatch):
    from lorapipe.paths import workspace_root

    monkeypatch.delenv("LORAPIPE_HOME", raising=False)
    assert workspace_root(tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc") == tmp_path / "proj"
    assert workspace_root(tmp_path / "proj") == tmp_path / "proj"
