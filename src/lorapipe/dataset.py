"""Build training rows from extracted text (the dataset stage, text mode).

    from lorapipe import build_dataset
    stats = build_dataset("data/extracted_text", "models/base", "data/dataset", max_seq_len=512)

Text is cut into windows of `max_seq_len` tokens of the base tokenizer that overlap by
`overlap_tokens`; a window ends at a paragraph or sentence break in its last quarter where there is
one. Chunks are split into train and validation deterministically by `seed`.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

from lorapipe import paths
from lorapipe.io import read_jsonl, write_json, write_jsonl
from lorapipe.models import load_tokenizer

TEXT_TASK = "text"
_BREAK = re.compile(r"\n\n|[.!?][\s\"')\]]")


def _special_count(tokenizer) -> int:
    """Tokens the tokenizer adds around a text (BOS/EOS), reserved inside every window."""
    return len(tokenizer("a")["input_ids"]) - len(tokenizer("a", add_special_tokens=False)["input_ids"])


def chunk_text(text: str, tokenizer, max_seq_len: int, overlap_tokens: int) -> list[str]:
    """Cut `text` into pieces of at most `max_seq_len` tokens (special tokens included)."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    # 2 tokens of slack: a piece re-tokenized on its own can merge differently at its edges.
    window = max(1, max_seq_len - _special_count(tokenizer) - 2)
    chunks, start = [], 0
    while start < len(offsets):
        end = min(start + window, len(offsets))
        if end < len(offsets):
            # Prefer to end at a break in the window's last quarter, so chunks end on whole sentences.
            floor = start + (3 * window) // 4
            for cut in range(end - 1, floor, -1):
                if _BREAK.search(text[offsets[cut - 1][0] : offsets[cut][1]]):  # a break between the two tokens
                    end = cut
                    break
        piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        while end - start > 1 and len(tokenizer(piece)["input_ids"]) > max_seq_len:
            end -= 1
            piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
        if piece:
            chunks.append(piece)
        if end >= len(offsets):
            break
        start = max(end - overlap_tokens, start + 1)
    return chunks


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"p50": 0, "p90": 0, "max": 0}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1]}


def build_dataset(
    text_dir: str | Path = paths.EXTRACTED,
    tokenizer_dir: str | Path = paths.BASE_MODEL,
    out_dir: str | Path = paths.DATASET,
    max_seq_len: int = 512,
    overlap_tokens: int = 64,
    val_fraction: float = 0.1,
    seed: int = 42,
    system_prompt: str = "You are a helpful assistant.",
) -> dict:
    """Write ``train.jsonl``, ``val.jsonl``, ``prompts.json`` and ``stats.json`` into `out_dir`."""
    text_dir, out_dir = Path(text_dir), Path(out_dir)
    manifest_path = text_dir / paths.MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run the extract stage first")
    tokenizer = load_tokenizer(tokenizer_dir)
    prompt = Path(system_prompt).read_text().strip() if Path(system_prompt).is_file() else system_prompt

    rows, seen, duplicates = [], set(), 0
    for entry in read_jsonl(manifest_path):
        if entry["status"] != "ok":
            continue
        text = (text_dir / entry["output"]).read_text(encoding="utf-8")
        for piece in chunk_text(text, tokenizer, max_seq_len, overlap_tokens):
            key = hashlib.sha256(piece.encode()).hexdigest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append({"text": piece, "source": entry["source"], "task": TEXT_TASK})
    if len(rows) < 2:
        raise ValueError(
            f"only {len(rows)} chunk(s) of text in {text_dir}: need at least 2 for a train and a validation "
            "split; add documents or lower dataset.max_seq_len"
        )
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = min(len(rows) - 1, max(1, round(len(rows) * val_fraction)))
    val = [rows[i] for i in sorted(order[:n_val])]
    train = [rows[i] for i in sorted(order[n_val:])]

    lengths = {name: [len(tokenizer(r["text"])["input_ids"]) for r in split]
               for name, split in (("train", train), ("val", val))}
    stats = {
        "mode": "text",
        "max_seq_len": max_seq_len,
        "rows": {"train": len(train), "val": len(val)},
        "rows_per_task": {TEXT_TASK: {"train": len(train), "val": len(val)}},
        "tokens": {name: sum(values) for name, values in lengths.items()},
        "length_tokens": _percentiles(lengths["train"] + lengths["val"]),
        "dropped": 0,
        "deduplicated": duplicates,
        "sources": len({r["source"] for r in rows}),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / paths.TRAIN_ROWS.name, train)
    write_jsonl(out_dir / paths.VAL_ROWS.name, val)
    write_json(out_dir / paths.PROMPTS.name, {TEXT_TASK: prompt})
    write_json(out_dir / paths.DATASET_STATS.name, stats)
    print(f"[dataset] {len(train)} train / {len(val)} val chunks of ≤{max_seq_len} tokens "
          f"({stats['tokens']['train']} train tokens, {duplicates} duplicates removed)", flush=True)
    return stats
