"""Extraction and the synth teacher on Ray (``executor: ray``): byte-equal to the local executor, and
the crash, kill and time-out handling keeps its meaning. A local Ray with 2 CPUs on 127.0.0.1, started
for the run by lorapipe or by the test (`ray start --head`, stopped by the test), never a shared one.

Run: .venv/bin/pytest tests/integration/test_ray.py (about 3 minutes)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from helpers import SAMPLE_DOCS, free_port
from lorapipe import extract_documents

pytestmark = pytest.mark.integration

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head with 2 CPUs on 127.0.0.1 (its own temporary folder), as a team's cluster would be
    started; its address. Stopped at the end: every process of that folder, and their children."""
    temp = Path("/tmp") / f"lpray-{os.getpid()}"  # Ray's socket paths must stay short
    port = free_port()
    command = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1"]
    command += [f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"]
    # a cluster on loopback for one test run: no token authentication (`ray start`'s default since Ray 2.5x),
    # so that drivers need no token (README: a real cluster keeps it, and drivers set RAY_AUTH_MODE=token)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        try:
            yield f"127.0.0.1:{port}"
        finally:
            _stop(temp, port)


def _stop(temp: Path, port: int) -> None:
    """Kill every process of the Ray whose temporary folder is `temp` or whose GCS is at `port` (the Ray
    Client server names only the latter), and their children."""

    def of_this_ray(cmdline: list[str]) -> bool:
        return any(str(temp) in arg or (arg.startswith("--address=") and arg.endswith(f":{port}")) for arg in cmdline)

    ours = [p for p in psutil.process_iter(["cmdline"]) if of_this_ray(p.info["cmdline"] or [])]
    family = {q for p in ours for q in [p, *_children(p)]}
    for process in family:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(family), timeout=10)
    shutil.rmtree(temp, ignore_errors=True)


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _docs(tmp_path: Path, *names: str) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in names:
        shutil.copy(SAMPLE_DOCS / name, docs)
    return docs


def _kill_first_task(killed: list[int], stop: threading.Event, after_s: float = 3.0) -> None:
    """Kill (SIGKILL) the first Ray worker seen converting one document for `after_s` seconds (the one
    that hangs there; the others finish in well under a second), as a lost node would."""
    seen: dict[int, float] = {}
    while not stop.is_set():
        converting = set()
        for process in psutil.process_iter(["cmdline"]):
            if (process.info["cmdline"] or [""])[0].startswith("ray::convert_bytes"):
                converting.add(process.pid)
                if time.monotonic() - seen.setdefault(process.pid, time.monotonic()) >= after_s:
                    process.send_signal(signal.SIGKILL)
                    killed.append(process.pid)
                    return
        seen = {pid: since for pid, since in seen.items() if pid in converting}  # a worker that went idle
        time.sleep(0.2)


def test_a_worker_killed_mid_document_is_retried_on_the_cluster(tmp_path, monkeypatch, cluster):
    """On a running cluster named by RAY_ADDRESS: the worker converting lora-primer.md is killed mid-document
    (it hangs there on its first attempt); the document is converted again (Ray's own retries are off:
    lorapipe retries), the others are not touched, and the result is cached as a first answer."""
    monkeypatch.setenv("RAY_ADDRESS", cluster)
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:hang:lora-primer.md")
    docs = _docs(tmp_path, "lora-primer.md")
    (docs / "notes.md").write_text("A second document, converted at once: nothing stops it.\n")
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_task, args=(killed, stop), daemon=True)
    killer.start()
    try:
        rows = extract_documents(docs, tmp_path / "out", executor="ray", timeout_s=300)
    finally:
        stop.set()
        killer.join(5)
    assert len(killed) == 1
    by_name = {Path(row["source"]).name: row for row in rows}
    assert [by_name[n]["status"] for n in ("lora-primer.md", "notes.md")] == ["ok", "ok"]
    assert by_name["lora-primer.md"]["error"] is None
    monkeypatch.delenv("LORAPIPE_FAULT")
    expected = extract_documents(docs, tmp_path / "local", cache_dir=tmp_path / "fresh")
    assert _outputs(tmp_path / "out") == _outputs(tmp_path / "local")
    assert not any(row["cached"] for row in expected)
    assert all(row["cached"] for row in extract_documents(docs, tmp_path / "again", executor="ray"))


def test_a_crash_and_a_timeout_on_ray_fall_back_to_pdfplumber(tmp_path, monkeypatch, cluster):
    """A converter that segfaults on the cluster, and one that overruns extract.timeout_s (cancelled),
    send the PDF to pdfplumber as the local executor does; neither fallback is cached."""
    docs = _docs(tmp_path, "reproducible-pipelines.pdf")
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:crash:reproducible-pipelines.pdf")
    (row,) = extract_documents(docs, tmp_path / "a", executor="ray", ray_address=cluster, pdf_backend="docling-native")
    assert (row["status"], row["extractor"]) == ("ok", "pdfplumber")
    assert "docling-native failed (the converter crashed (Ray" in row["error"]
    monkeypatch.setenv("LORAPIPE_FAULT", "extract:hang:reproducible-pipelines.pdf")
    started = time.monotonic()
    (row,) = extract_documents(
        docs, tmp_path / "b", executor="ray", ray_address=cluster, pdf_backend="docling-native", timeout_s=15
    )
    assert (row["status"], row["extractor"]) == ("ok", "pdfplumber")
    assert "timed out after 15 s (extract.timeout_s)" in row["error"]
    assert time.monotonic() - started < 120  # the hung task was cancelled, not waited for
    assert not any("ray::convert_bytes" in " ".join(p.cmdline()) for p in psutil.process_iter() if _alive(p))
    monkeypatch.delenv("LORAPIPE_FAULT")
    (row,) = extract_documents(docs, tmp_path / "c", executor="ray", ray_address=cluster, pdf_backend="docling-native")
    assert (row["extractor"], row["cached"], row["error"]) == ("docling-native", False, None)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="module")
