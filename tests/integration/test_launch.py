"""`dvc repro` and a queued experiment with a PATH whose first `python` lacks lorapipe (dvc run as
`.venv/bin/dvc` without activating .venv), on a documents-only project: every stage finds the Python
that has lorapipe through scripts/python.sh, and no DVC command warns about an empty output.

Run: .venv/bin/pytest tests/integration/test_launch.py   (a few minutes; `make test-all` runs it)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from helpers import git_project, run_ok

VENV_BIN = Path(sys.executable).parent
FAKE_PYTHON = "#!/bin/sh\necho 'fake python: no lorapipe here' >&2\nexit 1\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    """Documents only (two of the sample corpus), committed; PATH: a fake python and python3 first,
    then a folder holding only `dvc` (DVC's queue worker starts `dvc` from PATH), then the system's."""
    tmp = tmp_path_factory.mktemp("launch")
    repo, env = git_project(tmp / "project", tiny_model_dir, labeled=False)
    for doc in (repo / "data" / "raw" / "docs").iterdir():
        if doc.name not in ("lora-primer.md", "evaluating.html"):  # the two cheapest readers
            doc.unlink()
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "two documents"], repo, env)
    fake, only_dvc = tmp / "fake-bin", tmp / "dvc-bin"
    for folder in (fake, only_dvc):
        folder.mkdir()
    for name in ("python", "python3"):
        (fake / name).write_text(FAKE_PYTHON)
        (fake / name).chmod(0o755)
    (only_dvc / "dvc").symlink_to(VENV_BIN / "dvc")
    for key in ("PYTHONPATH", "VIRTUAL_ENV", "LORAPIPE_PYTHON", "LORAPIPE_HOME"):
        env.pop(key, None)
    env["PATH"] = os.pathsep.join([str(fake), str(only_dvc), "/usr/local/bin", "/usr/bin", "/bin"])
    env["LORAPIPE_CACHE_DIR"] = str(tmp / "lorapipe-cache")
    return repo, env


def _no_dvc_warning(output: str) -> None:
    assert "WARNING" not in output and "is empty" not in output, output[-3000:]


def test_repro_runs_with_the_python_that_has_lorapipe(project):
    """`.venv/bin/dvc repro evaluate_base` (base, extract, synth, dataset, evaluate_base), no .venv in the
    project: the launcher uses the Python running dvc; documents only (and no teacher) leave no output empty."""
    repo, env = project
    output = run_ok([str(VENV_BIN / "dvc"), "repro", "evaluate_base"], repo, env)
    ran = set(re.findall(r"Running stage '(\w+)'", output))
    assert ran == {"base", "extract", "synth", "dataset", "evaluate_base"}
    assert "fake python" not in output
    _no_dvc_warning(output)
    assert json.loads((repo / "reports" / "answers_base.json").read_text())["answers"] == []  # no chat rows
    assert json.loads((repo / "data" / "dataset" / "stats.json").read_text())["tasks"].keys() == {"text"}
    for command in (["status"], ["exp", "show", "--csv"], ["metrics", "show"], ["repro", "evaluate_base"]):
        _no_dvc_warning(run_ok([str(VENV_BIN / "dvc"), *command], repo, env))


def test_a_queued_experiment_runs_in_its_copy(project):
    """`dvc exp run --queue` + `dvc queue start`: the experiment runs in <project>/.dvc/tmp/exps/<tmp>,
    a copy without .venv; the launcher walks up to the project's .venv (a link to this venv)."""
    repo, env = project
    dvc = str(VENV_BIN / "dvc")
    (repo / ".venv").symlink_to(VENV_BIN.parent)
    run_ok(["git", "add", "-A"], repo, env)  # the lock file of the first test; .venv is git-ignored
    run_ok(["git", "commit", "-q", "-m", "reproduced"], repo, env)
    run_ok([dvc, "exp", "run", "--queue", "-S", "dataset.val_fraction=0.3", "dataset"], repo, env)
    run_ok([dvc, "queue", "start"], repo, env)
    deadline = time.monotonic() + 600
    while re.search(r"\b(Queued|Running)\b", status := run_ok([dvc, "queue", "status"], repo, env)):
        assert time.monotonic() < deadline, status
        time.sleep(3)
    run_ok([dvc, "queue", "stop"], repo, env)
    if "Success" not in status:
        name = status.splitlines()[1].split()[0]
        pytest.fail(status + run_ok([dvc, "queue", "logs", name], repo, env)[-4000:])
    shown = run_ok([dvc, "exp", "show", "--csv"], repo, env)
    _no_dvc_warning(shown)
    header, *rows = [line.split(",") for line in shown.strip().splitlines()]
    assert "0.3" in {row[header.index("dataset.val_fraction")] for row in rows}, shown
