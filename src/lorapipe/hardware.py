"""What this machine offers training: the device, the precision it runs natively, whether to load 4-bit,
how much memory is free, and how fast a matrix multiply runs. `plan` and `train` both ask here.

    from lorapipe.hardware import resolve_device, resolve_precision
    device = resolve_device()                        # "cuda" or "cpu"
    precision = resolve_precision("auto", device)    # "bf16" or "fp32", from the hardware's flags

Decisions come from hardware flags (CUDA capability, the CPU's avx512_bf16/amx_bf16), never from a
timing. torch is imported only inside the functions that need it. Memory is in GiB (2**30 bytes).
"""

from __future__ import annotations

import time
from pathlib import Path

GiB = 2**30  # bytes


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bfloat16 matrix instructions (avx512_bf16 or amx_bf16 in
    /proc/cpuinfo); False where that file cannot be read (not Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device() -> str:
    """``cuda`` when a CUDA device is visible, else ``cpu``."""
    return "cuda" if cuda_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """`train.precision` made concrete: ``auto`` → ``bf16`` where the device runs bfloat16 natively
    (CUDA: torch's bf16 support; CPU: `cpu_has_bf16`), else ``fp32``; ``fp32``/``bf16`` stay as given."""
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_load_in_4bit(load_in_4bit: str | bool, device: str) -> bool:
    """`quant.load_in_4bit` made concrete: ``auto`` → 4-bit (QLoRA) on CUDA, plain LoRA on the CPU."""
    return device == "cuda" if load_in_4bit == "auto" else bool(load_in_4bit)


def available_memory_gib(device: str) -> float:
    """Memory training may use, in GiB: the first CUDA device's total memory, or the host's available
    memory now (psutil's ``available``: free plus reclaimable caches, Linux's MemAvailable)."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GiB
    import psutil

    return psutil.virtual_memory().available / GiB


def peak_matmul_flops(device: str, precision: str) -> float:
    """FLOP/s of a square matrix multiply on `device` in the training precision (``bf16`` or
    ``fp32``), the denominator of the speed estimate: 1024² on the CPU (about 0.1 s), 8192² on CUDA
    (9 products: about 0.3 s on a 30 TFLOP/s card; a 1024² product is launch-bound on a large GPU:
    39 TFLOP/s against 800 at 8192² on an H200, bench/gpu_check.py)."""
    import torch

    size = 8192 if device == "cuda" else 1024
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a
    if device == "cuda":
        torch.cuda.synchronize()  # the warm-up product is done before the clock starts
    runs, started = 8, time.perf_counter()
    for _ in range(runs):
        a @ a
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - started)
