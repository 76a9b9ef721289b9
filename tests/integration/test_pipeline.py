"""End to end: the whole DVC pipeline on a tiny model in a temporary git repo, then an experiment.

Run: .venv/bin/pytest tests/integration/test_pipeline.py -s   (about ten minutes; `make test-all` runs it)
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import ADAPTER_FILES, BASE_FILES, MERGED_FILES, file_set, git_project, read_json, run_ok
from lorapipe.params import STAGE_SECTIONS

ALL_STAGES = set(STAGE_SECTIONS)
AFTER_TRAIN = {"train", "merge", "export", "evaluate"}
# Drawn per session, so that no file (this one included, copied into the test project) holds it.
FAKE_HF_TOKEN = "hf_" + secrets.token_hex(17)


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


def _skipped(output: str) -> set[str]:
    return set(re.findall(r"Stage '([\w_]+)' didn't change, skipping", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, teacher_server):
    repo, env = git_project(
        tmp_path_factory.mktemp("e2e") / "project", tiny_model_dir, synth=teacher_server.synth_params
    )
    env["HF_TOKEN"] = FAKE_HF_TOKEN  # every run in this module has a Hub token it must never write down
    env["LORAPIPE_CACHE_DIR"] = str(repo.parent / "lorapipe-cache")
    first = run_ok(["dvc", "repro"], repo, env)
    return repo, env, first


def test_repro_runs_every_stage_and_writes_every_out(project):
    repo, _, output = project
    assert _ran(output) == ALL_STAGES
    manifest = (repo / "data/extracted_text/manifest.jsonl").read_text().splitlines()
    assert len(manifest) == len([p for p in (repo / "data/raw/docs").iterdir() if not p.name.startswith(".")])
    assert file_set(repo / "models/base") == BASE_FILES
    for name in ("train.jsonl", "val.jsonl", "prompts.json", "stats.json"):
        assert (repo / "data/dataset" / name).stat().st_size > 0
    stats = read_json(repo / "data/dataset/stats.json")
    assert stats["max_seq_len"] == 128 and set(stats["tasks"]) == {"text", "chat", "qa"}
    synth = read_json(repo / "data/synth/stats.json")
    assert synth["kept"] > 0 and synth["eval"] > 0 and synth["kept"] == synth["train"] + synth["eval"]
    pairs = [json.loads(line) for line in (repo / "data/synth/pairs.jsonl").read_text().splitlines()]
    held_out = {p["question"] for p in pairs if p["split"] == "eval"}
    trained = [json.loads(line) for line in (repo / "data/dataset/train.jsonl").read_text().splitlines()]
    asked = {m["content"] for row in trained for m in row.get("messages", []) if m["role"] == "user"}
    assert held_out and not held_out & asked  # no knowledge question is ever trained
    adapter = {p.name for p in (repo / "models/lora_output").iterdir()}
    assert adapter == ADAPTER_FILES
    assert read_json(repo / "reports/train.json")["steps"] == 4
    assert (repo / "reports/train_loss.tsv").read_text().splitlines()[0] == "step\tloss"
    assert file_set(repo / "models/merged") == MERGED_FILES
    assert sorted(p.name for p in (repo / "models/gguf").iterdir()) == [
        "Modelfile",
        "Modelfile.chat",
        "Modelfile.qa",  # the synth stage's question-answer task
        "export.json",
        "tiny.Q8_0.gguf",
    ]
    prompts = read_json(repo / "data/dataset/prompts.json")
    assert f'SYSTEM """{prompts["text"]}"""' in (repo / "models/gguf/Modelfile").read_text()
    assert f'SYSTEM """{prompts["chat"]}"""' in (repo / "models/gguf/Modelfile.chat").read_text()
    assert f'SYSTEM """{prompts["qa"]}"""' in (repo / "models/gguf/Modelfile.qa").read_text()
    assert read_json(repo / "reports/eval_base.json")["base"]["perplexity"] > 0
    evaluation = read_json(repo / "reports/eval.json")
    assert set(evaluation["gguf"]) == {"Q8_0"} and evaluation["merged"]["perplexity"] > 0
    samples = (repo / "reports/samples.md").read_text()
    assert "| expected | base | fine-tuned | tiny.Q8_0.gguf |" in samples
    assert set(evaluation["answers"]) == {"base", "fine-tuned", "tiny.Q8_0.gguf"}
    assert "json" in evaluation["answers"]["fine-tuned"]["chat"]  # the snips answers are JSON
    assert (repo / "reports/train_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    knowledge = read_json(repo / "reports/knowledge.json")
    systems = {"base", "base + retrieval", "fine-tuned", "fine-tuned + retrieval", "tiny.Q8_0.gguf"}
    for name in ("synth", "user"):  # the held-out pairs, and the project's data/raw/eval_qa.jsonl
        assert knowledge["sets"][name]["questions"] == 2
        assert set(knowledge["sets"][name]["systems"]) == systems
    assert "| base + retrieval |" in (repo / "reports/knowledge.md").read_text()
    # Outputs are git-ignored and tracked by DVC instead, except the metrics and the loss TSV (cache:
    # false), which git keeps so that experiments commit them and `dvc exp show` can read them.
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True, text=True
    ).stdout
    listed = {line[3:] for line in status.splitlines()}
    metrics = {f"reports/{name}" for name in ("train.json", "train_loss.tsv", "eval_base.json", "eval.json")}
    metrics |= {"reports/knowledge.json", "data/dataset/stats.json"}
    assert {p for p in listed if p.startswith(("models/", "data/", "reports/"))} == metrics, listed
    assert "mlflow.db" not in status


def test_second_repro_is_a_no_op(project):
    repo, env, _ = project
    output = run_ok(["dvc", "repro"], repo, env)
    assert _ran(output) == set()
    assert "Data and pipelines are up to date" in output


def _changed_stages(repo: Path, env: dict) -> set[str]:
    """The stages `dvc status` reports as changed (their deps, params or outs)."""
    import json

    return set(json.loads(run_ok(["dvc", "status", "--json"], repo, env)))


def test_editing_a_module_changes_exactly_the_stages_that_execute_it(project):
    """An edit to src/lorapipe/scoring.py changes the stages whose commands execute it (computed from
    the import closure) and no other: DVC's deps follow the code."""
    from helpers import import_closure, stage_entry

    repo, env, _ = project
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    module = repo / "src/lorapipe/scoring.py"
    executing = {
        name
        for name, stage in stages.items()
        if module in import_closure(stage_entry(stage["cmd"], repo), repo / "src")
    }
    assert executing and executing != set(stages)
    original = module.read_text()
    module.write_text(original + "\n# an edit that DVC must notice\n")
    try:
        assert _changed_stages(repo, env) == executing
    finally:
        module.write_text(original)
    assert _changed_stages(repo, env) == set()


