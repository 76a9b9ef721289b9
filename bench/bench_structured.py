"""The structured-task recipe on the Snips queries (issue 18): train on 560 queries, export the GGUF,
answer 140 held-out queries (20 per intent, never trained) the way `lorapipe serve` answers them (the
Q4_K_M GGUF under llama.cpp, decoded under the task's JSON Schema, and free for comparison), and say
how right the slots are and why they are wrong.

Run: .venv/bin/python bench/bench_structured.py [--epochs 2] [--rank 8] [--lr 3e-4] [--system short]
     [--label NAME] [--keep DIR]   (about 15-30 min on 2 cores: training dominates)
     .venv/bin/python bench/bench_structured.py --gguf DIR/task.Q4_K_M.gguf   (score a kept model only)
     .venv/bin/python bench/bench_structured.py ... --quants auto   (the quantization ladder, each GGUF scored)
     .venv/bin/python bench/bench_structured.py ... --eval-steps 133 --select-metric slot_f1   (model selection)
     .venv/bin/python bench/bench_structured.py --gguf ... --answers /tmp/answers.jsonl   (every answer, to read)
     .venv/bin/python bench/bench_structured.py --table   (the runs recorded in bench/structured.jsonl)

Data: bench/data/snips_queries.jsonl and snips_schema.json, a copy of the project's shared labeled
task (700 queries of the Snips NLU benchmark, public domain, CC0). Each run appends one JSON line to
bench/structured.jsonl (--out) and prints a Markdown table row per system:
intent accuracy, slot precision/recall/F1, exact match (intent and every slot), JSON parse and
schema-valid shares, answers cut at the token limit, and the slot error counts of
lorapipe.scoring.slot_errors (missing, extra, recased, partial, wrong_value, confused_name, and
invented: values that are not a substring of the query), plus answers whose slots repeat a key.
The fine-tuned GGUF answers three ways: under the schema (what `lorapipe serve` does by default),
under the schema with the span constraint (eval.span_constraint: slot values limited to spans of
the query), and free.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SYSTEMS = {  # the long prompt (60 tokens) names the intents; the short one (8) leaves them to the rows
    "long": (
        "Analyse the user's query. Answer only with JSON: "
        '{"intent": one of AddToPlaylist, BookRestaurant, GetWeather, PlayMusic, RateBook, SearchCreativeWork, '
        'SearchScreeningEvent, "slots": {slot name: the words of the query}}.'
    ),
    "short": "Analyse the query as JSON: its intent and slots.",
}
SYSTEM = SYSTEMS["long"]


def repeated_keys(text: str) -> bool:
    """Does the JSON answer `text` give one key twice in an object (json.loads keeps only the last)?"""
    seen = []

    def pairs(items):
        keys = [k for k, _ in items]
        seen.append(len(keys) != len(set(keys)))
        return dict(items)

    try:
        json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError:
        return False
    return any(seen)


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


def answer_errors(answers, rows: list[dict]) -> list[Counter]:
    """lorapipe.scoring.slot_errors of each generation.Generation answer against its row's analysis."""
    from lorapipe.scoring import parse_json, slot_errors

    return [slot_errors(parse_json(a.text), row["data"], row["query"]) for a, row in zip(answers, rows)]


