"""Converter workers: fresh processes that never run the caller's ``__main__`` script again, so
README's API example works as a plain script; errors and crashes still cost one document only.

Run: .venv/bin/pytest tests/test_workers.py
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _worker_of(parent: int, deadline_s: float = 60.0) -> int:
    """The pid of `parent`'s converter worker, once it hangs in its document (else once it exists)."""
    import psutil

    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        children = psutil.Process(parent).children()
        if children:
            worker = children[0]
            try:  # the fault's sleep; where wchan is unreadable, the worker's existence is enough
                wchan = Path(f"/proc/{worker.pid}/wchan").read_text()
            except OSError:
                wchan = "nanosleep"
            if "sleep" in wchan or time.monotonic() - start > 20:
                return worker.pid
        time.sleep(0.2)
    raise AssertionError(f"no worker started under pid {parent}")


def _gone(pid: int, deadline_s: float = 30.0) -> bool:
    """Whether `pid` ends within `deadline_s` (a zombie that nobody reaps counts as ended)."""
    import psutil

    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's; elsewhere a 1 s watchdog")
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_hung_worker_dies_with_its_killed_parent(tmp_path, signum):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("A document whose conversion hangs for an hour.", encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "LORAPIPE_CACHE_DIR": str(tmp_path / "cache"),
        "LORAPIPE_FAULT": "extract:hang:a.txt",
    }
    script = "from lorapipe import extract_documents; extract_documents(['in'], 'out', workers=1, timeout_s=600)"
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        worker = _worker_of(parent.pid)
        parent.send_signal(signum)
        assert parent.wait(timeout=30) == -signum  # it dies of the signal, as without lorapipe's handler
        assert _gone(worker), f"worker {worker} outlived its parent killed by {signal.Signals(signum).name}"
    finally:
        parent.kill()
        parent.wait()


def test_workers_started_after_their_parent_died_exit_at_once(tmp_path):
    """The race PR_SET_PDEATHSIG leaves open: a parent that died before its worker asked."""
    from lorapipe.extract.workers import _BOOT

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    result = subprocess.run([sys.executable, "-c", _BOOT, "0", str(dead.pid)], timeout=60, check=False)
    assert result.returncode == 1


def test_the_signal_handlers_are_put_back_after_the_jobs(tmp_path):
    (tmp_path / "a.txt").write_text("a text", encoding="utf-8")
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    list(run_jobs([Job(0, tmp_path / "a.txt", {"suffix": "!"})], shout, 1, 60, _no_fallback))
    assert {signum: signal.getsignal(signum) for signum in before} == before
