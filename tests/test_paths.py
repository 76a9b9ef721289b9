"""Every path the stages use, and where caches and the MLflow store live (a queued DVC experiment
runs in a copy under .dvc/tmp/exps and must find the project's).

Run: .venv/bin/pytest tests/test_paths.py
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths


def test_a_queued_experiment_resolves_to_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("LORAPIPE_HOME", raising=False)
    project = tmp_path / "project"
    queued = project / ".dvc" / "tmp" / "exps" / "tmpabc" / "workspace"
    queued.mkdir(parents=True)
    assert paths.workspace_root(queued) == project.resolve()
    assert paths.workspace_root(project) == project.resolve()
    monkeypatch.setenv("LORAPIPE_HOME", str(tmp_path / "elsewhere"))
    assert paths.workspace_root(queued) == (tmp_path / "elsewhere").resolve()


def test_the_cache_folder_can_be_moved(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / "cache"))
    assert paths.cache_dir() == tmp_path / "cache"


def test_train_outputs_of_all_tasks_and_of_one():
    assert paths.train_outputs() == (paths.ADAPTER, paths.TRAIN_METRICS, paths.TRAIN_LOSS, paths.TRAIN_PLOT)
    adapter, metrics, loss, chart = paths.train_outputs("chat")
    assert adapter == Path("models/lora_chat") and metrics == Path("reports/train_chat.json")
    assert loss == Path("reports/train_loss_chat.tsv") and chart == Path("reports/train_loss_chat.png")


def test_files_that_params_name_live_in_a_folder_of_the_raw_inputs():
    assert paths.RAW_CONFIG.parent == paths.RAW and paths.RAW_DOCS.parent == paths.RAW
