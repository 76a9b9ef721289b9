"""bench/gpu_check.py, the one-call GPU check, as far as this CPU allows: every configuration built on
the meta device and checked against plan's counts (--dry-run), bitsandbytes' wheel trimmed to one CUDA
library, the rows' refit, and (integration) the whole run on the CPU in small shapes (--smoke).

Run: .venv/bin/pytest tests/test_gpu_check.py
"""

import importlib.util
import json
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_builds_every_configuration_on_the_meta_device(capsys):
    gpu_check = _module()
    gpu_check.main(["--dry-run"])  # exits (SystemExit) when a built model's counts differ from plan's
    out = capsys.readouterr().out
    for config in gpu_check.CONFIGS:
        assert f"| {config.name} | {config.model} |" in out
    assert "| 8B QLoRA 4×512 | meta-llama/Llama-3.1-8B-Instruct | 8.03 B | 41.9 M |" in out
    assert "would run on CUDA" in out


def test_the_bitsandbytes_wheel_keeps_one_cuda_library_and_a_true_record(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.0.0-py3-none-manylinux_2_24_x86_64.whl"
    names = [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda128.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_rocm64.so",
    ]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, b"x" * 1000)
        z.writestr("bitsandbytes-0.0.0.dist-info/RECORD", "".join(f"{n},sha256=abc,1000\n" for n in names))
    _module().trim_bitsandbytes(wheel, "130")
    with zipfile.ZipFile(wheel) as z:
        kept = sorted(n for n in z.namelist() if not n.endswith("RECORD"))
        record = z.read("bitsandbytes-0.0.0.dist-info/RECORD").decode()
    assert kept == [names[0], names[1], names[3]]
    assert [line.split(",")[0] for line in record.splitlines()] == kept
    with pytest.raises(SystemExit, match=r"no CUDA 13.0 library: --cuda one of \['130'\]"):
        _module().trim_bitsandbytes(wheel, "13.0")  # a wrong version would leave no CUDA library at all


def test_plan_meets_the_recorded_h200_rows(capsys):
    """plan's CUDA coefficients against what the H200 measured (bench/gpu_check.jsonl): peak memory
    within 3% and speed within 10% for every plain configuration lorapipe trained there."""
    gpu_check = _module()
    rows = [json.loads(line) for line in (ROOT / "bench" / "gpu_check.jsonl").read_text().splitlines()]
    assert {r["device"]["name"] for r in rows} == {"NVIDIA H200"}
    by_name = {c.name: c for c in gpu_check.CONFIGS}
    plain = [r for r in rows if r["system"] == "lorapipe" and not by_name[r["config"]].compile]
    assert len(plain) == 4
    for r in plain:
        now = gpu_check.plan_row(by_name[r["config"]], r["device"]["plan_peak_tflops"] * 1e12)
        assert now["plan_gib"] == pytest.approx(r["device_peak_gib"], rel=0.03), r["config"]
        assert now["plan_tokens_per_s"] == pytest.approx(r["tokens_per_s"], rel=0.10), r["config"]
    gpu_check.fit(ROOT / "bench" / "gpu_check.jsonl")
    out = capsys.readouterr().out
    assert "| 8B QLoRA 4×512 | 10.44 |" in out and "pays back after" in out


def test_fit_skips_what_it_cannot_read_and_says_when_compiling_does_not_pay(tmp_path, capsys):
    gpu_check = _module()
    recorded = [json.loads(line) for line in (ROOT / "bench" / "gpu_check.jsonl").read_text().splitlines()]
    plain = next(r for r in recorded if r["config"] == "1B LoRA bf16 4×512" and r["system"] == "lorapipe")
    compiled = {**plain, "config": "1B LoRA bf16 4×512 compiled", "step_s": plain["step_s"] + 0.01}
    cpu = {**plain, "device_peak_gib": None, "max_allocated_gib": None}
    lines = [json.dumps(r) for r in (plain, compiled, cpu, {**plain, "config": "renamed"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + '\n{"config": "cut sh')
    gpu_check.fit(tmp_path / "rows.jsonl")
    out = capsys.readouterr().out
    assert "2 lorapipe rows left out" in out and "compiling does not pay" in out


def test_only_must_match_a_configuration():
    gpu_check = _module()
    assert [c.name for c in gpu_check.select(gpu_check.CONFIGS, "8B, 1B LoRA bf16 1")] == [
        "8B QLoRA 4×512",
        "8B QLoRA 1×2048",
        "1B LoRA bf16 1×2048",
    ]
    with pytest.raises(SystemExit, match="matches no configuration"):
        gpu_check.select(gpu_check.CONFIGS, "nothing")


@pytest.mark.integration  # about 40 s: two processes each load a 135M model and train two steps
def test_smoke_runs_the_whole_check_on_the_cpu(tmp_path):
    """The run's whole path (checkpoint written, a child process per system, rows, table) on the CPU,
    for the 16-bit configuration (the 4-bit one trains on the CPU in tests/test_qlora_cpu.py)."""
    out = tmp_path / "rows.jsonl"
    stale = {"run": "earlier", "config": "135M LoRA 2×32", "system": "lorapipe", "tokens_per_s": 999999}
    out.write_text(json.dumps(stale) + "\n")  # an earlier run's row: neither counted nor shown as this run's
    command = [sys.executable, str(SCRIPT), "--smoke", "--only", "135M LoRA", "--steps", "1", "--warmup", "1"]
    done = subprocess.run(
        [*command, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert len({r["run"] for r in rows}) == 1 and "999,999" not in done.stdout
    assert sorted((r["config"], r["system"]) for r in rows) == [("135M LoRA 2×32", s) for s in ("baseline", "lorapipe")]
    assert all("error" not in r and r["tokens_per_s"] > 0 and r["last_loss"] > 0 for r in rows), rows
    assert all(r["plan_tokens_per_s"] > 0 for r in rows if r["system"] == "lorapipe")
    assert rows[0]["versions"]["transformers"] and "| 135M LoRA 2×32 | lorapipe |" in done.stdout
