"""Dataset stage (text mode): token-aware chunks, deterministic split, prompts and stats.

Run: .venv/bin/pytest tests/test_dataset.py
"""

import pytest

from conftest import TEXT, read_json
from lorapipe import build_dataset, chunk_text
from lorapipe.io import read_jsonl
from lorapipe.models import load_tokenizer


def test_chunks_fit_and_overlap(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = TEXT * 5
    chunks = chunk_text(text, tokenizer, max_seq_len=48, overlap_tokens=8)
    assert len(chunks) > 3
    for chunk in chunks:
        assert len(tokenizer(chunk)["input_ids"]) <= 48
        assert chunk in text
    for first, second in zip(chunks, chunks[1:]):
        tail = tokenizer.decode(tokenizer(first, add_special_tokens=False)["input_ids"][-3:]).strip()
        assert tail in second  # consecutive chunks share their overlap
    covered = "".join(chunks)
    assert all(word in covered for word in text.split())


def test_chunks_prefer_sentence_breaks(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = " ".join(f"Sentence number {i} is short." for i in range(80))  # a break every ~7 tokens
    chunks = chunk_text(text, tokenizer, max_seq_len=64, overlap_tokens=0)
    assert len(chunks) > 3
    assert all(chunk.endswith("is short.") for chunk in chunks)


def test_dataset_outputs_contract(dataset_dir):
    train, val = read_jsonl(dataset_dir / "train.jsonl"), read_jsonl(dataset_dir / "val.jsonl")
    assert train and val
    for row in train + val:
        assert set(row) == {"text", "source", "task"} and row["task"] == "text"
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert read_json(dataset_dir / "prompts.json") == {"text": "You answer from the documents."}
    stats = read_json(dataset_dir / "stats.json")
    assert stats["max_seq_len"] == 64
    assert stats["rows"] == {"train": len(train), "val": len(val)}
    assert stats["length_tokens"]["max"] <= 64
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["prompts.json", "stats.json", "train.jsonl", "val.jsonl"]


def test_split_is_deterministic_by_seed(tmp_path, text_dir, tiny_model_dir):
    def split(seed, name):
        build_dataset(text_dir, tiny_model_dir, tmp_path / name, max_seq_len=64, overlap_tokens=8,
                      val_fraction=0.25, seed=seed)
        return (tmp_path / name / "val.jsonl").read_text()

    assert split(1, "a") == split(1, "b")
    assert split(1, "a") != split(2, "c")


def test_system_prompt_from_file(tmp_path, text_dir, tiny_model_dir):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer briefly.\n")
    build_dataset(text_dir, tiny_model_dir, tmp_path / "d", max_seq_len=64, overlap_tokens=8,
                  system_prompt=str(prompt))
    assert read_json(tmp_path / "d" / "prompts.json") == {"text": "Answer briefly."}


def test_too_little_text(tmp_path, tiny_model_dir):
    from lorapipe.io import write_jsonl

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("Short.")
    write_jsonl(tmp_path / "t" / "manifest.jsonl", [{"source": "a", "status": "ok", "output": "a.txt"}])
    with pytest.raises(ValueError, match="need at least 2"):
        build_dataset(tmp_path / "t", tiny_model_dir, tmp_path / "d", max_seq_len=64, overlap_tokens=8)
