"""A training run killed (SIGKILL) under `dvc repro` and resumed by the next `dvc repro`: MLflow keeps
one run for it, continued by the resumed training, FINISHED, with each step's loss logged once.

Run: .venv/bin/pytest tests/integration/test_killed_training_run.py
"""

from __future__ import annotations

import subprocess

from helpers import git_project, run_ok
from lorapipe.faults import FAULT_ENV


def test_a_killed_and_resumed_training_is_one_mlflow_run(tmp_path, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    train = {"max_steps": 4, "save_steps": 1, "save_total_limit": 3, "log_every": 1, "eval_steps": 0}
    repo, env = git_project(tmp_path / "project", tiny_model_dir, train=train)
    env["LORAPIPE_CACHE_DIR"] = str(tmp_path / "cache")
    killed = subprocess.run(
        ["dvc", "repro", "train"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**env, FAULT_ENV: "train:kill-after-checkpoint:3"},
    )
    output = killed.stdout + killed.stderr
    assert killed.returncode != 0 and "[fault] train:kill-after-checkpoint:3: killing" in output, output[-3000:]

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("lorapipe").experiment_id])
    assert run.info.status == "RUNNING"  # nobody could close it: its process is gone
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    # The kill cut step 3's checkpoint short (no trainer_state.json): training resumes from step 2 and
    # repeats step 3, which the killed run logged already.
    (newest,) = (tmp_path / "cache" / "train").glob("*/checkpoint-3")
    (newest / "trainer_state.json").unlink()

    rerun = run_ok(["dvc", "repro", "train"], repo, env)

    assert "resuming from" in rerun and "checkpoint-2" in rerun, rerun[-3000:]
    assert f"[mlflow] continuing run {run.info.run_id}" in rerun, rerun[-3000:]
    (after,) = client.search_runs([run.info.experiment_id])
    assert after.info.run_id == run.info.run_id and after.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert after.data.tags["lorapipe.resumes"] == "1"
    assert "val_loss" in after.data.metrics
