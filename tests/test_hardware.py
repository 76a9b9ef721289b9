"""lorapipe.hardware: device, precision and 4-bit policy, free memory, matrix-multiply peak.

Run: .venv/bin/pytest tests/test_hardware.py
"""

from pathlib import Path

import pytest

from lorapipe import hardware
from lorapipe.hardware import (
    GiB,
    available_memory_gib,
    cpu_has_bf16,
    peak_matmul_flops,
    resolve_device,
    resolve_load_in_4bit,
    resolve_precision,
)


def test_device_and_precision_policy():
    assert resolve_load_in_4bit("auto", "cpu") is False
    assert resolve_load_in_4bit("auto", "cuda") is True
    assert resolve_load_in_4bit(True, "cpu") is True
    assert resolve_load_in_4bit(False, "cuda") is False
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    assert resolve_device() in ("cpu", "cuda")


def test_auto_precision_on_the_cpu_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_cpu_bf16_flag_is_read_from_cpuinfo():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_available_host_memory_is_linux_memavailable_in_gib():
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo here")
    kib = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    assert GiB == 2**30
    # psutil reads the same MemAvailable; the two reads are moments apart, so allow some drift
    assert available_memory_gib("cpu") == pytest.approx(kib * 1024 / GiB, abs=0.25)


def test_peak_matmul_flops_is_a_plausible_rate():
    flops = peak_matmul_flops("cpu", "fp32")
    assert 1e8 < flops < 1e14  # a CPU core does at least 0.1 GFLOP/s and no CPU 100 TFLOP/s
