"""Dataset stage: the synth stage's question–answer pairs as the chat task "qa", held out by construction
(no "eval" pair in either split, no pair of a validation document in training).

Run: .venv/bin/pytest tests/test_dataset_qa.py
"""

from __future__ import annotations

import json

import pytest

from helpers import read_json
from lorapipe.dataset import build_dataset
from lorapipe.io import read_jsonl, write_jsonl

QA_PROMPT = "Answer from the documents, briefly."
SOURCES = [f"docs/doc{i}.md" for i in range(3)]  # the text_dir fixture's documents


def _pairs() -> list[dict]:
    """Four pairs per document of the text_dir fixture: the first marked eval, the rest train."""
    rows = []
    for d, source in enumerate(SOURCES):
        for n in range(4):
            rows.append(
                {
                    "question": f"What does document {d} say in point {n}?",
                    "answer": f"Point {n} of document {d}.",
                    "source": source,
                    "passage_id": f"{source}#{n // 2}",
                    "split": "eval" if n == 0 else "train",
                }
            )
    return rows


@pytest.fixture
def synth_dir(tmp_path):
    folder = tmp_path / "synth"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", _pairs())
    return folder


def _build(tmp_path, text_dir, tiny_model_dir, synth, name="d", **kwargs):
    kwargs = {
        "max_seq_len": 128,
        "overlap_tokens": 8,
        "val_fraction": 0.25,
        "seed": 1,
        "system_prompt": "You answer from the documents.",
        "synth_dir": synth,
        "qa_system_prompt": QA_PROMPT,
        **kwargs,
    }
    stats = build_dataset(text_dir, tiny_model_dir, tmp_path / name, **kwargs)
    return stats, read_jsonl(tmp_path / name / "train.jsonl"), read_jsonl(tmp_path / name / "val.jsonl")


def _questions(rows: list[dict]) -> set[str]:
    return {r["messages"][1]["content"] for r in rows if r["task"] == "qa"}


EVAL_QUESTIONS = {p["question"] for p in _pairs() if p["split"] == "eval"}


def test_pairs_become_the_qa_task_held_out_by_construction(tmp_path, text_dir, tiny_model_dir, synth_dir, capsys):
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, synth_dir)
    assert not EVAL_QUESTIONS & (_questions(train) | _questions(val))  # evaluation questions: in neither split
    validation_documents = {r["source"] for r in val if r["task"] == "text"}
    training_documents = {r["source"] for r in train if r["task"] == "text"}
    assert validation_documents and training_documents  # the text task is split by document
    assert not {r["source"] for r in train if r["task"] == "qa"} & validation_documents
    expected_train = [p for p in _pairs() if p["split"] == "train" and p["source"] not in validation_documents]
    expected_val = [p for p in _pairs() if p["split"] == "train" and p["source"] in validation_documents]
    qa_train = [r for r in train if r["task"] == "qa"]
    assert qa_train == [
        {
            "messages": [
                {"role": "system", "content": QA_PROMPT},
                {"role": "user", "content": p["question"]},
                {"role": "assistant", "content": p["answer"]},
            ],
            "source": p["source"],
            "task": "qa",
            "passage_id": p["passage_id"],
            "split": "train",
        }
        for p in expected_train
    ]
    assert _questions(val) == {p["question"] for p in expected_val}
    assert read_json(tmp_path / "d" / "prompts.json") == {"text": "You answer from the documents.", "qa": QA_PROMPT}
    assert stats["synth_pairs_held_out"] == len(EVAL_QUESTIONS) == 3
    assert stats["tasks"]["qa"]["kind"] == "chat"
    assert stats["tasks"]["qa"]["train"]["rows"] == len(expected_train)
    assert stats["tasks"]["qa"]["val"]["rows"] == len(expected_val)
    assert stats["rows"] == {"train": len(train), "val": len(val)}
    out = capsys.readouterr().out
    assert f"task qa (chat): {len(expected_train)} train / {len(expected_val)} val rows" in out
    assert "3 question–answer pairs held out" in out


def test_split_by_chunk_holds_out_only_the_eval_pairs(tmp_path, text_dir, tiny_model_dir, synth_dir):
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, split_by="chunk")
    assert not EVAL_QUESTIONS & (_questions(train) | _questions(val))
    trainable = {p["question"] for p in _pairs() if p["split"] == "train"}
    assert _questions(train) | _questions(val) == trainable and not _questions(train) & _questions(val)
    assert _questions(train) and _questions(val)  # split row by row, like other chat tasks
    assert stats["tasks"]["qa"]["train"]["rows"] + stats["tasks"]["qa"]["val"]["rows"] == len(trainable)
    again = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, "again", split_by="chunk")[1]
    assert again == train  # deterministic by seed