def test_experiment_reruns_only_what_depends_on_lora_rank(project):
    repo, env, _ = project
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "baseline results"], repo, env)
    output = run_ok(["dvc", "exp", "run", "-S", "lora.rank=4"], repo, env)
    assert _ran(output) == AFTER_TRAIN
    assert _skipped(output) == ALL_STAGES - AFTER_TRAIN
    assert read_json(repo / "models/lora_output/adapter_config.json")["r"] == 4

    shown = run_ok(["dvc", "exp", "show", "--csv"], repo, env)
    header, *rows = [line.split(",") for line in shown.strip().splitlines()]
    assert "lora.rank" in header and "merged.perplexity" in header
    ranks = {row[header.index("lora.rank")] for row in rows}
    assert {"4", "16"} <= ranks
    # the metrics of the commit and of the experiment, read from git (ignored metrics show as missing)
    shown = {row[header.index("lora.rank")]: row[header.index("merged.perplexity")] for row in rows}
    assert float(shown["4"]) > 1 and float(shown["16"]) > 1, shown

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lorapipe")
    runs = client.search_runs([experiment.experiment_id], "tags.`lorapipe.stage` = 'train'")
    assert sorted(run.data.params["lora.rank"] for run in runs) == ["16", "4"]
    for run in runs:
        assert "eval.merged.perplexity" in run.data.metrics and client.list_artifacts(run.info.run_id, "adapter")
        assert run.data.tags["base_model"] == yaml.safe_load((repo / "params.yaml").read_text())["model"]["name"]
        assert run.data.tags["resolved.device"] == "cpu" and run.data.tags["dataset_hash"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "grad_norm")] == [2, 4]