def write_answers(path: Path, system: str, rows: list[dict], answers, errors: list[Counter]) -> None:
    """Append one JSON line per held-out row to `path`: the system, the query, the expected analysis, the
    answer text, whether it was cut at the token limit, and its slot errors (answer_errors)."""
    with open(path, "a") as out:
        for row, answer, wrong in zip(rows, answers, errors):
            line = {
                "system": system,
                "query": row["query"],
                "expected": row["data"],
                "answer": answer.text,
                "truncated": answer.truncated,
                "slot_errors": dict(sorted(wrong.items())),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


def score(answers, rows: list[dict], schema: dict, errors: list[Counter]) -> dict:
    """score_json of generation.Generation answers against the rows' analyses, with the slot error counts
    of `errors` (answer_errors of the same answers) summed."""
    from lorapipe.scoring import score_json

    expected = [json.dumps(r["data"]) for r in rows]
    scores = score_json([a.text for a in answers], expected, schema, [a.truncated for a in answers])
    scores["slot_errors"] = dict(sorted(sum(errors, Counter()).items()))
    scores["repeated_keys"] = sum(repeated_keys(a.text) for a in answers)
    return scores


def _auto_or_float(value: str) -> str | float:
    return "auto" if value.lower() == "auto" else float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=_auto_or_float, default=2.0, help="or auto: train.epochs auto")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=None, help="default: 2 × rank")
    parser.add_argument("--lr", type=_auto_or_float, default=3e-4, help="or auto: train.lr auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-steps", type=int, default=0, help="train.eval_steps (0: no evaluation during training)")
    parser.add_argument(
        "--select-metric",
        default="eval_loss",
        help="train.select_metric: the evaluation metric that picks the kept adapter (needs --eval-steps)",
    )
    parser.add_argument(
        "--span-substitution",
        type=int,
        default=0,
        help="dataset.span_substitution: span-substituted copies of each training query (0: none)",
    )
    parser.add_argument(
        "--rare-key-oversampling",
        type=int,
        default=1,
        help="dataset.rare_key_oversampling: up to this many times the copies for rows of a rare slot name (1: none)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=-1,
        help="train.max_steps: stop after this many optimizer steps (-1: as --epochs says); keeps the training "
        "time of runs with more rows comparable",
    )
    parser.add_argument("--per-intent", type=int, default=20, help="held-out queries per intent")
    parser.add_argument(
        "--group-by-length",
        choices=["auto", "true", "false"],
        default="auto",
        help="train.group_by_length (auto: on for these rows of several lengths; runs before 2026-12-01: false)",
    )
    parser.add_argument("--max-rows", type=int, default=None, help="train on at most this many queries")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="dataset.val_fraction of the training queries kept back for the validation loss (the held-out "
        "queries are separate); 0.005 keeps 3 and trains the other 557, as the README recipe trains all its 560",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the held-out split (and of training, by default)")
    parser.add_argument(
        "--train-seed",
        type=int,
        help="seed of the dataset (its validation rows, copies, order) and of training, default --seed: vary it "
        "alone to see the spread of one recipe on the same held-out queries",
    )
    parser.add_argument("--label", default="run", help="name of the row in the table")
    parser.add_argument("--base", action="store_true", help="also score the base model (the bundled GGUF)")
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="long", help="the task's system prompt")
    parser.add_argument("--keep", help="copy the fine-tuned GGUFs into this folder")
    parser.add_argument(
        "--quants",
        default="Q4_K_M",
        help="comma-separated quantizations to export and score (the first answers three ways, the others "
        "under the schema only), or auto: export.quants auto's ladder (its perplexity choice recorded), Q4_K_M "
        "answering three ways",
    )
    parser.add_argument("--gguf", help="score this fine-tuned GGUF (trained with --system) instead of training one")
    parser.add_argument(
        "--answers",
        help="write every answer to this JSONL file, one line per system and held-out query (system, query, "
        "expected, answer, truncated, slot errors): the wrong answers to read",
    )
    parser.add_argument("--out", default=str(HERE / "structured.jsonl"))
    parser.add_argument("--table", action="store_true", help="only print the Markdown of the runs in --out")
    args = parser.parse_args()
    if args.rare_key_oversampling > 1 and not args.span_substitution:
        parser.error("--rare-key-oversampling multiplies span-substituted copies: give --span-substitution too")
    quants = [q.strip() for q in args.quants.split(",") if q.strip()]
    if args.table:
        print(markdown([json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]))
        return
    stdout, sys.stdout = sys.stdout, sys.stderr  # progress on stderr; stdout gets the Markdown (bench/run.py)

    from lorapipe import build_dataset, export_gguf, merge_adapter, prepare_base_model
    from lorapipe.evaluate import answer_token_budget
    from lorapipe.generation import gguf_generate
    from lorapipe.models import bundled_gguf, load_tokenizer
    from lorapipe.params import DEFAULTS, LoraParams, TrainParams
    from lorapipe.scoring import parse_json
    from lorapipe.train import train_lora

    rows = [json.loads(line) for line in (DATA / "snips_queries.jsonl").read_text().splitlines() if line.strip()]
    schema = json.loads((DATA / "snips_schema.json").read_text())
    system = SYSTEMS[args.system]
    train_rows, held = split(rows, args.per_intent, args.seed)
    train_seed = args.seed if args.train_seed is None else args.train_seed
    train_rows = train_rows[: args.max_rows] if args.max_rows else train_rows
    conversations = [[{"role": "system", "content": system}, {"role": "user", "content": r["query"]}] for r in held]
    results: dict[str, dict] = {}
    steps, train_seconds, ladder, grouped = None, None, None, None
    sized = {"epochs": args.epochs, "lr": args.lr}
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
            val_fraction=args.val_fraction,
            seed=train_seed,
            system_prompt=system,
            span_substitution=args.span_substitution,
            rare_key_oversampling=args.rare_key_oversampling,
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
                results[name] = {
                    **score(got, held, schema, answer_errors(got, held)),
                    "answer_seconds": round(time.perf_counter() - started),
                }
        if args.gguf:
            gguf = Path(args.gguf)
        else:
            started = time.perf_counter()
            result = train_lora(
                tmp / "data",
                base,
                tmp / "adapter",
                lora=LoraParams(rank=args.rank, alpha=args.alpha or 2 * args.rank),
                train=TrainParams(
                    epochs=args.epochs,
                    max_steps=args.max_steps,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    eval_steps=args.eval_steps,
                    select_metric=args.select_metric,
                    group_by_length={"auto": "auto", "true": True, "false": False}[args.group_by_length],
                    save_steps=0,
                    log_every=20,
                    resume="never",
                ),
                seed=train_seed,
            )
            train_seconds, steps = round(time.perf_counter() - started), result.metrics.steps
            sized = {"epochs": result.resolved.epochs, "lr": result.resolved.lr}  # auto made concrete
            grouped = result.resolved.group_by_length
            if args.max_steps > 0:  # the steps decide, not the epochs: the share of the rows they saw
                sized["epochs"] = round(steps * args.batch_size / stats["rows"]["train"], 2)
            merged = merge_adapter(base, tmp / "adapter", tmp / "merged")
            auto = quants == ["auto"]
            info = export_gguf(
                merged,
                tmp / "data" / "prompts.json",
                tmp / "gguf",
                quants="auto" if auto else quants,
                val_path=tmp / "data" / "val.jsonl",
                name="task",
            )
            if auto:
                ladder = info["ladder"]
                quants = ["Q4_K_M", *sorted(q for q in info["files"] if q not in {"Q4_K_M", "lora"})]
            gguf = tmp / "gguf" / f"task.{quants[0]}.gguf"
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                for quant in quants:
                    shutil.copy2(tmp / "gguf" / f"task.{quant}.gguf", Path(args.keep))
        decodings = {
            "under the schema": (schema, False),
            "under the schema, spans": (schema, True),
            "free": (None, False),
        }
        # The first quantization answers three ways; a further one (the ladder) under the schema only.
        others = [] if args.gguf else [(q, tmp / "gguf" / f"task.{q}.gguf", "under the schema") for q in quants[1:]]
        first = [(Path(gguf).name.split(".")[-2], gguf, how) for how in decodings]
        for quant, path, how in first + others:
            json_schema, spans = decodings[how]
            started = time.perf_counter()
            got = gguf_generate(path, conversations, budget, json_schema, span_constraint=spans)
            name = f"{args.label} ({quant}, {how})"
            errors = answer_errors(got, held)
            results[name] = {
                **score(got, held, schema, errors),
                "answer_seconds": round(time.perf_counter() - started),
                "gguf_mb": round(Path(path).stat().st_size / 1e6, 1),
            }
            if args.answers:
                write_answers(Path(args.answers), name, held, got, errors)
            if json_schema and not spans and path == gguf:
                wrong = [(r, a.text) for r, a in zip(held, got) if parse_json(a.text) != r["data"]]
                for row, text in wrong[:8]:
                    print(f"  wrong: {row['query']!r}\n    got      {text}\n    expected {json.dumps(row['data'])}")
    settings = {
        "label": args.label,
        "epochs": sized["epochs"],
        "rank": args.rank,
        "alpha": args.alpha or 2 * args.rank,
        "lr": sized["lr"],
        "sized": [k for k in ("epochs", "lr") if getattr(args, k) == "auto"],
        "batch_size": args.batch_size,
        "eval_steps": args.eval_steps,
        "select_metric": args.select_metric,
        "system": args.system,
        "span_substitution": args.span_substitution,
        "rare_key_oversampling": args.rare_key_oversampling,
        "max_steps": args.max_steps,
        "val_fraction": args.val_fraction,
        **({"train_seed": train_seed} if train_seed != args.seed else {}),
        "group_by_length": grouped,
        "train_rows": stats["rows"]["train"] - stats["span_substituted"],
        "substituted_rows": stats["span_substituted"],
        "held_out": len(held),
        "steps": steps,
        "train_seconds": train_seconds,
        "gguf": args.gguf,
        "max_new_tokens": budget,
        "quants": quants,
        **({"ladder": ladder} if ladder else {}),
    }
    record = {**settings, "results": results}
    with open(args.out, "a") as out:
        out.write(json.dumps(record) + "\n")
    sys.stdout = stdout
    print(markdown([record]))


