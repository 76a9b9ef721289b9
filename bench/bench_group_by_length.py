"""Batching rows by length (train.group_by_length) on labeled rows: the bundled SmolLM2-135M with LoRA
on the Snips training queries and their span-substituted copies (the structured task's recipe: short
system prompt, dataset.span_substitution 7, batch 4), trained in the random order (the plain
Trainer's) and in the order transformers' LengthGroupedSampler gives (random groups of 50 batches,
each sorted by length), one after the other in one process.

Run: .venv/bin/python bench/bench_group_by_length.py [--steps 51] [--repeats 1]   (about 5 minutes per repeat)

Per order: the tokens a step computes (batch × its longest row), the real ones (the attention mask's),
the padding's share, seconds per step and real tokens per second over the steps after the first
(warm-up). 51 steps: the first 50 after warm-up hold one of the sampler's groups (200 rows), so the
grouped order's rows are no longer than the random order's on average; the two orders still see
different rows, so the comparison is in real tokens per second. Printed as Markdown; `--out` also
appends the rows as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def prepare(work: Path, seed: int) -> tuple[Path, Path]:
    """The structured benchmark's training rows as a dataset (built as bench_structured.py builds it)."""
    from bench_structured import DATA, SYSTEMS, split

    from lorapipe import build_dataset, prepare_base_model
    from lorapipe.params import DEFAULTS

    rows = [json.loads(line) for line in (DATA / "snips_queries.jsonl").read_text().splitlines() if line.strip()]
    train_rows, _ = split(rows, 20, seed)
    (work / "text").mkdir()
    (work / "labeled").mkdir()
    (work / "labeled" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    base = Path("models/base") if (Path("models/base") / "config.json").is_file() else None
    base = base or prepare_base_model(DEFAULTS.model.name, work / "base")
    build_dataset(
        work / "text",
        base,
        work / "data",
        labeled_dir=work / "labeled",
        mode="chat",
        max_seq_len=256,
        val_fraction=0.005,
        seed=seed,
        system_prompt=SYSTEMS["short"],
        span_substitution=7,
    )
    return work / "data", base


def run(data: Path, base: Path, work: Path, steps: int, grouped: bool, seed: int) -> dict:
    """Train `steps` steps in one order; the shapes and times of each step."""
    import lorapipe.train as train_module
    from lorapipe.params import LoraParams, TrainParams

    shapes: list[tuple[int, int, int]] = []  # rows, longest row, real tokens
    made = train_module._sft_trainer_class

    def recording():
        class Recording(made()):
            def training_step(self, model, inputs, *args, **kwargs):
                rows, length = inputs["input_ids"].shape
                shapes.append((rows, length, int(inputs["attention_mask"].sum())))
                return super().training_step(model, inputs, *args, **kwargs)

        return Recording

    marks: list[float] = []
    train_module._sft_trainer_class = recording
    try:
        result = train_module.train_lora(
            data,
            base,
            work / f"adapter-{grouped}",
            lora=LoraParams(rank=16, alpha=32),
            train=TrainParams(
                max_steps=steps,
                batch_size=4,
                lr=2e-3,
                log_every=1,
                eval_steps=0,
                save_steps=0,
                resume="never",
                torch_compile=False,
                group_by_length=grouped,
            ),
            seed=seed,
            on_log=lambda step, metrics: marks.append(time.perf_counter()) if "loss" in metrics else None,
        )
    finally:
        train_module._sft_trainer_class = made
    after = shapes[1:]  # the steps after the first
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    computed = sum(rows * length for rows, length, _ in after)
    real = sum(tokens for _, _, tokens in after)
    return {
        "order": "grouped by length" if grouped else "random",
        "steps": len(after),
        "computed_tokens_per_step": round(computed / len(after), 1),
        "real_tokens_per_step": round(real / len(after), 1),
        "padding_share": round(1 - real / computed, 4),
        "seconds_per_step": round(statistics.mean(seconds), 3),
        "real_tokens_per_second": round(real / sum(seconds), 1),
        "precision": result.resolved.precision,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| order | steps timed | tokens computed / step | real tokens / step | padding | s / step | real tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['order']} | {r['steps']} | {r['computed_tokens_per_step']:.0f} | {r['real_tokens_per_step']:.0f} | "
            f"{r['padding_share']:.1%} | {r['seconds_per_step']:.2f} | {r['real_tokens_per_second']:.0f} |"
        )
    random = [r["real_tokens_per_second"] for r in rows if r["order"] == "random"]
    grouped = [r["real_tokens_per_second"] for r in rows if r["order"] != "random"]
    if random and grouped:
        lines.append(
            f"\nGrouped by length: {statistics.median(grouped) / statistics.median(random):.2f}× the real tokens per "
            f"second of the random order ({rows[0]['precision']}, median of {len(grouped)})."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=51, help="steps per run, the first one untimed")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each order, alternating")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help="append the rows to this JSONL file")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3: the first step is not timed")
    stdout, sys.stdout = sys.stdout, sys.stderr  # progress on stderr; stdout gets the Markdown (bench/run.py)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, base = prepare(work, args.seed)
        for _ in range(args.repeats):
            for grouped in (False, True):
                rows.append(run(data, base, work, args.steps, grouped, args.seed))
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "a") as out:
            out.writelines(json.dumps(r) + "\n" for r in rows)
    sys.stdout = stdout
    print(markdown(rows))


if __name__ == "__main__":
    main()
