"""Pipeline overhead: how long a no-op `dvc repro` takes once everything is up to date.

Run: .venv/bin/python bench/bench_pipeline.py [--repeats 5]   (after `make run`, in the project root)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not Path("dvc.lock").is_file():
        print("- no-op `dvc repro`: skipped (no dvc.lock: run `make run` first)")
        return
    dvc = str(Path(sys.executable).parent / "dvc")
    first = subprocess.run([dvc, "repro"], capture_output=True, text=True)
    if "Running stage" in first.stdout:
        print("- note: the pipeline was not up to date; the first `dvc repro` ran stages and is not counted")
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result = subprocess.run([dvc, "repro"], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        assert "Running stage" not in result.stdout
    print(f"- no-op `dvc repro` (8 stages up to date): median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs)")


if __name__ == "__main__":
    main()
