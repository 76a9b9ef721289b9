"""The `lorapipe` CLI: params checks and errors.

Run: .venv/bin/pytest tests/test_cli.py
"""

import subprocess
import sys

from conftest import ROOT
from lorapipe.cli import main


def test_check_prints_resolved_params(capsys):
    assert main(["check", "--params", str(ROOT / "params.yaml")]) == 0
    assert "rank: 16" in capsys.readouterr().out


def test_bad_params_fail_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text("lora:\n  rank: 0\ntrain:\n  lr: -1\n")
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank" in err and "train.lr" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no run, no output


def test_bad_override_is_named(capsys):
    assert main(["train", "--params", str(ROOT / "params.yaml"), "--lora.rank", "0"]) == 2
    assert "lora.rank" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "lorapipe.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "evaluate_base" in result.stdout
