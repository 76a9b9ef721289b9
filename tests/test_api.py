"""The public Python API: one stage run through `from lorapipe import …`, as a user would.

Run: .venv/bin/pytest tests/test_api.py
"""

import json

import lorapipe
from helpers import SAMPLE_DOCS


def test_public_api_names():
    assert set(lorapipe.__all__) >= {"extract_documents", "build_dataset", "train_lora", "merge_adapter",
                                     "export_gguf", "evaluate_base", "evaluate_models", "prepare_base_model",
                                     "load_params"}
    for name in lorapipe.__all__:
        assert getattr(lorapipe, name).__doc__, f"{name} has no docstring"


def test_extract_then_dataset_through_the_api(tmp_path, tiny_model_dir):
    from lorapipe import build_dataset, extract_documents

    manifest = extract_documents([SAMPLE_DOCS], tmp_path / "text", pdf_backend="pdfplumber")
    assert all(row["status"] == "ok" for row in manifest)
    stats = build_dataset(tmp_path / "text", tiny_model_dir, tmp_path / "dataset", max_seq_len=256,
                          overlap_tokens=16, val_fraction=0.2, seed=3)
    assert stats["rows"]["train"] > stats["rows"]["val"] > 0
    rows = [json.loads(line) for name in ("train.jsonl", "val.jsonl")
            for line in (tmp_path / "dataset" / name).read_text().splitlines()]
    assert {row["source"] for row in rows} == {row["source"] for row in manifest}
