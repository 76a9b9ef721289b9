"""Dataset stage (text mode): token-aware chunks, deterministic split, prompts and stats.

Run: .venv/bin/pytest tests/test_dataset.py
"""

import json

import pytest

from helpers import TEXT, read_json
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
    assert stats["tasks"]["text"]["train"]["length_tokens"]["max"] <= 64
    assert stats["tasks"]["text"]["val"]["rows"] == len(val)
    # split by document: no validation chunk comes from a training document
    assert not {r["source"] for r in train} & {r["source"] for r in val}
    assert sorted(p.name for p in dataset_dir.iterdir()) == ["prompts.json", "stats.json", "train.jsonl", "val.jsonl"]


def test_split_is_deterministic_by_seed(tmp_path, text_dir, tiny_model_dir):
    def split(seed, name):
        build_dataset(
            text_dir, tiny_model_dir, tmp_path / name, max_seq_len=64, overlap_tokens=8, val_fraction=0.25, seed=seed
        )
        return (tmp_path / name / "val.jsonl").read_text()

    assert split(1, "a") == split(1, "b")
    assert split(1, "a") != split(2, "c")


def test_system_prompt_from_file(tmp_path, text_dir, tiny_model_dir):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Answer briefly.\n")
    build_dataset(text_dir, tiny_model_dir, tmp_path / "d", max_seq_len=64, overlap_tokens=8, system_prompt=str(prompt))
    assert read_json(tmp_path / "d" / "prompts.json") == {"text": "Answer briefly."}


def test_too_little_text(tmp_path, tiny_model_dir):
    from lorapipe.io import write_jsonl

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("Short.")
    write_jsonl(tmp_path / "t" / "manifest.jsonl", [{"source": "a", "status": "ok", "output": "a.txt"}])
    with pytest.raises(ValueError, match="at least 2 are needed"):
        build_dataset(tmp_path / "t", tiny_model_dir, tmp_path / "d", max_seq_len=64, overlap_tokens=8)


def test_too_few_labeled_rows_are_named_with_what_was_left_out(tmp_path, tiny_model_dir):
    labeled = tmp_path / "labeled"
    labeled.mkdir()
    row = {"prompt": "a question", "completion": "an answer"}
    (labeled / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in [row, row, {"prompt": ""}]) + "\n")
    with pytest.raises(ValueError) as error:
        build_dataset(
            tmp_path / "no-text", tiny_model_dir, tmp_path / "d", labeled_dir=labeled, mode="chat", on_bad_row="skip"
        )
    message = str(error.value)
    assert "has 1 row(s) from the labeled files matching ['*'] (left out so far: 1 duplicates, 1 bad rows" in message
    assert message.endswith("at least 2 are needed for a train and a validation split; add rows")


# --- chat mode, tasks, one system prompt ----------------------------------------------------------

from helpers import FIXTURES  # noqa: E402

JSON_PROMPT = "Analyse the query. Answer only with JSON: intent and slots."


@pytest.fixture
def labeled_dir(tmp_path):
    folder = tmp_path / "labeled"
    folder.mkdir()
    (folder / "snips.jsonl").write_text((FIXTURES / "labeled" / "snips_sample.jsonl").read_text())
    return folder


def _build(tmp_path, text_dir, tokenizer_dir, labeled, name="d", **kwargs):
    # the short prompt these row counts were written for (the schema's default is longer)
    kwargs = {
        "max_seq_len": 128,
        "overlap_tokens": 8,
        "val_fraction": 0.25,
        "seed": 5,
        "system_prompt": "You are a helpful assistant.",
        **kwargs,
    }
    stats = build_dataset(text_dir, tokenizer_dir, tmp_path / name, labeled_dir=labeled, **kwargs)
    return stats, read_jsonl(tmp_path / name / "train.jsonl"), read_jsonl(tmp_path / name / "val.jsonl")


