"""End to end: the README's structured-task recipe, labeled rows and a schema with no documents at all.

Run: .venv/bin/pytest tests/integration/test_labeled_only.py -s   (a few minutes; `make test-all` runs it)
"""

from __future__ import annotations

import shutil

import yaml

from helpers import FIXTURES, git_project, read_json, run_ok


def test_labeled_rows_alone_run_every_stage(tmp_path, tiny_model_dir):
    repo, env = git_project(tmp_path / "project", tiny_model_dir)
    env["LORAPIPE_CACHE_DIR"] = str(tmp_path / "lorapipe-cache")
    # the recipe's first step: the sample corpus out (its folder stays), its knowledge questions emptied
    recipe = "git rm -rq --ignore-unmatch -- data/raw/docs ':!data/raw/docs/.gitkeep' && : > data/raw/eval_qa.jsonl"
    run_ok(["sh", "-c", recipe], repo, env)
    run_ok(["sh", "-c", recipe], repo, env)  # twice (or after the documents were deleted by hand): still there
    assert [p.name for p in (repo / "data/raw/docs").iterdir()] == [".gitkeep"]
    shutil.copy(FIXTURES / "labeled" / "snips_schema.json", repo / "data/raw/config/task.schema.json")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"].update(json_schema="data/raw/config/task.schema.json", max_new_tokens="auto")
    params["dataset"].update(max_seq_len=256)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    output = run_ok(["dvc", "repro"], repo, env)

    assert "[extract] no documents in" in output
    assert (repo / "data/extracted_text/manifest.jsonl").read_text() == ""
    stats = read_json(repo / "data/dataset/stats.json")
    assert set(stats["tasks"]) == {"chat"} and stats["rows"]["train"] + stats["rows"]["val"] == 42
    evaluation = read_json(repo / "reports/eval.json")
    served = evaluation["served"]["chat"]  # the GGUF as `lorapipe serve` answers, under the schema
    assert set(served) >= {"slot_f1", "intent_accuracy", "json_parse_rate", "schema_valid_rate", "exact_rate"}
    assert 0 <= served["json_parse_rate"] <= 1
    # nothing changed, nothing reruns: the empty manifest and the empty question file are stable inputs
    again = run_ok(["dvc", "repro"], repo, env)
    assert "Running stage" not in again
