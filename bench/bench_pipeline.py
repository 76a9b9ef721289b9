"""Pipeline overheads: each stage's time and peak memory, a no-op `dvc repro`, the time from a
one-parameter change (`dvc exp run -S lora.rank=8`) to the first training step, merge and export
seconds per GB, and how fast the dataset stage tokenizes.

Run: .venv/bin/python bench/bench_pipeline.py [--repeats 5]   (about 10 minutes)

It copies the project (the files git would commit) into a temporary git repo and runs the whole
pipeline there on the sample corpus with the bundled model, training 3 steps (the overheads do not
depend on the number of steps). Peak memory is sampled every 0.1 s over the stage's processes
(resident memory summed over the process tree under dvc, dvc itself left out).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers import copy_project  # noqa: E402 (the tests' copy of the files git would commit)


def tree_rss_gb(root_pid: int) -> float:
    """Resident memory of every descendant of `root_pid` (not the process itself), in GB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        found = re.search(r"VmRSS:\s+(\d+)", status)
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = int(found.group(1)) if found else 0
    total, todo = 0, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total / 2**20


def run_watched(args: list[str], cwd: Path, env: dict, marks: dict[str, str]) -> dict:
    """Run a dvc command; per stage ('Running stage' lines): seconds and peak memory; and the time at
    which each regex in `marks` first matched a line of output."""
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages: dict[str, dict] = {}
    current: list[str | None] = [None]
    seen: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            if current[0]:
                peak = stages[current[0]]
                peak["peak_gb"] = max(peak["peak_gb"], tree_rss_gb(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        now = time.perf_counter() - started
        stage = re.search(r"Running stage '([\w@-]+)'", line)
        if stage:
            if current[0]:
                stages[current[0]]["seconds"] = now - stages[current[0]]["start"]
            current[0] = stage.group(1)
            stages[current[0]] = {"start": now, "peak_gb": 0.0}
        for key, pattern in marks.items():
            if key not in seen and re.search(pattern, line):
                seen[key] = now
    process.wait()
    total = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{''.join(lines)[-4000:]}")
    if current[0]:
        stages[current[0]]["seconds"] = total - stages[current[0]]["start"]
    return {"stages": stages, "marks": seen, "seconds": total}


def size_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def dataset_speed(repo: Path) -> list[str]:
    """Tokens per second of build_dataset, in-process: the sample corpus, and the 700 Snips queries
    of ../shared/labeled where that folder exists."""
    from lorapipe import build_dataset

    cases = [
        (
            "sample corpus (data/raw: text chunks, and chat rows of any labeled file there)",
            repo / "data" / "raw" / "labeled",
        )
    ]
    shared = ROOT.parent / "shared" / "labeled"
    if (shared / "snips_queries.jsonl").is_file():
        cases.append(("sample corpus text + the 700 Snips queries as chat rows (../shared/labeled)", shared))
    out = []
    for label, labeled in cases:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            build_dataset(
                repo / "data" / "extracted_text", repo / "models" / "base", Path(tmp) / "warm", labeled_dir=labeled
            )  # the tokenizer's first load is not counted
            times = []
            for _ in range(3):
                started = time.perf_counter()
                stats = build_dataset(
                    repo / "data" / "extracted_text", repo / "models" / "base", Path(tmp) / "out", labeled_dir=labeled
                )
                times.append(time.perf_counter() - started)
        tokens = stats["tokens"]["train"] + stats["tokens"]["val"]
        rows = stats["rows"]["train"] + stats["rows"]["val"]
        rates = [tokens / t for t in times]
        out.append(
            f"| {label} | {rows} | {tokens} | {statistics.median(times):.2f} | "
            f"{statistics.median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LORAPIPE_HOME")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    git = ["git", "-c", "user.name=lorapipe bench", "-c", "user.email=bench@lorapipe.invalid"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "project"
        copy_project(repo)
        env["LORAPIPE_CACHE_DIR"] = str(Path(tmp) / "cache")
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["train"].update(max_steps=3, log_every=1, eval_steps=0, save_steps=0)
        params["eval"].update(max_samples=8, num_generations=1)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for command in (["git", "init", "-q", "-b", "main"], [*git, "add", "-A"], [*git, "commit", "-q", "-m", "p"]):
            subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)

        full = run_watched([str(BIN / "dvc"), "repro"], repo, env, {})
        merged, base = size_gb(repo / "models" / "merged"), size_gb(repo / "models" / "base")
        print(
            f"- whole `dvc repro` from scratch (bundled SmolLM2-135M, 3 training steps, 8 evaluation rows): "
            f"{full['seconds']:.0f} s\n"
        )
        print("| stage | seconds | peak memory GB (its processes) |\n|---|---|---|")
        for name, stage in full["stages"].items():
            print(f"| {name} | {stage['seconds']:.1f} | {stage['peak_gb']:.2f} |")
        print(
            f"\n- merge: {full['stages']['merge']['seconds'] / merged:.1f} s per GB of merged weights "
            f"({merged:.2f} GB float32; base {base:.2f} GB); export (convert to f16, quantize Q4_K_M, check "
            f"logits): {full['stages']['export']['seconds'] / merged:.1f} s per GB of merged weights; "
            f"both include the stage's start-up (python, torch)"
        )

        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            result = subprocess.run(
                [str(BIN / "dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True, check=True
            )
            times.append(time.perf_counter() - started)
            if "Running stage" in result.stdout:
                raise RuntimeError("the pipeline was not up to date after a full `dvc repro`")
        print(
            f"- no-op `dvc repro` ({len(full['stages'])} stages up to date): median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} runs)"
        )

        exp = run_watched(
            [str(BIN / "dvc"), "exp", "run", "-S", "lora.rank=8"],
            repo,
            env,
            {
                "train_start": r"Running stage 'train'",
                "first_log": r"\[train\] (cpu|cuda)",
                "first_step": r"\[train\] step 1/",
            },
        )
        ran = ", ".join(exp["stages"])
        print(
            f"- `dvc exp run -S lora.rank=8` → train stage starts after {exp['marks']['train_start']:.1f} s, "
            f"its trainer starts after {exp['marks']['first_log']:.1f} s, first training step done after "
            f"{exp['marks']['first_step']:.1f} s; whole experiment {exp['seconds']:.0f} s (reran: {ran})"
        )
        print("\nDataset stage speed (`build_dataset` in-process, tokenizer loaded; median of 3):\n")
        print("| input | rows | tokens | seconds | tokens/s |\n|---|---|---|---|---|")
        for line in dataset_speed(repo):
            print(line)


if __name__ == "__main__":
    main()
