"""The structured-task recipe on the Snips queries (issue 18): train on 560 queries, export the GGUF,
answer 140 held-out queries (20 per intent, never trained) the way `lorapipe serve` answers them (the
Q4_K_M GGUF under llama.cpp, decoded under the task's JSON Schema, and free for comparison), and say
how right the slots are and why they are wrong.

Run: .venv/bin/python bench/bench_structured.py [--epochs 2] [--rank 8] [--lr 3e-4] [--label NAME]
     (about 15-30 min on 2 cores: training dominates)

Data: bench/data/snips_queries.jsonl and snips_schema.json, a copy of the project's shared labeled
task (700 queries of the Snips NLU benchmark, public domain, CC0). Each run appends one JSON line to
bench/structured.jsonl (--out) and prints a Markdown table row per system:
intent accuracy, slot precision/recall/F1, exact match (intent and every slot), JSON parse and
schema-valid shares, answers cut at the token limit, and the slot error counts of
lorapipe.scoring.slot_errors (missing, extra, recased, partial, wrong_value, confused_name, and
invented: values that are not a substring of the query).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SYSTEM = (
    "Analyse the user's query. Answer only with JSON: "
    '{"intent": one of AddToPlaylist, BookRestaurant, GetWeather, PlayMusic, RateBook, SearchCreativeWork, '
    'SearchScreeningEvent, "slots": {slot name: the words of the query}}.'
)


def split(rows: list[dict], per_intent: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): `per_intent` rows of each intent held out, chosen with `seed`."""
    by_intent: dict[str, list[dict]] = {}
    for row in rows:
        by_intent.setdefault(row["data"]["intent"], []).append(row)
    train, held = [], []
    for intent in sorted(by_intent):
        chosen = list(by_intent[intent])
        random.Random(f"{seed}:{intent}").shuffle(chosen)
        held += chosen[:per_intent]
        train += chosen[per_intent:]
    return train, held


def score(answers, rows: list[dict], schema: dict) -> dict:
    """score_json of generation.Generation answers against the rows' analyses, with slot error counts."""
    from lorapipe.scoring import parse_json, score_json, slot_errors

    expected = [json.dumps(r["data"]) for r in rows]
    scores = score_json([a.text for a in answers], expected, schema, [a.truncated for a in answers])
    errors: Counter = Counter()
    for answer, row in zip(answers, rows):
        errors += slot_errors(parse_json(answer.text), row["data"], row["query"])
    scores["slot_errors"] = dict(sorted(errors.items()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=None, help="default: 2 × rank")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--per-intent", type=int, default=20, help="held-out queries per intent")
    parser.add_argument("--max-rows", type=int, default=None, help="train on at most this many queries")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--label", default="run", help="name of the row in the table")
    parser.add_argument("--base", action="store_true", help="also score the base model (the bundled GGUF)")
    parser.add_argument("--out", default=str(HERE / "structured.jsonl"))
    args = parser.parse_args()

    from lorapipe import build_dataset, export_gguf, merge_adapter, prepare_base_model
    from lorapipe.evaluate import answer_token_budget
    from lorapipe.generation import gguf_generate
    from lorapipe.models import bundled_gguf, load_tokenizer
    from lorapipe.params import DEFAULTS, LoraParams, TrainParams
    from lorapipe.scoring import parse_json
    from lorapipe.train import train_lora

    rows = [json.loads(line) for line in (DATA / "snips_queries.jsonl").read_text().splitlines() if line.strip()]
    schema = json.loads((DATA / "snips_schema.json").read_text())
    train_rows, held = split(rows, args.per_intent, args.seed)
    train_rows = train_rows[: args.max_rows] if args.max_rows else train_rows
    conversations = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["query"]}] for r in held]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "text").mkdir()
        (tmp / "labeled").mkdir()
        (tmp / "labeled" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
        base = Path("models/base") if (Path("models/base") / "config.json").is_file() else None
        base = base or prepare_base_model(DEFAULTS.model.name, tmp / "base")
        stats = build_dataset(
            tmp / "text",
            base,
            tmp / "data",
            labeled_dir=tmp / "labeled",
            mode="chat",
            max_seq_len=256,
            val_fraction=0.05,
            seed=args.seed,
            system_prompt=SYSTEM,
        )
        budget, reason = answer_token_budget("auto", [tmp / "data" / "train.jsonl"], load_tokenizer(base))
        print(f"[bench] {stats['rows']['train']} training queries, {len(held)} held out; {reason}", flush=True)
        if args.base:
            for constrained in (True, False):
                started = time.perf_counter()
                got = gguf_generate(
                    bundled_gguf(DEFAULTS.model.name), conversations, budget, schema if constrained else None
                )
                name = "base (bundled GGUF)" + (" under the schema" if constrained else ", free")
                results[name] = {**score(got, held, schema), "answer_seconds": round(time.perf_counter() - started)}
        started = time.perf_counter()
        result = train_lora(
            tmp / "data",
            base,
            tmp / "adapter",
            lora=LoraParams(rank=args.rank, alpha=args.alpha or 2 * args.rank),
            train=TrainParams(
                epochs=args.epochs,
                max_steps=-1,
                lr=args.lr,
                batch_size=args.batch_size,
                eval_steps=0,
                save_steps=0,
                log_every=20,
                resume="never",
            ),
            seed=args.seed,
        )
        train_seconds = time.perf_counter() - started
        merged = merge_adapter(base, tmp / "adapter", tmp / "merged")
        export_gguf(merged, tmp / "data" / "prompts.json", tmp / "gguf", quants=["Q4_K_M"], name="task")
        gguf = tmp / "gguf" / "task.Q4_K_M.gguf"
        for constrained in (True, False):
            started = time.perf_counter()
            got = gguf_generate(gguf, conversations, budget, schema if constrained else None)
            name = f"{args.label} (Q4_K_M" + (", under the schema)" if constrained else ", free)")
            results[name] = {**score(got, held, schema), "answer_seconds": round(time.perf_counter() - started)}
            if constrained:
                wrong = [(r, a.text) for r, a in zip(held, got) if parse_json(a.text) != r["data"]]
                for row, text in wrong[:8]:
                    print(f"  wrong: {row['query']!r}\n    got      {text}\n    expected {json.dumps(row['data'])}")
    settings = {
        "label": args.label,
        "epochs": args.epochs,
        "rank": args.rank,
        "alpha": args.alpha or 2 * args.rank,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "train_rows": stats["rows"]["train"],
        "held_out": len(held),
        "steps": result.metrics.steps,
        "train_seconds": round(train_seconds),
        "max_new_tokens": budget,
    }
    print(
        "\n| system | intent | slot P | slot R | slot F1 | exact | parse | schema-valid | cut | slot errors |"
        "\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for name, s in results.items():
        print(
            f"| {name} | {s['intent_accuracy']:.0%} | {s['slots']['precision']:.2f} | {s['slots']['recall']:.2f} | "
            f"{s['slots']['f1']:.2f} | {s['exact_rate']:.0%} | {s['json_parse_rate']:.0%} | "
            f"{s['schema_valid_rate']:.0%} | {s['truncated_rate']:.0%} | "
            + ", ".join(f"{k} {v}" for k, v in s["slot_errors"].items())
            + " |"
        )
    print(f"\n{settings}")
    with open(args.out, "a") as out:
        out.write(json.dumps({**settings, "results": results}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