def markdown(records: list[dict]) -> str:
    """The runs of `records` (lines of bench/structured.jsonl) as Markdown: one row per system with its
    settings and training time, then slot F1 per slot name for each fine-tuned system under the schema."""
    lines = [
        "| run | system | train s | intent | slot P | slot R | slot F1 | exact | parse | schema-valid | cut "
        "| repeated key | slot errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        run = r["label"]
        for name, s in r["results"].items():
            trained = name.startswith(r["label"] + " (") and r.get("train_seconds") is not None
            lines.append(
                f"| {run} | {name.removeprefix(r['label']).strip(' ()') or name} | "
                f"{r['train_seconds'] if trained else '-'} | {s['intent_accuracy']:.0%} | "
                f"{s['slots']['precision']:.2f} | {s['slots']['recall']:.2f} | {s['slots']['f1']:.2f} | "
                f"{s['exact_rate']:.0%} | {s['json_parse_rate']:.0%} | {s['schema_valid_rate']:.0%} | "
                f"{s['truncated_rate']:.0%} | {s.get('repeated_keys', '-')} | "
                + ", ".join(f"{k} {v}" for k, v in s["slot_errors"].items())
                + " |"
            )
    lines += [""] + [
        (
            f"- {r['label']}: {r['epochs']:g} epochs ({r['steps']} steps of {r['batch_size']} rows), LoRA r{r['rank']} "
            f"alpha {r['alpha']}, lr {r['lr']:g}"
            + (f" ({' and '.join(r['sized'])} auto)" if r.get("sized") else "")
            + (
                f", the adapter of the best {r['select_metric']} of evaluations every {r['eval_steps']} steps"
                if r.get("select_metric", "eval_loss") != "eval_loss"
                else ""
            )
            if not r.get("gguf")
            else f"- {r['label']}: the kept GGUF {r['gguf']}"
        )
        + (
            f", {r['span_substitution']} span-substituted copies of each training query ({r['substituted_rows']} rows)"
            if r.get("span_substitution")
            else ""
        )
        + (
            f", up to ×{r['rare_key_oversampling']} copies for rows of a rare slot name"
            if r.get("rare_key_oversampling", 1) > 1
            else ""
        )
        + f", {r.get('system', 'long')} system prompt; {r['train_rows']} training queries, {r['held_out']} held "
        f"out, answers of at most {r['max_new_tokens']} tokens"
        for r in records
    ]
    for r in records:
        if r.get("ladder"):
            ladder = r["ladder"]
            lines.append(
                f"- {r['label']}, export.quants auto: perplexity on {ladder['rows']} validation rows, merged "
                f"{ladder['merged_perplexity']:.3f}; "
                + ", ".join(
                    f"{q} {m['perplexity']:.3f} ({m['vs_merged']:+.1%}, {m['bytes'] / 1e6:.0f} MB)"
                    for q, m in ladder["quants"].items()
                )
                + f"; chosen {ladder['chosen']} ({ladder['why']})"
            )
    chosen = {
        f"{r['label']} ({name.removeprefix(r['label']).strip(' ()')})": s["per_slot"]
        for r in records
        for name, s in r["results"].items()
        if name.startswith(r["label"] + " (") and "under the schema" in name
    }
    slots = sorted({slot for per in chosen.values() for slot, v in per.items() if v["support"]})
    lines += ["", "Slot F1 per slot name (support: reference values among the held-out queries):", ""]
    lines += ["| slot | support | " + " | ".join(chosen) + " |", "|---|---|" + "---|" * len(chosen)]
    for slot in slots:
        support = next(per[slot]["support"] for per in chosen.values() if slot in per)
        cells = " | ".join(f"{per[slot]['f1']:.2f}" if slot in per else "-" for per in chosen.values())
        lines.append(f"| {slot} | {support} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
