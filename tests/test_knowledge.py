"""The knowledge evaluation: scores on canned answers, question files and their errors, the selection of
trained and control questions, knowledge.json / knowledge.md with fake answerers, and the real answering
path of evaluate_base on the tiny model.

Run: .venv/bin/pytest tests/test_knowledge.py
"""

from __future__ import annotations

import json

import pytest

from lorapipe import knowledge
from lorapipe.io import write_json, write_jsonl
from lorapipe.retrieval import build_index
from lorapipe.scoring import answer_rouge_l, answer_tokens, key_hit, score_knowledge, token_f1

PASSAGES = {
    "docs/lora.md": "LoRA freezes the pretrained weights and trains two small low-rank matrices per layer.",
    "docs/bread.md": "Sourdough bread rises because wild yeast ferments the flour.",
    "docs/volcano.md": "A volcano erupts when magma rises through cracks in the crust.",
    "docs/chess.md": "Castling is illegal while the king is in check.",
}
TRAINED = ("docs/lora.md", "docs/bread.md")  # the rest are control documents
PAIRS = [
    ("docs/lora.md", "What does LoRA train?", "two small low-rank matrices", "eval"),
    ("docs/lora.md", "What does LoRA freeze?", "the pretrained weights", "eval"),
    ("docs/lora.md", "How many matrices per layer?", "two", "train"),
    ("docs/bread.md", "Why does sourdough bread rise?", "wild yeast ferments the flour", "eval"),
    ("docs/volcano.md", "When does a volcano erupt?", "when magma rises through cracks", "eval"),
    ("docs/volcano.md", "What does magma rise through?", "cracks in the crust", "eval"),
    ("docs/chess.md", "When is castling illegal?", "while the king is in check", "eval"),
]
SYSTEM = "Answer the question from what you know about the documents."


# --- scores -------------------------------------------------------------------------------------------


def test_scores_on_canned_answers():
    assert answer_tokens("The LoRA adapter, an (ugly) low-rank thing!") == [
        "lora",
        "adapter",
        "ugly",
        "lowrank",
        "thing",
    ]
    assert token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)  # 2 of 2 and 2 of 3 words
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # shared words counted with multiplicity
    assert token_f1("", "") == 1.0 and token_f1("the", "a") == 1.0  # nothing left on either side
    assert token_f1("", "cat") == 0.0 and token_f1("dog", "cat") == 0.0
    # LCS of "lora trains two matrices" and "two lowrank matrices": "two matrices" = 2 of 4 and 2 of 3
    assert answer_rouge_l("LoRA trains two matrices.", "Two low-rank matrices") == pytest.approx(
        2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
    )
    assert answer_rouge_l("THE Cat, sat", "cat sat") == 1.0
    assert key_hit("It trains two LOW-RANK  matrices", ["low-rank", "two"]) and key_hit("anything", [])
    assert key_hit("low rank", ["low-rank"]) and not key_hit("lowrank", ["low-rank"])  # a dash is a space
    scores = score_knowledge(
        ["two matrices", "no idea", "wild yeast"],
        ["two low-rank matrices", "the pretrained weights", "wild yeast ferments"],
        [["low-rank"], [], ["yeast"]],
    )
    f1 = (2 * 1 * (2 / 3) / (1 + 2 / 3) + 0 + 2 * 1 * (2 / 3) / (1 + 2 / 3)) / 3
    assert scores == {"f1": round(f1, 4), "rouge_l": round(f1, 4), "key_hit": 0.5, "n": 3, "keyed": 2}
    assert score_knowledge([], [], []) == {"f1": None, "rouge_l": None, "key_hit": None, "n": 0, "keyed": 0}


# --- question files -----------------------------------------------------------------------------------


