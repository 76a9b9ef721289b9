"""Teacher throughput and filter yield: the synth stage on the sample corpus with the bundled model.

Run: .venv/bin/python bench/bench_synth.py [--docs data/raw/docs] [--settings "120/160,200/300"]

Extracts the documents once, then runs `lorapipe.synthesize` with the default llama.cpp teacher
(the bundled SmolLM2-135M-Instruct GGUF) for each setting of the schema's bounds
(synth.max_question_chars / synth.max_answer_chars), every time with an empty cache, so that each
passage is asked. Prints a Markdown section for bench/BENCHMARKS.md: passages/s and pairs/s (pairs
the teacher wrote, before the filters), and the share of pairs each filter removed and kept. The
first setting is the default; the others are the baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

from lorapipe import extract_documents, prepare_base_model, synthesize
from lorapipe.params import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=Path, default=Path("data/raw/docs"))
    parser.add_argument(
        "--settings", default=f"{DEFAULTS.synth.max_question_chars}/{DEFAULTS.synth.max_answer_chars},200/300"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    with contextlib.redirect_stdout(io.StringIO()):
        extract_documents([args.docs], work / "text")
        prepare_base_model(DEFAULTS.model.name, work / "base")
    lines = [
        "| max question / answer chars | passages | s | passages/s | pairs/s | generated | kept | removed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, setting in enumerate(args.settings.split(",")):
        question_chars, answer_chars = (int(x) for x in setting.split("/"))
        started = time.monotonic()
        stats = synthesize(
            work / "text",
            work / "base",
            work / f"out{number}",
            cache_dir=work / f"cache{number}",  # empty: every passage is asked
            max_question_chars=question_chars,
            max_answer_chars=answer_chars,
        )
        seconds = time.monotonic() - started
        generated = stats["pairs_generated"]
        removed = ", ".join(f"{k} {v}" for k, v in stats["removed"].items() if v) or "none"
        kept = f"{stats['kept']} ({stats['kept'] / generated:.0%})" if generated else "0"
        lines.append(
            f"| {question_chars} / {answer_chars}{' (default)' if number == 0 else ''} | {stats['passages']} "
            f"| {seconds:.0f} | {stats['passages'] / seconds:.3f} | {generated / seconds:.3f} | {generated} "
            f"| {kept} | {removed} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
