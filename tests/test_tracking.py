"""Tracking: one MLflow run per adapter; later stages log into it or into a nested child run; a killed
training run is continued (or closed as KILLED) and live runs are left alone; the UI opens on the runs.

Run: .venv/bin/pytest tests/test_tracking.py
"""

import json
import os
import shutil
import socket
import subprocess

import pytest

from lorapipe import tracking


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An MLflow sqlite store with its tables made (seconds of migrations, done once per module)."""
    from mlflow.tracking import MlflowClient

    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def store(tmp_path, monkeypatch, empty_store):
    """A fresh default store (``<workspace>/mlflow.db``) in the test's own workspace."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LORAPIPE_HOME", str(tmp_path))
    shutil.copy(empty_store, tmp_path / "mlflow.db")
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


# --- a killed training run: continued on resume, or closed as KILLED; live runs left alone --------

PARAMS, TAGS = {"lora.rank": 8, "train.lr": 0.001}, {"dataset_hash": "abc", "base_model": "tiny"}


@pytest.fixture
def gone_process():
    """Owner tags of a process of this host that has exited (a killed trainer)."""
    import psutil

    process = subprocess.Popen(["sleep", "60"])
    started = psutil.Process(process.pid).create_time()
    process.kill()
    process.wait()
    return {
        tracking.HOST_TAG: socket.gethostname(),
        tracking.PID_TAG: str(process.pid),
        tracking.STARTED_TAG: repr(started),
    }


@pytest.fixture
def live_process():
    """Owner tags of a live process of this host other than this one (a concurrent trainer)."""
    import psutil

    process = subprocess.Popen(["sleep", "120"])
    yield {
        tracking.HOST_TAG: socket.gethostname(),
        tracking.PID_TAG: str(process.pid),
        tracking.STARTED_TAG: repr(psutil.Process(process.pid).create_time()),
    }
    process.kill()
    process.wait()


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.tracking_uri())


