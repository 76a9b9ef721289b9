"""scripts/python.sh, the interpreter of dvc.yaml's stage commands: it finds the Python that has
lorapipe whichever `python` comes first on PATH, in the documented order ($LORAPIPE_PYTHON, the
nearest .venv above the working folder, the Python running dvc, python/python3 on PATH), puts the
project's src/ first on PYTHONPATH, and otherwise fails naming what it tried and the fix.

Run: .venv/bin/pytest tests/test_launcher.py   (tests/integration/test_launch.py runs it under dvc)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

# A stand-in interpreter: answers the launcher's "can you import lorapipe?" with `importable`, and
# otherwise prints who it is, its arguments and the PYTHONPATH it was given.
FAKE = """#!/bin/sh
case "$1" in -c) case "$2" in *find_spec*) exit {code} ;; esac ;; esac
echo "{name} $* PYTHONPATH=$PYTHONPATH"
"""


def _fake(path: Path, name: str, importable: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE.format(name=name, code=0 if importable else 1))
    path.chmod(0o755)
    return path


@pytest.fixture
def project(tmp_path):
    """A project (the launcher, src/lorapipe) and a PATH whose python and python3 lack lorapipe."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "python.sh", root / "scripts" / "python.sh")
    (root / "src" / "lorapipe").mkdir(parents=True)
    bare = tmp_path / "bare"
    _fake(bare / "python", "bare-python", importable=False)
    _fake(bare / "python3", "bare-python3", importable=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LORAPIPE_PYTHON", "VIRTUAL_ENV")}
    env["PATH"] = f"{bare}{os.pathsep}/usr/bin{os.pathsep}/bin"
    return root, env


def _launch(root: Path, env: dict, cwd: Path | None = None, via: list[str] | None = None):
    command = [*(via or []), "sh", str(root / "scripts" / "python.sh"), "-m", "lorapipe.stages.extract"]
    return subprocess.run(command, cwd=cwd or root, env=env, capture_output=True, text=True)


def test_no_python_with_lorapipe_names_each_tried_and_the_fix(project):
    root, env = project
    done = _launch(root, env)
    bare = Path(env["PATH"].split(os.pathsep)[0])
    assert done.returncode == 127 and done.stdout == ""
    assert done.stderr == (
        f"lorapipe: no Python here can import lorapipe (tried: {bare}/python (on PATH), {bare}/python3 (on PATH)); "
        f"run `make install` in {root} (it creates .venv), or activate the environment lorapipe is installed "
        "in, or set LORAPIPE_PYTHON=/path/to/python\n"
    )


def test_the_project_venv_is_found_from_a_queued_experiments_copy(project):
    """A queued experiment runs in <project>/.dvc/tmp/exps/<tmp>, a copy without .venv: the launcher
    walks up to <project>/.venv, and puts the copy's src/ first (the code DVC hashed)."""
    root, env = project
    _fake(root / ".venv" / "bin" / "python", "venv-python", importable=True)
    copy = root / ".dvc" / "tmp" / "exps" / "tmpabc"
    shutil.copytree(root / "scripts", copy / "scripts")
    (copy / "src" / "lorapipe").mkdir(parents=True)
    done = _launch(copy, env, cwd=copy)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"venv-python -m lorapipe.stages.extract PYTHONPATH={copy}/src\n"


def test_a_venv_without_lorapipe_is_passed_over(project):
    root, env = project
    _fake(root / ".venv" / "bin" / "python", "empty-venv", importable=False)
    conda = _fake(root.parent / "conda" / "bin" / "python", "conda-python", importable=True)
    env["PATH"] = f"{conda.parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = "/user/path"
    done = _launch(root, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"conda-python -m lorapipe.stages.extract PYTHONPATH={root}/src:/user/path\n"


def test_python_on_path_with_lorapipe_works_without_a_venv(project):
    """conda, pip --user, an activated venv: the python on PATH has lorapipe and is used."""
    root, env = project
    _fake(root.parent / "bare" / "python", "user-python", importable=True)
    done = _launch(root, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("user-python -m lorapipe.stages.extract ")


def test_lorapipe_python_comes_first_and_must_have_lorapipe(project):
    root, env = project
    _fake(root / ".venv" / "bin" / "python", "venv-python", importable=True)
    env["LORAPIPE_PYTHON"] = str(_fake(root.parent / "chosen" / "python", "chosen-python", importable=True))
    assert _launch(root, env).stdout.startswith("chosen-python -m lorapipe.stages.extract ")
    env["LORAPIPE_PYTHON"] = str(root.parent / "bare" / "python")
    done = _launch(root, env)
    assert done.returncode == 127 and done.stdout == ""
    assert done.stderr == (
        f"lorapipe: LORAPIPE_PYTHON={env['LORAPIPE_PYTHON']} cannot import lorapipe: point it at the python of "
        "the environment lorapipe is installed in (or unset it)\n"
    )


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="the Python running dvc is found through /proc")
def test_the_python_running_dvc_is_used_when_path_has_none(project, tmp_path):
    """`.venv/bin/dvc repro` (or dvc from another environment) without activating it: the launcher
    is a descendant of that dvc process, whose interpreter has lorapipe."""
    root, env = project
    dvc = tmp_path / "bin" / "dvc"  # stands for the console script: `<python> <env>/bin/dvc repro`
    dvc.parent.mkdir()
    dvc.write_text("import subprocess, sys\nsys.exit(subprocess.run(sys.argv[1:]).returncode)\n")
    code = "import sys; print(sys.executable)"
    command = ["sh", str(root / "scripts" / "python.sh"), "-c", code]
    done = subprocess.run([sys.executable, str(dvc), *command], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{sys.executable}\n"
    notdvc = dvc.with_name("other")  # any other Python ancestor (pytest itself) is not asked
    notdvc.write_text(dvc.read_text())
    done = subprocess.run([sys.executable, str(notdvc), *command], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 127
