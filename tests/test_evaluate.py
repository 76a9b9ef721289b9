"""Evaluate stages: perplexity of base, merged and GGUF on the same tokens; reports.

Run: .venv/bin/pytest tests/test_evaluate.py
"""

import json

from conftest import read_json
from lorapipe import evaluate_base, evaluate_models, export_gguf


def test_base_merged_and_gguf_perplexity(tmp_path, dataset_dir, tiny_model_dir):
    export_gguf(tiny_model_dir, dataset_dir / "prompts.json", tmp_path / "gguf", quants=["F32"], outtype="f32",
                name="tiny")
    base = evaluate_base(dataset_dir / "val.jsonl", tiny_model_dir, tmp_path / "eval_base.json", max_samples=4)
    assert read_json(tmp_path / "eval_base.json") == base
    metrics = evaluate_models(dataset_dir / "val.jsonl", dataset_dir / "prompts.json", tiny_model_dir,
                              tmp_path / "gguf", tmp_path / "eval_base.json", tmp_path / "eval.json",
                              tmp_path / "samples.md", max_samples=4, num_generations=1, max_new_tokens=4)
    # The "merged" model here is the base itself, so every perplexity must agree.
    assert metrics["merged"]["perplexity"] == base["base"]["perplexity"]
    gguf = metrics["gguf"]["F32"]
    assert abs(gguf["vs_merged"]) < 1e-3
    assert gguf["tokens"] == base["base"]["tokens"] > 0
    assert base["base"]["perplexity"] > 1000  # a random model over a 49k vocabulary is near-uniform
    samples = (tmp_path / "samples.md").read_text()
    assert "**Prompt:**" in samples and "You answer from the documents." in samples
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