def _retag(run_id: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        _client().set_tag(run_id, key, value)


def _steps(run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in _client().get_metric_history(run_id, key)]


def _new_process(monkeypatch) -> None:
    """What a fresh trainer process knows of the runs: nothing cached."""
    monkeypatch.setattr(tracking, "_last_steps", {})


def test_owner_gone_only_for_this_hosts_exited_processes(store, gone_process, live_process):
    assert tracking.owner_gone(gone_process)
    assert not tracking.owner_gone(tracking.owner_tags())  # this process
    assert not tracking.owner_gone(live_process)
    assert tracking.owner_gone({**live_process, tracking.STARTED_TAG: "1000.0"})  # pid reused by another process
    assert not tracking.owner_gone({**gone_process, tracking.HOST_TAG: "elsewhere.invalid"})
    assert not tracking.owner_gone({})  # a run without owner tags (made elsewhere, or before lorapipe recorded them)
    assert not tracking.owner_gone({**gone_process, tracking.PID_TAG: "not a pid"})


def test_an_exited_process_not_yet_reaped_is_gone(store):
    import psutil

    process = subprocess.Popen(["true"])
    owner = {
        tracking.HOST_TAG: socket.gethostname(),
        tracking.PID_TAG: str(process.pid),
        tracking.STARTED_TAG: repr(psutil.Process(process.pid).create_time()),
    }
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # it has exited; not reaped, a zombie
    try:
        assert tracking.owner_gone(owner)
    finally:
        process.wait()


def test_a_killed_training_run_is_continued_with_each_step_once(store, gone_process, monkeypatch):
    killed = tracking.start_training_run(PARAMS, TAGS)
    for step in (1, 2, 3):  # the killed trainer logged 3 steps; its last checkpoint was step 1
        tracking.log_step(killed["run_id"], step, {"loss": 10.0 - step, "learning_rate": 0.1})
    _retag(killed["run_id"], gone_process)

    _new_process(monkeypatch)
    monkeypatch.setenv("DVC_EXP_NAME", "rapid-moth")  # resumed by `dvc exp run`, a new experiment name
    resumed = tracking.start_training_run(PARAMS, TAGS)
    assert resumed["run_id"] == killed["run_id"]
    for step in (2, 3, 4, 5):  # the resumed trainer repeats steps 2 and 3 from the checkpoint
        tracking.log_step(resumed["run_id"], step, {"loss": 20.0 - step, "learning_rate": 0.2})
    tracking.log_step(resumed["run_id"], 5, {"loss": 99.0, "eval_loss": 1.5})  # eval at a logged step
    tracking.finish_run(resumed["run_id"], {"val_loss": 1.25})

    assert _steps(killed["run_id"]) == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 16.0), (5, 15.0)]
    assert [s for s, _ in _steps(killed["run_id"], "learning_rate")] == [1, 2, 3, 4, 5]
    assert _steps(killed["run_id"], "eval_loss") == [(5, 1.5)]
    run = _client().get_run(killed["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[tracking.RESUMES_TAG] == "1"
    assert run.data.tags[tracking.PID_TAG] == str(os.getpid())
    assert run.info.run_name == "rapid-moth" and run.data.tags["dvc_experiment"] == "rapid-moth"
    assert len(_client().search_runs([run.info.experiment_id])) == 1


def test_killed_runs_of_other_params_are_closed_and_live_ones_left_alone(store, gone_process, live_process):
    def run(params, owner):
        run_id = tracking.start_training_run(params, TAGS)["run_id"]
        _retag(run_id, owner)
        return run_id

    other_params = run({**PARAMS, "lora.rank": 4}, gone_process)  # killed, another run's params
    reused_pid = run({**PARAMS, "lora.rank": 2}, {**live_process, tracking.STARTED_TAG: "1000.0"})
    concurrent = run(PARAMS, live_process)  # same params, live: a queue worker or serve's /train
    elsewhere = run(PARAMS, {**gone_process, tracking.HOST_TAG: "elsewhere.invalid"})  # a shared server
    unowned = _client().create_run(_client().get_experiment_by_name(tracking.EXPERIMENT).experiment_id).info.run_id

    new = tracking.start_training_run(PARAMS, TAGS)["run_id"]

    assert new not in {other_params, reused_pid, concurrent, elsewhere, unowned}
    status = {run_id: _client().get_run(run_id).info.status for run_id in (other_params, reused_pid)}
    assert status == {other_params: "KILLED", reused_pid: "KILLED"}
    for left_alone in (concurrent, elsewhere, unowned, new):
        assert _client().get_run(left_alone).info.status == "RUNNING"
    assert "lorapipe.closed" in _client().get_run(other_params).data.tags


def test_a_run_killed_before_its_first_step_is_continued(store, gone_process, monkeypatch):
    killed = tracking.start_training_run(PARAMS, TAGS)
    _retag(killed["run_id"], gone_process)
    _new_process(monkeypatch)
    resumed = tracking.start_training_run(PARAMS, {**TAGS})
    tracking.log_step(resumed["run_id"], 1, {"loss": 2.0})
    assert resumed["run_id"] == killed["run_id"] and _steps(killed["run_id"]) == [(1, 2.0)]


# --- the UI opens lorapipe's experiment as a model-training experiment, on its runs ---------------


def test_the_experiment_opens_on_its_runs_in_the_model_training_view(store):
    client = _client()
    assert (
        tracking.runs_page_url("http://127.0.0.1:5000")
        == "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )
    run = tracking.start_training_run(PARAMS, TAGS)
    experiment = client.get_experiment_by_name(run["experiment"])
    assert experiment.tags[tracking.KIND_TAG] == "custom_model_development"
    assert tracking.runs_page_url("http://127.0.0.1:5000/") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning&compareRunsMode=CHART"
    )


def test_an_experiment_made_before_is_tagged_unless_its_kind_was_chosen(store):
    client = _client()
    old = client.create_experiment("made-before")
    chosen = client.create_experiment("chosen", tags={tracking.KIND_TAG: "genai_development"})
    tracking.runs_page_url("http://127.0.0.1:5000", "made-before")
    tracking.runs_page_url("http://127.0.0.1:5000", "chosen")
    assert client.get_experiment(old).tags[tracking.KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[tracking.KIND_TAG] == "genai_development"


def test_the_git_commit_of_a_record_says_when_tracked_files_differ_from_it(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"  # no repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "reports").mkdir()
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  t:\n    cmd: x\n    metrics:\n      - reports/train.json:\n          cache: false\n"
    )
    for name in ("params.yaml", "dvc.lock", "reports/train.json"):
        (tmp_path / name).write_text("a: 1\n")
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "dvc.lock").write_text("a: 2\n")  # the pipeline's own record, rewritten as stages run
    (tmp_path / "reports" / "train.json").write_text("a: 2\n")  # a metric kept in git, rewritten by a rerun
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "params.yaml").write_text("a: 2\n")  # what `dvc exp run -S a=2` leaves in the workspace
    assert tracking.git_commit(tmp_path) == f"{head}-dirty"
