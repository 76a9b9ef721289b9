"""Converter workers: fresh processes that never run the caller's ``__main__`` script again, so
README's API example works as a plain script; errors and crashes still cost one document only.

Run: .venv/bin/pytest tests/test_workers.py
"""

import os
import subprocess
import sys
from pathlib import Path

from lorapipe.extract.workers import Job, run_jobs

SRC = Path(__file__).parents[1] / "src"


def shout(path: Path, suffix: str) -> str:
    """A converter defined in a test module: the workers import it from the caller's sys.path."""
    text = path.read_text(encoding="utf-8")
    if "fail" in text:
        raise ValueError(f"cannot read {path.name}")
    return text.upper() + suffix


def _no_fallback(job, reason):
    return None


def test_jobs_run_in_workers_with_the_callers_converter(tmp_path):
    names = ["a", "b", "fail", "c"]
    for name in names:
        (tmp_path / f"{name}.txt").write_text(f"{name} text", encoding="utf-8")
    jobs = [Job(i, tmp_path / f"{name}.txt", {"suffix": "!"}) for i, name in enumerate(names)]
    results = {job.index: (status, result) for job, status, result in run_jobs(jobs, shout, 2, 60, _no_fallback)}
    assert results == {
        0: ("ok", "A TEXT!"),
        1: ("ok", "B TEXT!"),
        2: ("error", "ValueError: cannot read fail.txt"),
        3: ("ok", "C TEXT!"),
    }


def test_no_jobs_start_no_worker():
    assert list(run_jobs([], shout, 4, 60, _no_fallback)) == []


def test_readme_api_example_runs_as_a_plain_script(tmp_path):
    """README's lines saved as a script, no ``if __name__ == "__main__":``: the script runs once, and
    the workers (two here) extract every document."""
    (tmp_path / "papers").mkdir()
    (tmp_path / "books").mkdir()
    for folder, name in (("papers", "a.md"), ("papers", "b.txt"), ("books", "c.md")):
        (tmp_path / folder / name).write_text(f"{name}: low-rank adaptation trains two thin matrices.\n")
    (tmp_path / "example.py").write_text(
        'print("script body ran", flush=True)\n'
        "from lorapipe import extract_documents\n\n"
        'extract_documents(["papers/", "books/"], "data/extracted_text", workers=2)\n'
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "LORAPIPE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("script body ran") == 1
    out = tmp_path / "data" / "extracted_text"
    assert sorted(p.name for p in out.glob("*.txt")) == ["books__c.md.txt", "papers__a.md.txt", "papers__b.txt.txt"]
    assert (out / "papers__b.txt.txt").read_text() == "b.txt: low-rank adaptation trains two thin matrices.\n"
