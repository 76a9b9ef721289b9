"""The `lorapipe` CLI: params checks and errors.

Run: .venv/bin/pytest tests/test_cli.py
"""

import subprocess
import sys

from helpers import ROOT
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


def test_merge_and_export_flags_reach_the_stage_functions(monkeypatch):
    from pathlib import Path

    import lorapipe.stages.export
    import lorapipe.stages.merge

    calls = {}
    monkeypatch.setattr(lorapipe.stages.merge, "run", lambda p, merged: calls.update(merge=(p.merge.dtype, merged)))
    monkeypatch.setattr(
        lorapipe.stages.export, "run", lambda p, merged, out: calls.update(export=(p.export, merged, out))
    )
    params = str(ROOT / "params.yaml")
    assert main(["merge", "--params", params, "--merged-dir", "m", "--merge.dtype", "float16"]) == 0
    assert (
        main(
            [
                "export",
                "--params",
                params,
                "--merged-dir",
                "m",
                "--output-dir",
                "g",
                "--quant",
                "q8_0",
                "--quant",
                "Q4_K_M",
                "--outtype",
                "f32",
                "--ollama-name",
                "acme",
                "--lora-gguf",
            ]
        )
        == 0
    )
    assert calls["merge"] == ("float16", Path("m"))
    export, merged, out = calls["export"]
    assert (merged, out) == (Path("m"), Path("g"))
    assert export.quants == ["Q8_0", "Q4_K_M"] and export.outtype == "f32"
    assert export.ollama_name == "acme" and export.lora_gguf is True


def test_unknown_quant_flag_lists_the_valid_ones(capsys):
    assert main(["export", "--params", str(ROOT / "params.yaml"), "--quant", "Q9_X"]) == 2
    err = capsys.readouterr().err
    assert "unknown quantization ['Q9_X']" in err and "Q4_K_M" in err
