"""Run every benchmark in bench/ and write bench/BENCHMARKS.md with the machine and versions.

Run: make bench   (or .venv/bin/python bench/run.py [--only training,pipeline], from the project root;
all of them take about 120 minutes on 2 cores: training speed 50, the structured task 40, batching by length
10, the teacher 3)

With --only, the named benchmarks (a word of their title) run again and the other sections of the
existing BENCHMARKS.md are kept as they were.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

BENCHES = [
    ("Training speed: lorapipe against the plain Trainer baseline (issue 8)", ["bench/bench_train.py"]),
    ("Pipeline overheads (issue 8)", ["bench/bench_pipeline.py"]),
    ("The GPU story, on paper (issue 8)", ["bench/bench_gpu_plan.py"]),
    ("Extraction (issue 3)", ["bench/bench_extract.py"]),
    ("Extraction on Ray against the local workers (issue 20)", ["bench/bench_ray.py"]),
    ("Peak training memory against `lorapipe plan` (issue 5)", ["bench/bench_memory.py"]),
    ("Merge memory against the weights' size (issue 6)", ["bench/bench_merge.py"]),
    (
        "The structured task: slots on held-out Snips queries (issue 18)",
        [
            *("bench/bench_structured.py", "--system", "short", "--epochs", "0.6", "--rank", "16", "--alpha", "32"),
            *("--lr", "2e-3", "--span-substitution", "7", "--val-fraction", "0.005", "--quants", "Q6_K,Q4_K_M"),
            *("--label", "the README recipe", "--base"),
        ],
    ),
    (
        "Batching labeled rows by length: `train.group_by_length` (issues 18 and 19)",
        ["bench/bench_group_by_length.py", "--repeats", "2"],
    ),
    ("Teacher throughput and filter yield (issue 17)", ["bench/bench_synth.py"]),
    ("The GPU check, dry run on this CPU (issue 19)", ["bench/gpu_check.py", "--dry-run"]),
    (
        "`lorapipe plan` against the H200 rows of bench/gpu_check.jsonl (issue 19)",
        ["bench/gpu_check.py", "--fit", "bench/gpu_check.jsonl"],
    ),
]
PACKAGES = [
    "torch",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "docling-slim",
    "pdfplumber",
    "llama-cpp-python",
    "dvc",
    "mlflow",
]
OUT = Path(__file__).with_name("BENCHMARKS.md")
MEASURED = Path(__file__).with_name("MEASURED.md")  # hand-recorded measurements, kept verbatim


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
    return [
        f"- machine: {model}, {os.cpu_count()} cores, {memory:.0f} GiB, "
        f"flags: {' '.join(wanted) or 'none of avx2/avx512'}",
        f"- Python {platform.python_version()} on {platform.platform()}",
        f"- {versions}",
    ]


def previous_sections() -> dict[str, str]:
    """The sections of the existing BENCHMARKS.md, by title, each with its date line."""
    if not OUT.is_file():
        return {}
    sections = {}
    for chunk in OUT.read_text().split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        sections[title.strip()] = body.strip()
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated words: rerun only the benchmarks whose title has one")
    args = parser.parse_args()
    words = [w.strip().lower() for w in args.only.split(",")] if args.only else None
    kept = previous_sections()
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/run.py); each section says when it last ran.",
        "",
        *machine(),
        "",
    ]
    for title, script in BENCHES:
        command = " ".join([".venv/bin/python", *script])
        if words is not None and not any(w in title.lower() for w in words):
            out += [f"## {title}", "", kept.get(title, f"Not run yet: `{command}`"), ""]
            continue
        print(f"running {command}", flush=True)
        result = subprocess.run([sys.executable, *script], capture_output=True, text=True)
        body = result.stdout.strip() if result.returncode == 0 else f"failed:\n```\n{result.stderr[-2000:]}\n```"
        out += [f"## {title}", "", f"Command: `{command}`, run on {datetime.date.today()}", "", body, ""]
    if MEASURED.is_file():
        out += [MEASURED.read_text().strip(), ""]
    OUT.write_text("\n".join(out))
    print("wrote bench/BENCHMARKS.md")


if __name__ == "__main__":
    main()