def test_auto_mode_builds_both_tasks(tmp_path, text_dir, tiny_model_dir, labeled_dir):
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, labeled_dir)
    assert {r["task"] for r in train} == {"text", "chat"} and {r["task"] for r in val} == {"text", "chat"}
    chat = [r for r in train + val if r["task"] == "chat"]
    assert len(chat) == 42
    assert all(r["messages"][0]["role"] == "system" and r["messages"][-1]["role"] == "assistant" for r in chat)
    assert json.loads(chat[0]["messages"][-1]["content"])["intent"]
    assert set(stats["tasks"]) == {"text", "chat"}
    assert stats["tasks"]["chat"]["train"]["loss_tokens"] < stats["tasks"]["chat"]["train"]["tokens"]


def test_a_json_schema_beside_the_labeled_rows_is_not_read_as_rows(tmp_path, text_dir, tiny_model_dir, labeled_dir):
    (labeled_dir / "schema.json").write_text((FIXTURES / "labeled" / "snips_schema.json").read_text())
    _, train, val = _build(tmp_path, text_dir, tiny_model_dir, labeled_dir, mode="chat")
    assert len(train + val) == 42


def test_text_and_chat_modes_pick_one_kind(tmp_path, text_dir, tiny_model_dir, labeled_dir):
    _, train, _ = _build(tmp_path, text_dir, tiny_model_dir, labeled_dir, "t", mode="text")
    assert {r["task"] for r in train} == {"text"}
    _, train, _ = _build(tmp_path, text_dir, tiny_model_dir, labeled_dir, "c", mode="chat")
    assert {r["task"] for r in train} == {"chat"}


def test_one_system_prompt_in_rows_eval_requests_and_modelfile(tmp_path, text_dir, tiny_model_dir, labeled_dir):
    from lorapipe import export_gguf
    from lorapipe.evaluate import evaluation_requests

    tasks = [
        {"name": "docs", "kind": "text"},
        {
            "name": "snips",
            "kind": "chat",
            "sources": ["snips*.jsonl"],
            "format": "query_data",
            "system_prompt": JSON_PROMPT,
        },
    ]
    _, train, val = _build(
        tmp_path, text_dir, tiny_model_dir, labeled_dir, tasks=tasks, system_prompt="Answer from the documents."
    )
    prompts = read_json(tmp_path / "d" / "prompts.json")
    assert prompts == {"docs": "Answer from the documents.", "snips": JSON_PROMPT}
    in_rows = {r["messages"][0]["content"] for r in train + val if r["task"] == "snips"}
    in_requests = {
        messages[0]["content"] for messages, _ in evaluation_requests([r for r in val if r["task"] == "snips"], prompts)
    }
    export_gguf(
        tiny_model_dir, tmp_path / "d" / "prompts.json", tmp_path / "gguf", quants=["F32"], outtype="f32", name="tiny"
    )
    modelfile = (tmp_path / "gguf" / "Modelfile.snips").read_text()
    assert in_rows == in_requests == {JSON_PROMPT}
    assert f'SYSTEM """{JSON_PROMPT}"""' in modelfile
    assert 'SYSTEM """Answer from the documents."""' in (tmp_path / "gguf" / "Modelfile").read_text()


def test_labeled_system_messages_are_replaced_by_the_task_prompt(tmp_path, tiny_model_dir):
    folder = tmp_path / "labeled"
    folder.mkdir()
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Old prompt"},
                {"role": "user", "content": f"Q{i}"},
                {"role": "assistant", "content": f"A{i}"},
            ]
        }
        for i in range(4)
    ]
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats, train, val = _build(tmp_path, tmp_path / "none", tiny_model_dir, folder, system_prompt="New prompt")
    assert stats["system_prompts_replaced"] == 4
    assert {r["messages"][0]["content"] for r in train + val} == {"New prompt"}
    assert all(sum(m["role"] == "system" for m in r["messages"]) == 1 for r in train + val)