def test_no_pairs_file_or_an_empty_one_means_no_qa_task(tmp_path, text_dir, tiny_model_dir, capsys):
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, tmp_path / "absent")
    assert {r["task"] for r in train + val} == {"text"} and set(stats["tasks"]) == {"text"}
    assert read_json(tmp_path / "d" / "prompts.json") == {"text": "You answer from the documents."}
    assert stats["synth_pairs_held_out"] == 0
    assert "no question–answer task (the synth stage writes it: `dvc repro synth`)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pairs.jsonl").write_text("")  # synth.questions_per_passage: 0
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, tmp_path / "empty", "e")
    assert set(stats["tasks"]) == {"text"}
    stats, _, _ = _build(tmp_path, text_dir, tiny_model_dir, None, "n")  # the API's default: no synth folder
    assert set(stats["tasks"]) == {"text"}


def test_only_eval_pairs_give_an_empty_qa_task_and_no_error(tmp_path, text_dir, tiny_model_dir):
    folder = tmp_path / "only_eval"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", [p for p in _pairs() if p["split"] == "eval"])
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, folder)
    assert not _questions(train) | _questions(val)
    assert stats["tasks"]["qa"]["train"]["rows"] == 0 and stats["synth_pairs_held_out"] == 3


def test_listed_tasks_get_the_qa_task_too_unless_one_has_its_name(tmp_path, text_dir, tiny_model_dir, synth_dir):
    tasks = [{"name": "docs", "kind": "text", "system_prompt": "Docs."}]
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, tasks=tasks, qa_task="questions")
    assert read_json(tmp_path / "d" / "prompts.json") == {"docs": "Docs.", "questions": QA_PROMPT}
    assert {r["task"] for r in train} == {"docs", "questions"}
    validation_documents = {r["source"] for r in val if r["task"] == "docs"}
    assert not {r["source"] for r in train if r["task"] == "questions"} & validation_documents
    tasks = [{"name": "qa", "kind": "text"}]
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, "taken", tasks=tasks)
    assert set(stats["tasks"]) == {"qa"} and {r["task"] for r in train + val} == {"qa"}
    assert all("text" in r for r in train + val)  # the user's task, not the pairs


def test_mode_text_trains_no_pairs_and_says_so(tmp_path, text_dir, tiny_model_dir, synth_dir, capsys):
    stats, train, val = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, mode="text")
    assert set(stats["tasks"]) == {"text"}
    assert "dataset.mode is text: the 12 question–answer pairs" in capsys.readouterr().out


def test_the_qa_system_prompt_from_a_file_and_checked_for_the_modelfile(tmp_path, text_dir, tiny_model_dir, synth_dir):
    prompt = tmp_path / "qa_prompt.txt"
    prompt.write_text("Answer in one sentence.\n")
    _, train, _ = _build(tmp_path, text_dir, tiny_model_dir, synth_dir, qa_system_prompt=str(prompt))
    assert read_json(tmp_path / "d" / "prompts.json")["qa"] == "Answer in one sentence."
    assert {r["messages"][0]["content"] for r in train if r["task"] == "qa"} == {"Answer in one sentence."}
    bad = 'Reply like\n"""this"""\nplease.'
    with pytest.raises(ValueError, match=r"task 'qa': its system prompt .* three double quotes"):
        _build(tmp_path, text_dir, tiny_model_dir, synth_dir, "bad", qa_system_prompt=bad)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"question": "Q?", "answer": "A.", "source": "docs/doc0.md"}), "'split' must be one of"),
        (
            json.dumps({"question": "", "answer": "A.", "source": "x", "split": "train"}),
            "'question' must be a non-empty",
        ),
        (json.dumps(["a list"]), "not a JSON object"),
    ],
)
def test_a_malformed_pair_names_file_and_line(tmp_path, text_dir, tiny_model_dir, synth_dir, line, problem):
    file = synth_dir / "pairs.jsonl"
    file.write_text(file.read_text() + "\n" + line + "\n")  # a blank line before it still counts
    with pytest.raises(ValueError, match=rf"pairs.jsonl:14: {problem}"):
        _build(tmp_path, text_dir, tiny_model_dir, synth_dir)
    assert not (tmp_path / "d").exists()


def test_dataset_cli_reads_the_synth_dir_and_synth_params(tmp_path, text_dir, tiny_model_dir, synth_dir, monkeypatch):
    from helpers import ROOT
    from lorapipe.cli import main

    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "base").symlink_to(tiny_model_dir)
    monkeypatch.chdir(work)
    argv = ["dataset", "--params", str(ROOT / "params.yaml"), "--input-dir", str(text_dir)]
    argv += ["--labeled-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"), "--max-seq-len", "64"]
    argv += ["--overlap-tokens", "8"]
    argv += ["--synth-dir", str(synth_dir), "--synth.task", "facts", "--synth.system_prompt", "Facts only."]
    assert main(argv) == 0
    prompts = read_json(tmp_path / "out" / "prompts.json")
    assert prompts["facts"] == "Facts only." and list(prompts)[0] != "facts"  # the first task stays the text's
    assert read_json(tmp_path / "out" / "stats.json")["synth_pairs_held_out"] == 3
