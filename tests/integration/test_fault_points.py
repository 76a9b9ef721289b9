"""Kill anywhere: each stage's fault points (lorapipe.faults) fired under `dvc repro` on the tiny
model, then `dvc repro` again. Nothing may be half-written after the kill, DVC's cache stays sound,
and the rerun ends with the outputs of an uninterrupted run.

Run: .venv/bin/pytest tests/integration/test_fault_points.py   (every point; `make test-all`)
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import git_project, run_ok
from lorapipe.faults import FAULT_ENV, POINTS
from lorapipe.params import STAGE_SECTIONS

STAGES = list(STAGE_SECTIONS)
# Outputs that must come back byte for byte; the adapter within 1e-5 (a resumed run's arithmetic
# differs in the last bits). The others carry run facts (MLflow run id, timings) and must be whole.
BYTE_EQUAL = {"extract", "synth", "dataset"}
# `mid` (a stage's own half-way point: the resume each stage promises) is checked stage by stage. The
# two points every stage shares, `early` (before anything is read) and `writing` (while an output is
# written, through lorapipe's atomic writers), are checked for all stages at once: one kill per stage,
# then one rerun of the whole pipeline (test_stages_killed_before_any_work_change_nothing,
# test_stages_killed_while_writing_leave_whole_outputs_then_rerun_to_the_same).
assert set(POINTS) == {"early", "mid", "writing"}, "a new fault point needs its test here"


def _outs(repo: Path, stage: str) -> list[Path]:
    """The paths dvc.yaml declares as this stage's outs and metrics (plots included)."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    entries = [*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]
    return [repo / (entry if isinstance(entry, str) else next(iter(entry))) for entry in entries]


def _files(path: Path) -> dict[str, str]:
    """sha256 of each file under `path` (or of `path` itself), by path relative to it."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def _snapshot(repo: Path) -> dict[str, dict[str, dict[str, str]]]:
    return {stage: {str(out.relative_to(repo)): _files(out) for out in _outs(repo, stage)} for stage in STAGES}


def _temporaries(repo: Path) -> list[Path]:
    """Leftovers of lorapipe's atomic writers outside .git and .dvc."""
    return [p for p in repo.rglob(".*.tmp-*") if not {".git", ".dvc"} & set(p.relative_to(repo).parts)]


def _check_dvc_cache(repo: Path) -> None:
    """Every object in DVC's cache holds the content its name says (md5)."""
    objects = [p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file() and len(p.parent.name) == 2]
    assert objects, "DVC's cache is empty"
    for path in objects:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        assert digest == path.parent.name + path.name.removesuffix(".dir"), f"corrupt cache object {path}"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir, teacher_server):
    """The pipeline run once without faults (the reference); save_steps 1 so a killed training run
    has checkpoints to resume from; the synth stage asks the fake teacher."""
    work = tmp_path_factory.mktemp("faults")
    repo, env = git_project(
        work / "project",
        tiny_model_dir,
        train={"save_steps": 1, "log_every": 1},
        synth=teacher_server.synth_params,
    )
    env["LORAPIPE_CACHE_DIR"] = str(work / "cache")
    run_ok(["dvc", "repro"], repo, env)
    return repo, env, _snapshot(repo)


def _kill(repo: Path, env: dict, stage: str, point: str) -> str:
    """`dvc repro --force --single-item stage` with the fault armed; asserts it died there; its output."""
    killed = subprocess.run(
        ["dvc", "repro", "--force", "--single-item", stage],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**env, FAULT_ENV: f"{stage}:{point}"},
    )
    output = killed.stdout + killed.stderr
    assert killed.returncode != 0 and f"[fault] {stage}:{point}: killing process" in output, output[-3000:]
    return output