@pytest.mark.parametrize("policy", ["drop", "truncate", "error"])
def test_overflow_policies(tmp_path, tiny_model_dir, policy, capsys):
    folder = tmp_path / "labeled"
    folder.mkdir()
    rows = [{"prompt": f"short question {i}", "completion": f"short answer {i}"} for i in range(4)]
    rows.append({"prompt": "long question " * 10, "completion": "long answer " * 80})  # answer cut at 96
    rows.append({"prompt": "very long question " * 60, "completion": "unreachable"})  # no answer token fits
    (folder / "pc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if policy == "error":
        with pytest.raises(ValueError, match="pc.jsonl:5: the row has .* tokens, more than dataset.max_seq_len"):
            _build(tmp_path, tmp_path / "none", tiny_model_dir, folder, max_seq_len=96, on_overflow=policy)
        return
    stats, train, val = _build(tmp_path, tmp_path / "none", tiny_model_dir, folder, max_seq_len=96, on_overflow=policy)
    assert stats["overflowed"] == 2
    kept = [r for r in train + val if "long answer" in r["messages"][-1]["content"]]
    assert len(kept) == (1 if policy == "truncate" else 0)
    assert stats["dropped_overflow"] == (1 if policy == "truncate" else 2)
    assert not any("unreachable" in r["messages"][-1]["content"] for r in train + val)
    assert stats["overflow_longest_tokens"] > 96  # the length that would keep every row
    said = capsys.readouterr().out
    assert f"set dataset.max_seq_len to {stats['overflow_longest_tokens']} to train on them" in said


SNIPS_ROWS = [
    {"query": "play jazz", "data": {"intent": "PlayMusic", "slots": {"genre": "jazz"}}},
    {"query": "rain in Paris?", "data": {"intent": "GetWeather", "slots": {"city": "Paris"}}},
    {"query": "order pizza", "data": {"intent": "OrderPizza", "slots": {}}},  # not an intent of the schema
    {"query": "rate it 5", "data": {"intent": "RateBook", "slots": {"rating_value": 5}}},  # a number, not a string
    {"query": "find Dune", "data": {"intent": "SearchCreativeWork", "slots": {"object_name": "Dune"}}},
]


def test_answers_that_break_the_schema_are_named_before_training(tmp_path, tiny_model_dir, capsys):
    """eval.json_schema is checked against every answer of a JSON task: the rows that break it are
    named (file, row, why) and refused together, or left out and counted with on_bad_row skip."""
    from helpers import FIXTURES

    folder = tmp_path / "labeled"
    folder.mkdir()
    (folder / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SNIPS_ROWS))
    schema = FIXTURES / "labeled" / "snips_schema.json"
    with pytest.raises(ValueError) as refused:
        _build(tmp_path, tmp_path / "none", tiny_model_dir, folder, json_schema=schema)
    message = str(refused.value)
    assert "2 of 5 answers do not satisfy eval.json_schema" in message
    assert "q.jsonl:3: 'OrderPizza' is not one of" in message and "at intent" in message
    assert "q.jsonl:4:" in message and "at slots/rating_value" in message
    assert "dataset.on_bad_row: skip" in message
    stats, train, val = _build(
        tmp_path, tmp_path / "none", tiny_model_dir, folder, json_schema=schema, on_bad_row="skip"
    )
    assert stats["schema_invalid"] == 2 and len(train) + len(val) == 3
    assert "q.jsonl:3:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content,why",
    [
        ('{"type": "objekt"}', "is not a valid JSON Schema"),
        ("[1, 2]", "holds a JSON list, not a JSON Schema"),
        ("{not json", "is not JSON"),
    ],
)
def test_a_schema_file_that_is_no_json_schema_is_refused_naming_it(tmp_path, tiny_model_dir, content, why):
    folder = tmp_path / "labeled"
    folder.mkdir()
    (folder / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SNIPS_ROWS[:2]))
    (tmp_path / "bad.schema.json").write_text(content)
    with pytest.raises(ValueError, match=f"eval.json_schema: .*bad.schema.json {why}"):
        _build(tmp_path, tmp_path / "none", tiny_model_dir, folder, json_schema=tmp_path / "bad.schema.json")


