"""Every path the stages use, and where caches and the MLflow store live (a queued DVC experiment
runs in a copy under .dvc/tmp/exps and must find the project's).

Run: .venv/bin/pytest tests/test_paths.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ROOT

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


def test_a_missing_pipeline_path_names_the_command_that_writes_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = {
        (
            paths.BASE_MODEL,
            "--base-dir",
        ): "models/base not found: run `dvc repro base` (or `lorapipe base`) or pass --base-dir",  # noqa: E501
        (paths.EXTRACTED, None): "data/extracted_text not found: run `dvc repro extract` (or `lorapipe extract`)",
        (
            paths.VAL_ROWS,
            "--dataset-dir",
        ): "data/dataset/val.jsonl not found: run `dvc repro dataset` (or `lorapipe dataset`) or pass --dataset-dir",
        (
            paths.ADAPTER / "adapter_config.json",
            None,
        ): "models/lora_output/adapter_config.json not found: run `dvc repro train` (or `lorapipe train`)",
        (paths.MERGED, None): "models/merged not found: run `dvc repro merge` (or `lorapipe merge`)",
        (paths.GGUF, "--gguf"): "models/gguf not found: run `dvc repro export` (or `lorapipe export`) or pass --gguf",
        (
            paths.BASE_ANSWERS,
            None,
        ): "reports/answers_base.json not found: run `dvc repro evaluate_base` (or `lorapipe evaluate_base`)",  # noqa: E501
        (
            tmp_path / "models" / "base",
            None,
        ): f"{tmp_path / 'models' / 'base'} not found: run `dvc repro base` (or `lorapipe base`)",  # noqa: E501
        (paths.RAW_DOCS, "--input-dir"): "data/raw/docs not found: put your documents there or pass --input-dir",
        (Path("mine"), "--base-dir"): "mine not found (--base-dir)",
        (Path("mine"), None): "mine not found",
    }
    for (path, flag), message in cases.items():
        assert str(paths.missing(path, flag)) == message, path
        with pytest.raises(FileNotFoundError) as caught:
            paths.require(path, flag)
        assert str(caught.value) == message
    made = "mine/manifest.jsonl not found (--text-dir: the extract stage's output, `lorapipe extract`)"
    assert str(paths.missing(Path("mine/manifest.jsonl"), "--text-dir", "extract")) == made


def test_every_path_a_stage_reads_names_the_stage_that_writes_it():
    """dvc.yaml's outs, each with the stage that declares it (what `missing` names)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {}
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                declared[Path(out if isinstance(out, str) else next(iter(out)))] = name
    for path, stage in paths.MADE_BY.items():
        owners = {owner for out, owner in declared.items() if out == path or path in out.parents}
        owners |= {owner for out, owner in declared.items() if out in path.parents}
        assert owners == {stage}, (path, owners, stage)
