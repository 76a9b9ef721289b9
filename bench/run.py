"""Run every benchmark in bench/ and write bench/BENCHMARKS.md with the machine and versions.

Run: make bench   (or .venv/bin/python bench/run.py, from the project root)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

BENCHES = [
    ("Extraction (issue 3)", ["bench/bench_extract.py"]),
    ("Pipeline overhead", ["bench/bench_pipeline.py"]),
    ("Peak training memory against `lorapipe plan` (issue 5)", ["bench/bench_memory.py"]),
    ("Merge memory against the weights' size (issue 6)", ["bench/bench_merge.py"]),
    ("Does fine-tuning help? Base against tuned on the Snips queries (issue 7)", ["bench/bench_labeled.py"]),
]
PACKAGES = ["torch", "transformers", "peft", "trl", "docling-slim", "pdfplumber", "llama-cpp-python", "dvc", "mlflow"]
MEASURED = Path(__file__).with_name("MEASURED.md")  # hand-recorded measurements, kept verbatim


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
    return [f"- machine: {model}, {os.cpu_count()} cores, {memory:.0f} GiB, flags: {' '.join(wanted) or 'none of avx2/avx512'}",
            f"- Python {platform.python_version()} on {platform.platform()}", f"- {versions}"]


def main() -> None:
    out = ["# Benchmarks", "",
           f"Written by `make bench` (bench/run.py) on {datetime.date.today()}.", "", *machine(), ""]
    for title, script in BENCHES:
        command = " ".join([".venv/bin/python", *script])
        print(f"running {command}", flush=True)
        result = subprocess.run([sys.executable, *script], capture_output=True, text=True)
        body = result.stdout.strip() if result.returncode == 0 else f"failed:\n```\n{result.stderr[-2000:]}\n```"
        out += [f"## {title}", "", f"Command: `{command}`", "", body, ""]
    if MEASURED.is_file():
        out += [MEASURED.read_text().strip(), ""]
    Path(__file__).with_name("BENCHMARKS.md").write_text("\n".join(out))
    print("wrote bench/BENCHMARKS.md")


if __name__ == "__main__":
    main()