def test_user_questions_are_read_with_optional_source_and_key(tmp_path):
    path = tmp_path / "eval_qa.jsonl"
    rows = [
        {"question": " What is LoRA? ", "answer": "low-rank adaptation", "key": "low-rank", "source": "lora.md"},
        {"question": "Q2", "answer": "A2", "key": ["a", "b"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert knowledge.read_user_questions(path) == [
        {"question": "What is LoRA?", "answer": "low-rank adaptation", "source": "lora.md", "key": ["low-rank"]},
        {"question": "Q2", "answer": "A2", "source": None, "key": ["a", "b"]},
    ]
    assert knowledge.read_user_questions(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "Q", "answer": ', "not valid JSON"),
        ('["Q", "A"]', "a question is a JSON object"),
        ('{"answer": "A"}', '"question" is missing'),
        ('{"question": "  ", "answer": "A"}', '"question" is not a non-blank string'),
        ('{"question": "Q", "answer": 3}', '"answer" is not a non-blank string'),
        ('{"question": "Q", "answer": "A", "key": 3}', '"key" must be a non-blank string or a list'),
        ('{"question": "Q", "answer": "A", "key": ["ok", 1]}', '"key" must be'),
        ('{"question": "Q", "answer": "A", "key": [""]}', '"key" must be'),
        ('{"question": "Q", "answer": "A", "source": 7}', '"source" must be'),
    ],
)
def test_a_malformed_question_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "eval_qa.jsonl"
    path.write_text('{"question": "Q1", "answer": "A1"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match="eval_qa.jsonl:3: ") as error:
        knowledge.read_user_questions(path)
    assert message in str(error.value)


def test_a_malformed_synth_pair_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"question": "Q", "answer": "A", "split": "eval", "source": "a.md"}\n{"question": "Q2", "split": "eval"}\n'
    )
    with pytest.raises(ValueError, match='pairs.jsonl:2: "answer" is missing'):
        knowledge.read_synth_questions(path)
    path.write_text(
        '{"question": "Q", "answer": "A", "split": "train"}\n{"question": "Q2", "answer": "A2", "split": "eval"}\n'
    )
    assert knowledge.read_synth_questions(path) == [{"question": "Q2", "answer": "A2", "source": None, "key": []}]


def _project(tmp_path, user_rows=None):
    """A synth folder (passages, index, pairs), train.jsonl of the trained documents and prompts.json."""
    synth, dataset = tmp_path / "synth", tmp_path / "dataset"
    passages = [{"id": f"{s}#0", "source": s, "passage": 0, "text": t} for s, t in PASSAGES.items()]
    synth.mkdir(parents=True)
    write_jsonl(synth / "passages.jsonl", passages)
    build_index(passages, synth / "index")
    write_jsonl(
        synth / "pairs.jsonl",
        [{"question": q, "answer": a, "source": s, "passage_id": f"{s}#0", "split": sp} for s, q, a, sp in PAIRS],
    )
    dataset.mkdir(parents=True)
    train = [{"text": PASSAGES[s], "source": s, "task": "text"} for s in TRAINED]
    train.append({"messages": [], "source": "docs/lora.md", "task": "qa", "passage_id": "docs/lora.md#0"})
    write_jsonl(dataset / "train.jsonl", train)
    write_json(dataset / "prompts.json", {"text": "Continue.", "qa": SYSTEM})
    eval_qa = tmp_path / "eval_qa.jsonl"
    if user_rows is not None:
        write_jsonl(eval_qa, user_rows)
    return {
        "synth_dir": synth,
        "eval_qa_path": eval_qa,
        "train_path": dataset / "train.jsonl",
        "prompts_path": dataset / "prompts.json",
    }


USER = [
    {"question": "What does LoRA freeze?", "answer": "the pretrained weights", "source": "lora.md", "key": "weights"},
    {"question": "Why does bread rise?", "answer": "yeast", "source": "docs/bread.md"},
    {"question": "What makes a volcano erupt?", "answer": "magma rises", "source": "volcano.md", "key": ["magma"]},
    {"question": "Who wrote this?", "answer": "nobody", "source": "elsewhere.pdf"},
    {"question": "What is 2 + 2?", "answer": "4"},
]


def test_selection_mixes_trained_and_control_and_groups_every_question(tmp_path):
    questions = knowledge.prepare_questions(**_project(tmp_path, USER), knowledge_questions=4, retrieval_top_k=1)
    synth = [q for q in questions if q["set"] == "synth"]
    # trained and control alternate; inside a group the documents take turns
    assert [(q["source"], q["group"]) for q in synth] == [
        ("docs/lora.md", "trained"),
        ("docs/volcano.md", "control"),
        ("docs/bread.md", "trained"),
        ("docs/chess.md", "control"),
    ]
    user = [q for q in questions if q["set"] == "user"]
    assert [(q["source"], q["group"]) for q in user] == [  # the first four, file names resolved
        ("docs/lora.md", "trained"),
        ("docs/bread.md", "trained"),
        ("docs/volcano.md", "control"),
        ("elsewhere.pdf", "unknown"),
    ]
    first = synth[0]
    assert first["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first["question"]}]
    assert first["passages"] == ["docs/lora.md#0"]  # the passage the question was made from, by BM25
    assert first["retrieval_messages"][1]["content"].startswith(
        "Answer the question using these passages.\n\n[1] (docs/lora.md) LoRA freezes"
    )
    assert knowledge.prepare_questions(**_project(tmp_path / "b"), knowledge_questions=0) == []
    all_of_them = knowledge.prepare_questions(**_project(tmp_path / "c"), knowledge_questions=10)
    assert len(all_of_them) == 6 and {q["set"] for q in all_of_them} == {"synth"}  # no eval_qa.jsonl: no user set


def test_select_questions_fills_from_the_other_group_when_one_runs_out():
    questions = [{"source": f"t{i}", "group": "trained"} for i in range(3)] + [{"source": "c", "group": "control"}]
    assert [q["source"] for q in knowledge.select_questions(questions, 3, mix=True)] == ["t0", "c", "t1"]
    assert [q["source"] for q in knowledge.select_questions(questions, 9, mix=True)] == ["t0", "c", "t1", "t2"]
    assert knowledge.select_questions(questions, 2, mix=False) == questions[:2]


# --- the reports, with fake answerers ------------------------------------------------------------------


@pytest.fixture
def fake_models(monkeypatch):
    """Answerers that run no model: the base knows nothing closed-book; with passages in the prompt every
    model answers right; the fine-tuned model answers right closed-book for trained documents; the GGUF
    answers "two" to everything. Records every call."""
    import lorapipe.generation

    calls = []
    answers = {q: a for _, q, a, _ in PAIRS} | {r["question"]: r["answer"] for r in USER}
    trained = {q for s, q, _, _ in PAIRS if s in TRAINED} | {r["question"] for r in USER[:2]}

    def hf_answers(model_dir, requests, max_new_tokens):
        calls.append(("hf", str(model_dir), len(requests), max_new_tokens))
        out = []
        for messages in requests:
            content = messages[-1]["content"]
            question = content.rsplit("Question: ", 1)[-1]
            retrieval = content.startswith("Answer the question using these passages.")
            right = retrieval or (str(model_dir) == "merged" and question in trained)
            out.append(answers[question] if right else "I do not know")
        return out

    def answer_all(gguf_path, requests, max_tokens=64, json_schema=None):
        calls.append(("gguf", str(gguf_path), len(requests), max_tokens))
        return ["two" for _ in requests]

    monkeypatch.setattr(lorapipe.generation, "hf_answers", hf_answers)
    monkeypatch.setattr(lorapipe.generation, "answer_all", answer_all)
    return calls


def test_knowledge_json_and_md_with_fake_answerers(tmp_path, fake_models, capsys):
    inputs = _project(tmp_path, USER[:3])
    base = knowledge.base_knowledge(
        "base", **inputs, knowledge_questions=4, knowledge_max_new_tokens=7, retrieval_top_k=1
    )
    assert fake_models == [("hf", "base", 14, 7)]  # closed-book and retrieval in one load: 7 questions × 2
    assert list(base["answers"]) == ["base", "base + retrieval"]
    assert base["answers"]["base"] == ["I do not know"] * 7
    json.dumps(base)  # what evaluate_base writes
    report, markdown = knowledge.evaluate_knowledge(
        base, "merged", tmp_path / "m.Q8_0.gguf", knowledge_max_new_tokens=7
    )
    assert fake_models[1:] == [("hf", "merged", 14, 7), ("gguf", str(tmp_path / "m.Q8_0.gguf"), 7, 7)]
    synth = report["sets"]["synth"]
    assert synth["questions"] == 4 and list(report["sets"]) == ["synth", "user"]
    systems = synth["systems"]
    assert list(systems) == ["base", "base + retrieval", "fine-tuned", "fine-tuned + retrieval", "m.Q8_0.gguf"]
    perfect = {"f1": 1.0, "rouge_l": 1.0, "key_hit": None, "n": 2, "keyed": 0}
    nothing = {"f1": 0.0, "rouge_l": 0.0, "key_hit": None, "n": 2, "keyed": 0}
    assert systems["base"]["trained"] == systems["base"]["control"] == nothing
    assert systems["base + retrieval"]["trained"] == systems["base + retrieval"]["control"] == perfect
    assert systems["fine-tuned"]["trained"] == perfect and systems["fine-tuned"]["control"] == nothing
    assert systems["fine-tuned"]["all"] == {"f1": 0.5, "rouge_l": 0.5, "key_hit": None, "n": 4, "keyed": 0}
    # "two" against "two small low-rank matrices" (1 of 1, 1 of 4 words): F1 0.4; the other three 0
    assert systems["m.Q8_0.gguf"]["all"]["f1"] == round(0.4 / 4, 4)
    assert systems["fine-tuned"]["documents"]["docs/lora.md"]["n"] == 1 and "unknown" not in systems["base"]
    user = report["sets"]["user"]["systems"]
    assert user["base"]["all"]["key_hit"] == 0.0 and user["base + retrieval"]["all"]["key_hit"] == 1.0
    assert user["fine-tuned"]["trained"]["key_hit"] == 1.0 and user["fine-tuned"]["control"]["key_hit"] == 0.0
    assert user["fine-tuned"]["all"]["keyed"] == 2

    metrics = knowledge.knowledge_metrics(report)
    assert metrics["knowledge/synth/fine-tuned_plus_retrieval/trained/f1"] == 1.0
    assert metrics["knowledge/user/m.Q8_0.gguf/control/key_hit"] == 0.0
    assert "knowledge/synth/base/all/key_hit" not in metrics  # no keyed question in the synth set
    assert all(" " not in name and "+" not in name for name in metrics)

    assert markdown.startswith("# Knowledge evaluation\n")
    assert "## synth: 4 held-out pairs" in markdown and "## user: 3 questions of your own" in markdown
    assert "| system | all (n 4) F1 | all (n 4) ROUGE-L | all (n 4) key hit | trained (n 2) F1 |" in markdown
    assert "| fine-tuned | 0.50 | 0.50 | – | 1.00 | 1.00 | – | 0.00 | 0.00 | – |" in markdown
    assert (
        "### 1. What does LoRA train?" in markdown
        and "document: `docs/lora.md` (trained) · retrieved: `docs/lora.md#0`" in markdown
    )
    assert "| **reference** | two small low-rank matrices |" in markdown and "| m.Q8_0.gguf | two |" in markdown
    assert "document: `docs/volcano.md` (control) · keys: `magma` · retrieved: `docs/volcano.md#0`" in markdown
    out = capsys.readouterr().out
    assert (
        "[evaluate] knowledge synth, fine-tuned: trained F1 1.00 ROUGE-L 1.00 key hit – (n 2) | "
        "control F1 0.00 ROUGE-L 0.00 key hit – (n 2)" in out
    )
    assert "[evaluate_base] knowledge user, base + retrieval: trained F1 1.00" in out


def test_no_question_at_all_says_so_and_loads_no_model(tmp_path, fake_models):
    base = knowledge.base_knowledge("base", **_project(tmp_path), knowledge_questions=0)
    assert base["questions"] == [] and base["answers"] == {}
    report, markdown = knowledge.evaluate_knowledge(base, "merged", "x.gguf")
    assert report == {"sets": {}} and fake_models == []
    assert markdown.startswith("# Knowledge evaluation\n\nNo questions") and markdown.count("\n") == 3


def test_an_unknown_source_gets_its_own_group(tmp_path, fake_models):
    base = knowledge.base_knowledge("base", **_project(tmp_path, USER[3:]), knowledge_questions=0)
    assert base["questions"] == []
    inputs = _project(tmp_path / "two", USER[3:])
    write_jsonl(inputs["synth_dir"] / "pairs.jsonl", [])
    base = knowledge.base_knowledge("base", **inputs)
    report = knowledge.knowledge_report(base["questions"], base["answers"])
    base_scores = report["sets"]["user"]["systems"]["base"]
    assert base_scores["unknown"]["n"] == 2 and base_scores["trained"]["n"] == base_scores["control"]["n"] == 0
    assert set(base_scores["documents"]) == {"elsewhere.pdf", "(no source)"}
    assert "knowledge/user/base/unknown/f1" in knowledge.knowledge_metrics(report)


# --- the stages' wiring, and the real answering path --------------------------------------------------


def test_evaluate_base_writes_knowledge_base_json_with_the_real_tiny_model(tmp_path, dataset_dir, tiny_model_dir):
    """evaluate_base through the stage module: the base's real (random, tiny) answers, closed-book and with
    retrieval, one per question, in a JSON object that evaluate reads back."""
    from lorapipe.params import load_params
    from lorapipe.stages.evaluate_base import run

    from helpers import ROOT

    inputs = _project(tmp_path / "k", USER[:1])
    write_jsonl(dataset_dir / "train.jsonl", [{"text": "x", "source": "docs/lora.md", "task": "text"}])
    write_json(dataset_dir / "prompts.json", {"text": SYSTEM})
    overrides = {"eval.max_samples": 1, "eval.max_new_tokens": 1, "eval.knowledge_questions": 2}
    params = load_params(ROOT / "params.yaml", {**overrides, "eval.knowledge_max_new_tokens": 3})
    reports = tmp_path / "reports"
    run(
        params,
        dataset_dir=dataset_dir,
        base_dir=tiny_model_dir,
        reports_dir=reports,
        synth_dir=inputs["synth_dir"],
        eval_qa=inputs["eval_qa_path"],
    )
    saved = json.loads((reports / "knowledge_base.json").read_text())
    assert [q["set"] for q in saved["questions"]] == ["synth", "synth", "user"]
    assert [q["group"] for q in saved["questions"]] == ["trained", "control", "trained"]
    assert saved["questions"][0]["messages"][0] == {"role": "system", "content": SYSTEM}  # the only prompt
    assert saved["max_new_tokens"] == 3 and saved["retrieval_top_k"] == params.eval.retrieval_top_k
    for system in ("base", "base + retrieval"):
        assert len(saved["answers"][system]) == 3 and all(isinstance(a, str) for a in saved["answers"][system])
    with pytest.raises(FileNotFoundError, match="nowhere not found \\(--synth-dir\\)"):
        run(params, dataset_dir=dataset_dir, base_dir=tiny_model_dir, reports_dir=reports, synth_dir="nowhere")


def test_the_evaluate_stage_logs_the_flat_knowledge_metrics(tmp_path, monkeypatch):
    import lorapipe.stages.evaluate as stage
    from lorapipe.params import Params

    reports = tmp_path / "reports"
    report = {"sets": {"user": {"questions": 1, "systems": {"base + retrieval": {"all": {"f1": 0.5, "n": 1}}}}}}

    def fake_evaluate_models(*args, **kwargs):
        assert kwargs["knowledge_base_path"] == reports / "knowledge_base.json"
        assert kwargs["knowledge_md_path"] == reports / "knowledge.md"
        write_json(kwargs["knowledge_path"], report)
        return {"rows": 1}

    logged = {}
    monkeypatch.setattr(stage, "evaluate_models", fake_evaluate_models)
    monkeypatch.setattr(stage.tracking, "log_stage", lambda *a: logged.update(metrics=a[3], artifacts=a[4]))
    stage.run(Params(), reports_dir=reports, adapter_dir=tmp_path / "adapter")
    assert logged["metrics"] == {"eval": {"rows": 1}, "knowledge/user/base_plus_retrieval/all/f1": 0.5}
    assert logged["artifacts"]["knowledge"] == reports / "knowledge.md"


@pytest.mark.integration  # about 30 s: a GGUF export and three model loads
def test_evaluate_models_answers_with_the_merged_model_and_the_gguf(tmp_path, dataset_dir, tiny_model_dir, monkeypatch):
    """The real answering path of evaluate: transformers (closed-book and retrieval) and llama.cpp on a
    GGUF of the tiny model; knowledge.json and knowledge.md written with eval.json."""
    monkeypatch.chdir(tmp_path)
    from lorapipe.evaluate import evaluate_base, evaluate_models
    from lorapipe.export import export_gguf

    inputs = _project(tmp_path / "k", USER[:1])
    export_gguf(tiny_model_dir, dataset_dir / "prompts.json", tmp_path / "gguf", quants=["Q8_0"], name="tiny")
    evaluate_base(
        dataset_dir / "val.jsonl",
        tiny_model_dir,
        tmp_path / "eval_base.json",
        prompts_path=dataset_dir / "prompts.json",
        knowledge_path=tmp_path / "knowledge_base.json",
        synth_dir=inputs["synth_dir"],
        eval_qa_path=inputs["eval_qa_path"],
        train_path=inputs["train_path"],
        max_samples=1,
        knowledge_questions=1,
        knowledge_max_new_tokens=2,
    )
    evaluate_models(
        dataset_dir / "val.jsonl",
        dataset_dir / "prompts.json",
        tiny_model_dir,
        tmp_path / "gguf",
        tmp_path / "eval.json",
        knowledge_base_path=tmp_path / "knowledge_base.json",
        knowledge_path=tmp_path / "knowledge.json",
        knowledge_md_path=tmp_path / "knowledge.md",
        max_samples=1,
        knowledge_max_new_tokens=2,
    )
    report = json.loads((tmp_path / "knowledge.json").read_text())
    systems = report["sets"]["synth"]["systems"]
    assert list(systems) == ["base", "base + retrieval", "fine-tuned", "fine-tuned + retrieval", "tiny.Q8_0.gguf"]
    assert systems["base"] == systems["fine-tuned"]  # the "merged" model is the base itself, greedy
    assert systems["base + retrieval"] == systems["fine-tuned + retrieval"]
    assert [s["all"]["n"] for s in systems.values()] == [1] * 5 and set(report["sets"]) == {"synth", "user"}
    assert "| tiny.Q8_0.gguf |" in (tmp_path / "knowledge.md").read_text()
    assert (tmp_path / "eval.json").is_file()
    with pytest.raises(FileNotFoundError, match="dvc repro evaluate_base"):
        evaluate_models(
            dataset_dir / "val.jsonl",
            dataset_dir / "prompts.json",
            tiny_model_dir,
            tmp_path / "gguf",
            tmp_path / "eval.json",
            knowledge_base_path="reports/knowledge_base.json",
            knowledge_path=tmp_path / "knowledge.json",
        )