def test_plots_render_the_loss_curve(project, tmp_path):
    repo, env, _ = project
    run_ok(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo, env)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "train_loss.tsv" in page and "loss" in page


def _mlflow_runs(repo: Path, where: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lorapipe")
    return client.search_runs([experiment.experiment_id], where)


def test_queued_sweep_runs_both_experiments_into_the_same_mlflow_store(project):
    """`dvc exp run --queue` for two values, then `dvc queue start`: queued runs execute in a copy
    under .dvc/tmp/exps and still land in `dvc exp show` and the project's MLflow store (each run
    records every resolved param)."""
    import time

    repo, env, _ = project
    run_ok(["dvc", "exp", "run", "--queue", "-S", "eval.num_generations=2,3"], repo, env)
    run_ok(["dvc", "queue", "start"], repo, env)
    deadline = time.monotonic() + 900
    while True:
        status = run_ok(["dvc", "queue", "status"], repo, env)
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, status
        time.sleep(5)
    run_ok(["dvc", "queue", "stop"], repo, env)
    assert status.count("Success") >= 2 and "Failed" not in status, status

    shown = run_ok(["dvc", "exp", "show", "--csv"], repo, env)
    header, *rows = [line.split(",") for line in shown.strip().splitlines()]
    assert {"2", "3"} <= {row[header.index("eval.num_generations")] for row in rows}
    runs = _mlflow_runs(repo, "")
    assert {"2", "3"} <= {run.data.params.get("eval.num_generations") for run in runs}
    assert not (repo / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()


def test_foreach_stage_from_the_readme_trains_one_adapter_per_task(project):
    repo, env, _ = project
    readme = (repo / "README.md").read_text()
    block = readme.split("<!-- foreach-stage -->")[1].split("<!-- /foreach-stage -->")[0]
    stage = block.split("```yaml\n")[1].split("```")[0]
    (repo / "dvc.yaml").write_text((repo / "dvc.yaml").read_text() + "\n" + stage)
    output = run_ok(["dvc", "repro", "train_task"], repo, env)
    assert _ran(output) == {"train_task@text", "train_task@chat"}
    for task in ("text", "chat"):
        assert (repo / f"models/lora_{task}/adapter_model.safetensors").is_file()
        assert read_json(repo / f"reports/train_{task}.json")["steps"] == 4
    tasks = sorted(run.data.tags["task"] for run in _mlflow_runs(repo, "tags.task != ''"))
    assert tasks == ["chat", "text"]
    run_ok(["git", "checkout", "dvc.yaml"], repo, env)


def test_serve_trains_in_a_worktree_then_switches_to_the_new_model(project):
    """POST /train runs `dvc repro` with new params in a git worktree while the old model keeps
    answering; a second request meanwhile gets 409; on success /status shows the new model."""
    import time

    import requests

    from test_serve import AUTH, TOKEN, running_server

    repo, env, _ = project
    with running_server(repo, TOKEN) as url:
        before = requests.get(f"{url}/status", headers=AUTH).json()
        assert before["model"] == str(repo / "models/gguf/tiny.Q8_0.gguf")
        started = requests.post(f"{url}/train", json={"params": {"lora.rank": 2}}, headers=AUTH)
        assert started.status_code == 202 and started.json()["state"] == "running"
        assert requests.post(f"{url}/train", json={}, headers=AUTH).status_code == 409
        assert requests.post(f"{url}/query", json={"prompt": "hi", "max_tokens": 4}, headers=AUTH).status_code == 200
        deadline = time.monotonic() + 900
        while (status := requests.get(f"{url}/status", headers=AUTH).json())["train"]["state"] == "running":
            assert time.monotonic() < deadline, status
            time.sleep(3)
        train = status["train"]
        assert train["state"] == "succeeded", train
        worktree = Path(train["worktree"])
        assert status["model"] == train["model"] and Path(status["model"]).parent == worktree / "models/gguf"
        assert read_json(worktree / "models/lora_output/adapter_config.json")["r"] == 2
        assert status["adapter_run_id"] == read_json(worktree / "models/lora_output/run.json")["run_id"]
        assert requests.post(f"{url}/query", json={"prompt": "hi", "max_tokens": 4}, headers=AUTH).status_code == 200
    assert read_json(repo / "models/lora_output/adapter_config.json")["r"] != 2  # the served project is untouched
    assert ".lorapipe-cache" not in run_ok(["dvc", "stage", "list", "--all"], repo, env)  # the worktree stays out


def test_the_hub_token_is_written_nowhere(project):
    """After every run of this module (repro, experiments, a queued sweep, serve's worktree run): no
    file the runs wrote holds HF_TOKEN's value, in outputs, reports, dvc.lock, DVC's cache, mlflow.db,
    MLflow's artifacts, the lorapipe cache or git's index. (Git objects are compressed; nothing the
    runs produce is committed by them.)"""
    repo, env, first = project
    token = FAKE_HF_TOKEN.encode()
    assert FAKE_HF_TOKEN not in first
    scanned = []
    for root in (repo, Path(env["LORAPIPE_CACHE_DIR"])):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and ".git/objects" not in path.as_posix():
                scanned.append(path.relative_to(root).as_posix())
                assert token not in path.read_bytes(), f"HF_TOKEN's value found in {path}"
    assert {"mlflow.db", "dvc.lock", "reports/train.json", "models/lora_output/run.json"} <= set(scanned)
    assert any(name.startswith("mlartifacts/") for name in scanned)
    assert any(name.startswith(".dvc/cache/") for name in scanned)


def test_a_file_named_by_a_param_is_a_dep_of_the_stage_that_reads_it(project):
    """dataset.system_prompt naming a file under data/raw/config: editing the file changes the dataset
    stage; a prompt file elsewhere stops the stage before any work, naming the key and the path."""
    repo, env, _ = project
    prompt = repo / "data/raw/config/system.txt"
    prompt.write_text("Answer from the documents, briefly.")
    params_text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(params_text)
    params["dataset"]["system_prompt"] = "data/raw/config/system.txt"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        run_ok(["dvc", "repro", "--single-item", "dataset"], repo, env)
        assert read_json(repo / "data/dataset/prompts.json")["text"] == "Answer from the documents, briefly."
        assert "dataset" not in _changed_stages(repo, env)
        prompt.write_text("Answer from the documents, at length.")
        assert "dataset" in _changed_stages(repo, env)

        params["dataset"]["system_prompt"] = str(repo.parent / "prompt-outside.txt")
        (repo.parent / "prompt-outside.txt").write_text("A prompt DVC cannot see.")
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        refused = subprocess.run(
            ["dvc", "repro", "--single-item", "dataset"], cwd=repo, env=env, capture_output=True, text=True
        )
        assert refused.returncode != 0
        assert "dataset.system_prompt" in refused.stderr + refused.stdout
        assert "prompt-outside.txt" in refused.stderr + refused.stdout
    finally:
        (repo / "params.yaml").write_text(params_text)
        prompt.unlink()
