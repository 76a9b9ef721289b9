"""artifacts: which GGUF is the model (export.json), provenance files and the lineage of an export;
`lorapipe ask` and `lorapipe chat` take the model from it.

Run: .venv/bin/pytest tests/test_artifacts.py
"""

import json
from pathlib import Path

import pytest

from lorapipe import artifacts
from lorapipe.artifacts import export_ggufs, lineage, model_gguf
from lorapipe.io import read_provenance


def fake_export(folder: Path, quants: list[str], lora: bool = False, model: bool = True) -> Path:
    """An export folder as export_gguf leaves it (empty files), for quants in this order."""
    folder.mkdir(parents=True)
    files = {quant: f"tiny.{quant}.gguf" for quant in quants}
    if lora:
        files["lora"] = "tiny.lora.gguf"
    for name in files.values():
        (folder / name).write_bytes(b"")
    (folder / "export.json").write_text(json.dumps({**({"model": files[quants[0]]} if model else {}), "files": files}))
    return folder


@pytest.mark.parametrize("quants", [["Q8_0", "Q4_K_M"], ["Q8_0", "F16"]])
def test_the_model_is_the_first_quantization_not_the_first_by_name(tmp_path, quants):
    gguf = fake_export(tmp_path / "gguf", quants, lora=True)
    assert model_gguf(gguf) == gguf / "tiny.Q8_0.gguf"
    assert sorted(gguf.glob("*.gguf"))[0].name != "tiny.Q8_0.gguf"  # what ask, serve and evaluate took before
    assert export_ggufs(gguf) == {quant: gguf / f"tiny.{quant}.gguf" for quant in quants}  # no lora, in order
    assert list(export_ggufs(gguf)) == quants


def test_a_missing_export_names_the_folder_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gguf has no export.json.*`dvc repro export`"):
        model_gguf(tmp_path / "gguf")
    old = fake_export(tmp_path / "old", ["Q4_K_M"], model=False)
    with pytest.raises(FileNotFoundError, match=r"names no model.*dvc repro export"):
        model_gguf(old)
    gone = fake_export(tmp_path / "gone", ["Q4_K_M"])
    (gone / "tiny.Q4_K_M.gguf").unlink()
    with pytest.raises(FileNotFoundError, match=r"tiny.Q4_K_M.gguf, the model export.json names, is missing"):
        export_ggufs(gone)


def test_provenance_and_lineage(tmp_path, monkeypatch):
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    adapter.mkdir()
    base.mkdir()
    (adapter / "run.json").write_text(json.dumps({"run_id": "run42"}))
    (adapter / "lorapipe_params.yaml").write_text("lora.rank: 4\ndataset_hash: d5e7\n")
    (base / "lorapipe_params.yaml").write_text("model.name: tiny-llama\nmodel.revision: null\n")
    monkeypatch.setattr(artifacts, "git_commit", lambda: "0123abc")
    assert read_provenance(adapter) == {"lora.rank": 4, "dataset_hash": "d5e7"}
    assert lineage(adapter, base) == {
        "lorapipe.version": artifacts.package_version(),
        "lorapipe.git_commit": "0123abc",
        "lorapipe.mlflow_run_id": "run42",
        "lorapipe.dataset_hash": "d5e7",
        "lorapipe.base_model": "tiny-llama",
        "lorapipe.base_revision": "",
    }
    assert artifacts.package_version() not in ("", "unknown")  # the installed package's version
    (base / "lorapipe_params.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"base/lorapipe_params.yaml is missing"):
        lineage(adapter, base)


def test_ask_and_chat_take_the_model_export_json_names(tmp_path, monkeypatch):
    """`lorapipe ask` and `lorapipe chat` without --gguf: the model, not the first file by name."""
    from lorapipe import cli, generation, serve

    fake_export(tmp_path / "models" / "gguf", ["Q8_0", "F16"])
    (tmp_path / "data" / "dataset").mkdir(parents=True)
    (tmp_path / "data" / "dataset" / "prompts.json").write_text(json.dumps({"text": "Be brief."}))
    monkeypatch.chdir(tmp_path)
    asked, opened = [], []
    monkeypatch.setattr(
        generation, "answer_all", lambda gguf, requests, max_tokens, schema: asked.append(gguf) or ["hi"]
    )

    class Opened:
        def __init__(self, path):
            opened.append(Path(path))

        def close(self):
            pass

    monkeypatch.setattr(serve, "Backend", Opened)
    monkeypatch.setattr("builtins.input", lambda prompt: "")
    assert cli.main(["ask", "What is LoRA?"]) == 0
    assert cli.main(["chat"]) == 0
    assert asked == opened == [Path("models/gguf/tiny.Q8_0.gguf")]
    (tmp_path / "models" / "gguf" / "export.json").unlink()
    assert cli.main(["ask", "What is LoRA?"]) == 2  # a clear error, not a traceback