def primer_text(tmp_path_factory) -> Path:
    """The sample corpus's LoRA primer, extracted (the synth stage's input)."""
    out = tmp_path_factory.mktemp("primer") / "text"
    docs = out.parent / "docs"
    docs.mkdir()
    shutil.copy(SAMPLE_DOCS / "lora-primer.md", docs)
    extract_documents(docs, out, cache_dir=out.parent / "cache")
    return out


SYNTH = {"questions_per_passage": 1, "passage_tokens": 256, "overlap_tokens": 16, "max_new_tokens": 64}


def test_a_killed_teacher_actor_loses_nothing_answered(tmp_path, primer_text, bundled_tokenizer_dir, cluster):
    """The teacher's only actor killed mid-run (its node lost): the run stops with TeacherUnavailable
    saying how to resume, every reply that arrived is cached, and the rerun asks only the rest."""
    from lorapipe import synthesize
    from lorapipe.models import bundled_gguf
    from lorapipe.teacher import TeacherUnavailable

    cache = tmp_path / "cache"
    killed: list[int] = []
    leftovers = set(Path(tempfile.gettempdir()).glob("lorapipe-teacher-*"))

    def kill_after_two_replies():
        while len(list(cache.glob("*.json"))) < 2:
            time.sleep(0.1)
        for process in psutil.process_iter(["cmdline"]):
            if (process.info["cmdline"] or [""])[0].startswith("ray::_TeacherActor"):
                process.send_signal(signal.SIGKILL)
                killed.append(process.pid)

    killer = threading.Thread(target=kill_after_two_replies, daemon=True)
    killer.start()
    gguf = str(bundled_gguf("smollm2-135m-instruct"))
    args = {"teacher": gguf, "executor": "ray", "ray_address": cluster, "cache_dir": cache, **SYNTH}
    with pytest.raises(TeacherUnavailable, match=r"after \d+ of \d+ passages.*every Ray actor.*rerun"):
        synthesize(primer_text, bundled_tokenizer_dir, tmp_path / "out", **args)
    killer.join(5)
    assert len(killed) == 1 and not (tmp_path / "out").exists()
    answered = len(list(cache.glob("*.json")))
    assert answered >= 2
    stats = synthesize(primer_text, bundled_tokenizer_dir, tmp_path / "out", **args)
    assert stats["cached"] == answered and stats["asked"] == stats["passages"] - answered > 0
    # the killed actor could not remove its copy of the model (a lost node takes its disk with it)
    for folder in set(Path(tempfile.gettempdir()).glob("lorapipe-teacher-*")) - leftovers:
        shutil.rmtree(folder, ignore_errors=True)


# Tests on a local Ray that lorapipe starts for the run come last: a local ray.init leaves Ray's token
# authentication configured in this process, which the test cluster (started without it) would refuse.


def test_ray_extraction_is_byte_equal_to_local(tmp_path):
    """A local Ray started for the run (no address, no RAY_ADDRESS) converts the sample corpus; the
    texts, manifest and log are the local executor's, byte for byte; Ray is stopped after."""
    import ray

    local = extract_documents([SAMPLE_DOCS], tmp_path / "local", workers=2, cache_dir=tmp_path / "c1")
    on_ray = extract_documents([SAMPLE_DOCS], tmp_path / "ray", executor="ray", workers=2, cache_dir=tmp_path / "c2")
    assert not any(row["cached"] for row in on_ray)
    assert {row["format"] for row in on_ray} >= {"pdf", "epub", "markdown", "html", "docx"}
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
    assert [row["extractor"] for row in on_ray] == [row["extractor"] for row in local]
    assert not ray.is_initialized()
    # what Ray converted is cached under the same keys: the local executor reads it back
    again = extract_documents([SAMPLE_DOCS], tmp_path / "again", cache_dir=tmp_path / "c2")
    assert all(row["cached"] for row in again)
    assert _outputs(tmp_path / "again") == _outputs(tmp_path / "local")


def test_the_synth_teacher_on_ray_writes_the_local_teachers_pairs(tmp_path, primer_text, bundled_tokenizer_dir):
    """The bundled GGUF as one Ray actor (its bytes through the object store): the same passages,
    pairs and stats as the llama.cpp teacher in this process, byte for byte."""
    from lorapipe import synthesize
    from lorapipe.models import bundled_gguf

    gguf = str(bundled_gguf("smollm2-135m-instruct"))
    for name, executor in (("local", "local"), ("ray", "ray")):
        synthesize(
            primer_text, bundled_tokenizer_dir, tmp_path / name, teacher=gguf, executor=executor,
            cache_dir=tmp_path / f"cache-{name}", **SYNTH,
        )  # fmt: skip
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "local")
    # The teacher wrote pairs (whether the 135M's few pass the filters depends on the CPU's kernels: on an
    # avx512_bf16 host both backends keep none of 2, byte-equal still); the comparison above is not empty.
    assert json.loads((tmp_path / "ray" / "stats.json").read_text())["pairs_generated"] > 0
    assert (tmp_path / "ray" / "passages.jsonl").stat().st_size > 0