def test_build_is_byte_identical_twice(tmp_path, text_dir, tiny_model_dir, labeled_dir):
    _build(tmp_path, text_dir, tiny_model_dir, labeled_dir, "a")
    _build(tmp_path, text_dir, tiny_model_dir, labeled_dir, "b")
    for name in ("train.jsonl", "val.jsonl", "prompts.json", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_near_duplicates_short_chunks_and_max_samples(tmp_path, tiny_model_dir):
    from lorapipe.io import write_jsonl

    text = tmp_path / "text"
    text.mkdir()
    base = TEXT * 2
    (text / "a.txt").write_text(base)
    (text / "b.txt").write_text(base.replace("thin matrices", "slim matrices", 1))  # a near copy
    (text / "c.txt").write_text("Tiny.")
    (text / "d.txt").write_text(
        "Evaluation compares the tuned model with its base on held-back rows. " * 3
        + "Perplexity, exact match and per-slot scores are written to reports."
    )
    write_jsonl(
        text / "manifest.jsonl",
        [{"source": n, "status": "ok", "output": n} for n in ("a.txt", "b.txt", "c.txt", "d.txt")],
    )
    stats, train, val = _build(
        tmp_path, text, tiny_model_dir, tmp_path / "none", max_seq_len=512, split_by="chunk", dedup_threshold=0.8
    )
    assert stats["deduplicated_near"] >= 1 and stats["dropped_short"] == 1
    assert not any(r["source"] == "b.txt" for r in train + val)
    stats, train, val = _build(
        tmp_path, text, tiny_model_dir, tmp_path / "none", "m", max_seq_len=32, split_by="chunk", max_samples=4
    )
    assert len(train) + len(val) == 4 and stats["sampled_out"] > 0


def test_stage_ends_with_the_plan_command(tmp_path, text_dir, tiny_model_dir, capsys):
    _build(tmp_path, text_dir, tiny_model_dir, tmp_path / "none")
    assert capsys.readouterr().out.rstrip().endswith("lorapipe plan")


def test_nothing_to_build_from(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="no text was extracted"):
        _build(tmp_path, tmp_path / "none", tiny_model_dir, tmp_path / "none")


def test_an_empty_manifest_and_labeled_rows_build_the_chat_task_alone(tmp_path, tiny_model_dir, labeled_dir):
    # what extract writes when data/raw/docs holds no documents (the structured-task recipe)
    empty = tmp_path / "extracted"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    stats, train, val = _build(tmp_path, empty, tiny_model_dir, labeled_dir)
    assert set(stats["tasks"]) == {"chat"} and len(train + val) == 42
    with pytest.raises(ValueError, match=r"text task but .*manifest.jsonl lists no extracted document.*mode: chat"):
        _build(tmp_path, empty, tiny_model_dir, labeled_dir, "t", mode="text")
    with pytest.raises(ValueError, match="no text was extracted and no labeled examples"):
        _build(tmp_path, empty, tiny_model_dir, tmp_path / "none", "n")


def test_dataset_cli(tmp_path, text_dir, tiny_model_dir, monkeypatch):
    from helpers import ROOT
    from lorapipe.cli import main

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "base").symlink_to(tiny_model_dir)
    monkeypatch.chdir(work)
    assert (
        main(
            [
                "dataset",
                "--params",
                str(ROOT / "params.yaml"),
                "--input-dir",
                str(text_dir),
                "--labeled-dir",
                str(tmp_path / "none"),
                "--output-dir",
                str(tmp_path / "out"),
                "--max-seq-len",
                "64",
                "--overlap-tokens",
                "8",
                "--val-ratio",
                "0.3",
                "--max-samples",
                "6",
            ]
        )
        == 0
    )
    stats = read_json(tmp_path / "out" / "stats.json")
    assert stats["max_seq_len"] == 64 and stats["rows"]["train"] + stats["rows"]["val"] == 6


# --- chat templates without a system role, prompts the Modelfile cannot hold, special-token text ---


