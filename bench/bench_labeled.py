"""Does fine-tuning help on a real structured task? The bundled SmolLM2-135M, before and after LoRA
training on the Snips queries of ../shared/labeled (chat mode, one system prompt), scored on held-back
rows: JSON-parse rate, schema-valid rate, intent accuracy, slot F1.

Run: .venv/bin/python bench/bench_labeled.py [--max-steps 60] [--eval-rows 40]   (slow: ~15 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

LABELED = Path(__file__).resolve().parents[1].parent / "shared" / "labeled"
SYSTEM = (
    'Analyse the user\'s query. Answer only with JSON: {"intent": one of AddToPlaylist, BookRestaurant, '
    'GetWeather, PlayMusic, RateBook, SearchCreativeWork, SearchScreeningEvent, "slots": {name: value}}.'
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-rows", type=int, default=40)
    args = parser.parse_args()
    if not (LABELED / "snips_queries.jsonl").is_file():
        print(f"- skipped: {LABELED} is not here (the benchmark reads the shared labeled task)")
        return

    from lorapipe import build_dataset, merge_adapter, prepare_base_model
    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora
    from lorapipe.evaluate import chat_rows, evaluation_requests, hf_answers
    from lorapipe.scoring import score_answers

    schema = json.loads((LABELED / "snips_schema.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "text").mkdir()
        (tmp / "labeled").mkdir()
        shutil.copy(LABELED / "snips_queries.jsonl", tmp / "labeled")
        base = prepare_base_model("smollm2-135m-instruct", tmp / "base")
        stats = build_dataset(
            tmp / "text",
            base,
            tmp / "data",
            labeled_dir=tmp / "labeled",
            mode="chat",
            max_seq_len=256,
            val_fraction=0.1,
            seed=42,
            system_prompt=SYSTEM,
        )
        rows = chat_rows(tmp / "data" / "val.jsonl", args.eval_rows)
        requests = evaluation_requests(rows, json.loads((tmp / "data" / "prompts.json").read_text()))
        conversations, expected = [m for m, _ in requests], [e for _, e in requests]

        started = time.perf_counter()
        base_answers = hf_answers(base, conversations, 96)
        base_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = train_lora(
            tmp / "data",
            base,
            tmp / "adapter",
            lora=LoraParams(rank=16, alpha=32),
            train=TrainParams(
                lr=3e-4,
                batch_size=args.batch_size,
                max_steps=args.max_steps,
                warmup_steps=4,
                log_every=10,
                eval_steps=0,
                save_steps=0,
                resume="never",
            ),
        )
        train_seconds = time.perf_counter() - started
        merged = merge_adapter(base, tmp / "adapter", tmp / "merged")
        tuned_answers = hf_answers(merged, conversations, 96)

        scores = {
            "base": score_answers(base_answers, expected, schema),
            "fine-tuned": score_answers(tuned_answers, expected, schema),
        }
        print(
            f"- data: {stats['rows']['train']} training and {stats['rows']['val']} held-back queries "
            f"(../shared/labeled, 7 intents); {len(rows)} held-back rows scored, greedy, ≤96 new tokens"
        )
        print(
            f"- training: LoRA r16 on every projection, {result.metrics.steps} steps × {args.batch_size} rows, "
            f"lr 3e-4, {result.resolved.precision}, {train_seconds:.0f} s "
            f"({result.metrics.tokens_per_second:.0f} tokens/s); "
            f"base answers took {base_seconds:.0f} s"
        )
        print(
            "\n| model | JSON parses | schema-valid | intent accuracy | slot precision | slot recall | slot F1 "
            "| exact match |\n|---|---|---|---|---|---|---|---|"
        )
        for name, score in scores.items():
            j = score["json"]
            print(
                f"| {name} | {j['json_parse_rate']:.0%} | {j['schema_valid_rate']:.0%} | "
                f"{j['intent_accuracy']:.0%} | {j['slots']['precision']:.2f} | {j['slots']['recall']:.2f} | "
                f"{j['slots']['f1']:.2f} | {score['exact_match']:.0%} |"
            )
        print(
            f"\n- example: {conversations[0][-1]['content']!r}\n  - base: {base_answers[0][:160]!r}\n"
            f"  - fine-tuned: {tuned_answers[0][:160]!r}\n  - expected: {expected[0]!r}"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