def _assert_whole(repo: Path, env: dict, stage: str, reference: dict) -> None:
    """After a kill: each of the stage's outs is absent, or whole (the files an uninterrupted run writes;
    the same bytes for BYTE_EQUAL); `dvc status` works; DVC's cache is sound."""
    for name, files in reference[stage].items():
        out = repo / name
        if out.exists():
            now = _files(out)
            assert now.keys() == files.keys(), f"{name} is incomplete after the kill at {stage}"
            if stage in BYTE_EQUAL:
                assert now == files, f"{name} differs after the kill at {stage}"
    status = subprocess.run(["dvc", "status"], cwd=repo, capture_output=True, text=True, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    _check_dvc_cache(repo)


def _assert_back_to_reference(repo: Path, env: dict, reference: dict) -> None:
    """After the rerun: DVC up to date, its cache sound, no temporaries, every stage's outputs the same
    files as the uninterrupted run's (byte for byte for BYTE_EQUAL)."""
    assert "Data and pipelines are up to date" in run_ok(["dvc", "status"], repo, env)
    _check_dvc_cache(repo)
    assert _temporaries(repo) == []
    after = _snapshot(repo)
    for each in STAGES:
        assert {k: v.keys() for k, v in after[each].items()} == {k: v.keys() for k, v in reference[each].items()}
    for each in BYTE_EQUAL:
        assert after[each] == reference[each], f"{each}'s outputs differ from the uninterrupted run's"


def _assert_adapter_resumed(repo: Path, reference_adapter: dict, rerun: str) -> None:
    """The rerun's adapter equals the uninterrupted run's within 1e-5 (a resumed run's arithmetic differs
    in the last bits), and the rerun resumed from the checkpoints the killed run left."""
    from safetensors.torch import load_file

    adapter = load_file(repo / "models/lora_output/adapter_model.safetensors")
    assert adapter.keys() == reference_adapter.keys()
    assert max(float((adapter[k] - reference_adapter[k]).abs().max()) for k in adapter) <= 1e-5
    assert "resuming from" in rerun


def _assert_unchanged(repo: Path, env: dict, stage: str, reference: dict) -> None:
    """After a kill at `early`: the stage's outputs are absent (DVC removes them before running a stage)
    or exactly as they were; `dvc status` works; DVC's cache is sound."""
    for name, files in reference[stage].items():
        out = repo / name
        assert not out.exists() or _files(out) == files, f"{stage}:early changed {name}"
    status = subprocess.run(["dvc", "status"], cwd=repo, capture_output=True, text=True, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    _check_dvc_cache(repo)


def test_stages_killed_at_every_point_leave_whole_outputs_then_rerun_to_the_same(pipeline):
    """Every stage, downstream first (so each still finds its inputs), killed at each of its points in
    turn: `early` (before any work: its outputs absent or exactly as they were), `mid` (part of the
    work done; extraction's and the teacher's caches are emptied first, so those kills land mid-way
    through converting and asking) and `writing` (all work done, an output half-written): after each,
    every output is absent or whole, `dvc status` works, DVC's cache is sound. Then every stage runs
    again (`dvc repro --force`: DVC's run cache would only check the outputs out, so lorapipe's own
    rerun is what is checked, and it removes the temporaries a killed writer left) and resumes what the
    killed runs left (the extraction and teacher caches, training's checkpoints): the pipeline ends
    with the outputs of the uninterrupted run, no temporaries, the adapter within 1e-5 of the
    uninterrupted run's. One test for the 27 kills and one rerun (CI time, issue 17)."""
    from safetensors.torch import load_file

    repo, env, reference = pipeline
    reference_adapter = load_file(repo / "models/lora_output/adapter_model.safetensors")
    for stage in ("extract", "synth"):  # nothing cached: the mid kills land mid-way through the work
        subprocess.run(["rm", "-rf", f"{env['LORAPIPE_CACHE_DIR']}/{stage}"], check=True)
    for stage in reversed(STAGES):
        _kill(repo, env, stage, "early")
        _assert_unchanged(repo, env, stage, reference)
        for point in ("mid", "writing"):
            _kill(repo, env, stage, point)
            _assert_whole(repo, env, stage, reference)
    rerun = run_ok(["dvc", "repro", "--force"], repo, env)
    _assert_back_to_reference(repo, env, reference)
    _assert_adapter_resumed(repo, reference_adapter, rerun)
