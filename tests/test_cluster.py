"""Ray settings that need no cluster: addresses, and a cluster that is not there (named before any work).

Run: .venv/bin/pytest tests/test_cluster.py (the clusters themselves: tests/integration/test_ray.py)
"""

import http.server
import os
import re
import subprocess
import sys
import threading

import pytest

from helpers import SAMPLE_DOCS, free_port
from lorapipe import extract_documents
from lorapipe.cluster import ClusterError, _host_port, check_reachable, cluster_address, scratch_folder
from lorapipe.params import SynthParams
from lorapipe.teacher import RayLlamaTeacher, TeacherError, _ray_cause, make_teacher


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("head", ("head", 6379)),
        ("ray://head:10001", ("head", 10001)),
        ("ray://head", ("head", 10001)),
        ("auto", None),
    ],
)
def test_addresses_are_read_as_ray_reads_them(address, expected):
    assert _host_port(address) == expected


@pytest.mark.parametrize("address", ["head:port", "head:0", "http://head:6379", "head:6379/path"])
def test_a_malformed_address_is_refused_naming_where_it_came_from(address, monkeypatch):
    with pytest.raises(ClusterError, match=rf"^RAY_ADDRESS '{re.escape(address)}' is not host:port"):
        check_reachable(address, "RAY_ADDRESS")


def test_a_server_that_is_not_ray_is_named_at_once(tmp_path):
    """A web server on the port (ray.init would wait on it for ever) is refused before any work."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ClusterError, match=rf"what answers at {address} \(from extract.ray_address\) is not a Ray"):
            extract_documents([SAMPLE_DOCS], tmp_path / "out", executor="ray", ray_address=address)
    finally:
        server.shutdown()
        server.server_close()


def test_copies_left_by_killed_tasks_are_removed_by_the_next(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"lorapipe-extract-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "secret.pdf").write_bytes(b"%PDF")
    mine = tmp_path / f"lorapipe-extract-{os.getpid()}-efgh"
    mine.mkdir()
    fresh = scratch_folder("extract")
    assert not stale.exists() and mine.exists() and fresh.is_dir() and fresh.parent == tmp_path


def test_what_an_actor_raised_is_read_from_rays_text():
    class ActorDied(Exception):
        pass

    text = (
        "The actor died because of an error raised in its creation task, \x1b[36mray::_TeacherActor.__init__()"
        "\x1b[39m (pid=1)\n  File x\nlorapipe.teacher.TeacherError: llama.cpp cannot load the teacher a.gguf (bad)"
    )
    assert _ray_cause(ActorDied(text)) == "TeacherError: llama.cpp cannot load the teacher a.gguf (bad)"


def test_the_param_wins_over_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert cluster_address("10.0.0.5:6379", "extract.ray_address") == ("10.0.0.5:6379", "extract.ray_address")
    assert cluster_address(None, "extract.ray_address") == ("10.0.0.9:6379", "RAY_ADDRESS")
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(None, "extract.ray_address") == (None, "local")


def test_an_address_pointing_nowhere_is_named_before_any_work(tmp_path, monkeypatch):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ClusterError, match=rf"no Ray cluster answers at {address} \(from extract.ray_address"):
        extract_documents([SAMPLE_DOCS], tmp_path / "out", executor="ray", ray_address=address)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(ClusterError, match=rf"at {address} \(from RAY_ADDRESS.*unset it to start a local Ray"):
        extract_documents([SAMPLE_DOCS], tmp_path / "out", executor="ray")


def test_the_extract_stage_says_so_and_exits(tmp_path, monkeypatch):
    from lorapipe.params import Params
    from lorapipe.stages.extract import run

    p = Params.model_validate({"extract": {"executor": "ray", "ray_address": f"127.0.0.1:{free_port()}"}})
    with pytest.raises(SystemExit, match=r"^\[extract\] error: no Ray cluster answers at 127\.0\.0\.1:"):
        run(p, [SAMPLE_DOCS], tmp_path / "out")


def test_the_synth_teacher_on_ray_names_the_address(tmp_path):
    gguf = tmp_path / "teacher.gguf"
    gguf.write_bytes(b"GGUF not really")
    address = f"127.0.0.1:{free_port()}"
    teacher = make_teacher(
        SynthParams(teacher=str(gguf), executor="ray", ray_address=address), model_name="x", base_dir=tmp_path
    )
    assert isinstance(teacher, RayLlamaTeacher)
    with pytest.raises(TeacherError, match=rf"no Ray cluster answers at {address} \(from synth.ray_address"):
        teacher.check()
    teacher.close()


def test_without_ray_installed_the_message_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ClusterError, match=r"extract.executor is ray, but Ray is not installed: pip install"):
        extract_documents([SAMPLE_DOCS], tmp_path / "out", executor="ray")


def test_an_unknown_executor_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"executor must be 'local' or 'ray' \(extract.executor\), not 'Ray'"):
        extract_documents([SAMPLE_DOCS], tmp_path / "out", executor="Ray")