def test_a_template_without_a_system_role_builds_folded_rows(tmp_path, tiny_model_dir, labeled_dir, capsys):
    from helpers import model_with_template
    from lorapipe.chat_encoder import fold_system
    from lorapipe.rows import tokenize_row

    gemma2 = model_with_template(tiny_model_dir, tmp_path / "gemma2", "gemma2")
    # Gemma's markers are plain text to this tokenizer: longer rows than ChatML's, so max_seq_len 256
    stats, train, val = _build(
        tmp_path, tmp_path / "none", gemma2, labeled_dir, mode="chat", system_prompt="JSON.", max_seq_len=256
    )
    assert stats["rows"]["train"] + stats["rows"]["val"] == 42 and stats["dropped"] == 0
    assert "the chat template has no system role" in capsys.readouterr().out
    row = train[0]
    assert row["messages"][0] == {"role": "system", "content": "JSON."}  # rows keep the task's prompt as it is
    tokenizer = load_tokenizer(gemma2)
    ids, _ = tokenize_row(row, tokenizer)
    folded = tokenizer.apply_chat_template(fold_system(row["messages"]), tokenize=False)
    assert tokenizer.decode(ids) == folded and "<start_of_turn>user\nJSON.\n\n" in folded


def test_rows_a_template_refuses_name_file_and_row_or_are_skipped(tmp_path, tiny_model_dir):
    from helpers import model_with_template

    folder = tmp_path / "labeled"
    folder.mkdir()
    turns = [[{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}] for i in range(4)]
    turns.insert(2, [{"role": "user", "content": "Q"}, *turns[0]])  # row 3: two user turns in a row
    (folder / "chat.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in turns))
    gemma2 = model_with_template(tiny_model_dir, tmp_path / "gemma2", "gemma2")
    with pytest.raises(ValueError, match=r"chat.jsonl:3: .*roles must alternate.*on_bad_row: skip") as error:
        _build(tmp_path, tmp_path / "none", gemma2, folder, mode="chat")
    assert "TemplateError" in str(error.value) and not (tmp_path / "d").exists()
    stats, train, val = _build(tmp_path, tmp_path / "none", gemma2, folder, mode="chat", on_bad_row="skip")
    assert stats["bad_rows_skipped"] == 1 and len(train + val) == 4


def test_a_system_prompt_the_modelfile_cannot_hold_is_refused_before_any_work(tmp_path, text_dir, tiny_model_dir):
    prompt = 'Answer with JSON, e.g.\n"""{"intent": "PlayMusic"}"""\nNo prose.'
    with pytest.raises(ValueError, match=r"task 'text': its system prompt .* line 2 ends with three double quotes"):
        _build(tmp_path, text_dir, tiny_model_dir, None, system_prompt=prompt)
    assert not (tmp_path / "d").exists()
    stats, _, _ = _build(tmp_path, text_dir, tiny_model_dir, None, system_prompt='Say "yes"\nor "no".')
    assert read_json(tmp_path / "d" / "prompts.json") == {"text": 'Say "yes"\nor "no".'}


def test_special_token_text_in_documents_and_questions_stays_text(tmp_path, tiny_model_dir):
    from lorapipe.io import write_jsonl
    from lorapipe.rows import tokenize_row

    text_dir, folder = tmp_path / "text", tmp_path / "labeled"
    text_dir.mkdir()
    folder.mkdir()
    marker = "ChatML ends each turn with <|im_end|> and starts one with <|im_start|>. "
    (text_dir / "a.txt").write_text(marker * 12)
    (text_dir / "b.txt").write_text("Another document about adapters and their rank. " * 12)
    write_jsonl(
        text_dir / "manifest.jsonl",
        [{"source": s, "status": "ok", "output": o} for s, o in (("a.md", "a.txt"), ("b.md", "b.txt"))],
    )
    rows = [{"prompt": f"What does <|im_end|> mean? ({i})", "completion": "It closes a turn."} for i in range(4)]
    (folder / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, folder, max_seq_len=48, split_by="chunk")
    tokenizer = load_tokenizer(tiny_model_dir)
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")}
    for row in train + val:
        ids, _ = tokenize_row(row, tokenizer)
        assert len(ids) <= 48
        expected = 2 * len(row["messages"]) if "messages" in row else 0  # the template's markers only
        assert sum(i in special for i in ids) == expected
    assert any("<|im_end|>" in r["text"] for r in train + val if "text" in r)
    # chunks are counted in literal tokens: one marker is 6 tokens of text, not one control token
    assert len(tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]) > 1
