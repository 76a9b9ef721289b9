"""The `lorapipe` CLI: params checks and errors.

Run: .venv/bin/pytest tests/test_cli.py
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT
from lorapipe.cli import main


def test_check_prints_resolved_params(capsys):
    assert main(["check", "--params", str(ROOT / "params.yaml")]) == 0
    assert "rank: 16" in capsys.readouterr().out


def test_check_refuses_a_named_file_that_is_missing_or_not_a_schema(tmp_path, capsys, monkeypatch):
    """`lorapipe check` looks at the files params name, as the stages would before any work: exit 2, the
    params file, key and path named."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw" / "config").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("eval:\n  json_schema: data/raw/config/task.schema.json\n")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert "params.yaml" in err and "eval.json_schema: data/raw/config/task.schema.json is not a file" in err
    (tmp_path / "data" / "raw" / "config" / "task.schema.json").write_text('{"type": "objet"}')
    assert main(["check"]) == 2
    assert "is not a valid JSON Schema" in capsys.readouterr().err
    (tmp_path / "data" / "raw" / "config" / "task.schema.json").write_text('{"type": "object"}')
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert "json_schema: data/raw/config/task.schema.json" in out  # stdout: the params, for a pipe
    assert err == (
        "[check] params.yaml is valid (every param resolved above, defaults filled in); the files it names are in "
        "place and readable: eval.json_schema (data/raw/config/task.schema.json)\n"
    )
    (tmp_path / "params.yaml").write_text("train:\n  max_steps: 20\n  epochs: 0.6\n")
    assert main(["check"]) == 0
    assert capsys.readouterr().err.endswith(
        "[check] note: train.max_steps is 20, so train.epochs (0.6) is not used (max_steps: -1 trains for the epochs)\n"
    )


def test_bad_params_fail_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text("lora:\n  rank: 0\ntrain:\n  lr: -1\n")
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "lora.rank" in err and "train.lr" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no run, no output


def test_bad_override_is_named(capsys):
    assert main(["train", "--params", str(ROOT / "params.yaml"), "--lora.rank", "0"]) == 2
    assert "lora.rank" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "lorapipe.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "evaluate_base" in result.stdout


# Every input a stage command reads that an earlier stage writes, as the pipeline lays them out.
PIPELINE_INPUTS = (
    "data/raw/docs/a.txt",
    "data/extracted_text/manifest.jsonl",
    "models/base/config.json",
    "data/dataset/train.jsonl",
    "data/dataset/val.jsonl",
    "data/dataset/stats.json",
    "data/dataset/prompts.json",
    "models/lora_output/adapter_config.json",
    "models/merged/config.json",
    "models/gguf/export.json",
    "models/gguf/tiny.Q8_0.gguf",
    "reports/eval_base.json",
    "data/synth/pairs.jsonl",
    "data/synth/index/passages.jsonl",
    "reports/knowledge_base.json",
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder holding params.yaml and a stand-in for every stage's output (the commands below stop
    before reading them)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    for name in PIPELINE_INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    return tmp_path


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_merge_and_export_flags_reach_the_stage_functions(project, monkeypatch):
    import lorapipe.stages.export
    import lorapipe.stages.merge

    calls = {}
    monkeypatch.setattr(lorapipe.stages.merge, "run", lambda p, merged, **dirs: calls.update(merge=(p, merged, dirs)))
    monkeypatch.setattr(lorapipe.stages.export, "run", lambda p, *out, **dirs: calls.update(export=(p, out, dirs)))
    for name in ("b/config.json", "a/adapter_config.json", "m/config.json", "d/prompts.json"):
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text("{}")
    flags = ["--base-dir", "b", "--adapter-dir", "a"]
    assert main(["merge", "--merged-dir", "m", "--merge.dtype", "float16", *flags]) == 0
    quant_flags = ["--quant", "q8_0", "--quant", "Q4_K_M", "--outtype", "f32", "--ollama-name", "acme", "--lora-gguf"]
    assert main(["export", "--merged-dir", "m", "--output-dir", "g", "--dataset-dir", "d", *flags, *quant_flags]) == 0
    params, merged, dirs = calls["merge"]
    assert (params.merge.dtype, merged, dirs) == (
        "float16",
        Path("m"),
        {"base_dir": Path("b"), "adapter_dir": Path("a")},
    )
    params, out, dirs = calls["export"]
    assert out == (Path("m"), Path("g"))
    assert dirs == {"dataset_dir": Path("d"), "adapter_dir": Path("a"), "base_dir": Path("b")}
    export = params.export
    assert export.quants == ["Q8_0", "Q4_K_M"] and export.outtype == "f32"
    assert export.ollama_name == "acme" and export.lora_gguf is True


def test_every_input_flag_reaches_its_stage_function(project, monkeypatch):
    """The default folders, and each flag's folder, reach the stage module's run() by keyword."""
    import lorapipe.stages.dataset
    import lorapipe.stages.evaluate
    import lorapipe.stages.evaluate_base
    import lorapipe.stages.train

    calls = {}
    for module in (
        lorapipe.stages.dataset,
        lorapipe.stages.train,
        lorapipe.stages.evaluate_base,
        lorapipe.stages.evaluate,
    ):
        name = module.__name__.rsplit(".", 1)[1]
        monkeypatch.setattr(module, "run", lambda p, *a, _name=name, **k: calls.update({_name: (a, k)}))
    shutil.copytree(project / "data/dataset", project / "elsewhere")
    assert main(["dataset", "--output-dir", "out"]) == 0
    assert calls["dataset"] == (
        (Path("data/extracted_text"), Path("data/raw/labeled"), Path("out"), Path("models/base")),
        {"synth_dir": Path("data/synth")},
    )
    assert main(["train", "--task", "chat", "--dataset-dir", "elsewhere"]) == 0
    assert calls["train"] == (("chat",), {"dataset_dir": Path("elsewhere"), "base_dir": Path("models/base")})
    assert main(["evaluate_base", "--reports-dir", "r"]) == 0
    base_dirs = {"reports_dir": Path("r"), "dataset_dir": Path("data/dataset"), "base_dir": Path("models/base")}
    base_dirs |= {"synth_dir": Path("data/synth"), "eval_qa": Path("data/raw/eval_qa.jsonl")}
    assert calls["evaluate_base"] == ((), base_dirs)
    assert main(["evaluate", "--dataset-dir", "elsewhere"]) == 0
    assert calls["evaluate"] == ((), {
        "adapter_dir": Path("models/lora_output"),
        "dataset_dir": Path("elsewhere"),
        "merged_dir": Path("models/merged"),
        "gguf_dir": Path("models/gguf"),
        "reports_dir": Path("reports"),
    })  # fmt: skip


def test_train_with_a_machine_rank_joins_a_run_across_machines(project, monkeypatch, capsys):
    """`lorapipe train --machine-rank 1` (machine 1 of a run across machines) reaches
    lorapipe.distributed.join_training, not the stage's `run`; without an accelerate config of several
    machines it stops before any work."""
    import lorapipe.distributed
    import lorapipe.stages.train

    assert main(["train", "--machine-rank", "1"]) == 2
    assert "--machine-rank 1 joins a training run across machines, and train.accelerate_config is null" in (
        capsys.readouterr().err
    )
    assert not (project / "mlflow.db").exists() and not (project / "reports" / "train.json").exists()
    calls = {}
    monkeypatch.setattr(lorapipe.distributed, "join_training", lambda p, *a, **k: calls.update(join=(a, k)))
    monkeypatch.setattr(lorapipe.stages.train, "run", lambda p, *a, **k: calls.update(run=(a, k)))
    assert main(["train", "--machine-rank", "1", "--task", "chat"]) == 0
    assert calls == {"join": ((1, "chat"), {"dataset_dir": Path("data/dataset"), "base_dir": Path("models/base")})}


def _base(flag: str = "--base-dir") -> str:
    return f"models/base not found: run `dvc repro base` (or `lorapipe base`) or pass {flag}"


def _dataset(name: str, flag: str = "--dataset-dir") -> str:
    return f"data/dataset/{name} not found: run `dvc repro dataset` (or `lorapipe dataset`) or pass {flag}"


# (command, the input removed, the exact message): every command that reads an earlier stage's output.
MISSING = [
    (["extract"], "data/raw/docs", "data/raw/docs not found: put your documents there or pass --input-dir"),
    (["extract", "--input-dir", "data/raw/docs", "mine"], "", "mine not found (--input-dir)"),
    (["dataset"], "models/base", _base()),
    (
        ["dataset"],
        "data/extracted_text",
        "data/extracted_text not found: run `dvc repro extract` (or `lorapipe extract`) or pass --text-dir",
    ),
    (
        ["dataset"],
        "data/extracted_text/manifest.jsonl",
        "data/extracted_text/manifest.jsonl not found: run `dvc repro extract` (or `lorapipe extract`) or pass --text-dir",  # noqa: E501
    ),
    (["train"], "models/base", _base()),
    (
        ["train"],
        "data/dataset",
        "data/dataset not found: run `dvc repro dataset` (or `lorapipe dataset`) or pass --dataset-dir",
    ),  # noqa: E501
    (["train", "--task", "chat"], "data/dataset/stats.json", _dataset("stats.json")),
    (["train"], "data/dataset/val.jsonl", _dataset("val.jsonl")),
    (["merge"], "models/base", _base()),
    (
        ["merge"],
        "models/lora_output",
        "models/lora_output not found: run `dvc repro train` (or `lorapipe train`) or pass --adapter-dir",
    ),  # noqa: E501
    (
        ["merge"],
        "models/lora_output/adapter_config.json",
        "models/lora_output/adapter_config.json not found: run `dvc repro train` (or `lorapipe train`) or pass --adapter-dir",  # noqa: E501
    ),
    (
        ["export"],
        "models/merged",
        "models/merged not found: run `dvc repro merge` (or `lorapipe merge`) or pass --merged-dir",
    ),  # noqa: E501
    (["export"], "data/dataset/prompts.json", _dataset("prompts.json")),
    (
        ["export"],
        "models/lora_output",
        "models/lora_output not found: run `dvc repro train` (or `lorapipe train`) or pass --adapter-dir",
    ),  # noqa: E501
    (
        ["export"],
        "models/base/config.json",
        "models/base/config.json not found: run `dvc repro base` (or `lorapipe base`) or pass --base-dir",
    ),
    (["evaluate_base"], "models/base", _base()),
    (["evaluate_base"], "data/dataset/val.jsonl", _dataset("val.jsonl")),
    (["evaluate_base"], "data/dataset/prompts.json", _dataset("prompts.json")),
    (["evaluate_base"], "data/dataset/train.jsonl", _dataset("train.jsonl")),
    (
        ["evaluate_base"],
        "data/synth/index",
        "data/synth/index not found: run `dvc repro synth` (or `lorapipe synth`) or pass --synth-dir",
    ),
    (["evaluate_base", "--eval-qa", "q.jsonl"], "", "q.jsonl not found (--eval-qa)"),
    (["evaluate"], "data/dataset/val.jsonl", _dataset("val.jsonl")),
    (
        ["evaluate"],
        "models/merged",
        "models/merged not found: run `dvc repro merge` (or `lorapipe merge`) or pass --merged-dir",
    ),  # noqa: E501
    (
        ["evaluate"],
        "models/gguf",
        "models/gguf not found: run `dvc repro export` (or `lorapipe export`) or pass --gguf-dir",
    ),  # noqa: E501
    (
        ["evaluate"],
        "reports/eval_base.json",
        "reports/eval_base.json not found: run `dvc repro evaluate_base` (or `lorapipe evaluate_base`) or pass --reports-dir",  # noqa: E501
    ),
    (
        ["evaluate"],
        "reports/knowledge_base.json",
        "reports/knowledge_base.json not found: run `dvc repro evaluate_base` (or `lorapipe evaluate_base`) or pass --reports-dir",  # noqa: E501
    ),
    (
        ["ask", "hi"],
        "models/gguf",
        "models/gguf not found: run `dvc repro export` (or `lorapipe export`) or pass --gguf",
    ),  # noqa: E501
    (["ask", "hi", "--gguf", "x.gguf"], "", "x.gguf not found (--gguf)"),
    (
        ["ask", "hi", "--gguf", "models/gguf/tiny.Q8_0.gguf"],
        "data/dataset/prompts.json",
        "data/dataset/prompts.json not found: run `dvc repro dataset` (or `lorapipe dataset`) or pass --prompts",
    ),
    (["chat"], "models/gguf", "models/gguf not found: run `dvc repro export` (or `lorapipe export`) or pass --gguf"),
    (["serve", "--gguf", "x.gguf"], "", "x.gguf not found (--gguf)"),
    (
        ["ask", "hi", "--gguf", "models/gguf/tiny.Q8_0.gguf", "--retrieval"],
        "data/synth/index",
        "data/synth/index not found: run `dvc repro synth` (or `lorapipe synth`) or pass --index",
    ),
    (
        ["serve", "--retrieval"],
        "data/synth/index",
        "data/synth/index not found: run `dvc repro synth` (or `lorapipe synth`) or pass --index",
    ),
    (["serve", "--retrieval", "--index", "idx"], "", "idx not found (--index)"),
    (["serve", "--top-k", "3"], "", "--index and --top-k choose what --retrieval puts in the prompt: add --retrieval"),
    (["serve", "--transformers", "--merged-dir", "m"], "", "m not found (--merged-dir)"),
    (["plan", "--dataset-dir", "d"], "", "d/stats.json not found (--dataset-dir)"),
]


@pytest.mark.parametrize(("argv", "removed", "message"), MISSING, ids=[f"{a[0]}-{r}" for a, r, _ in MISSING])
def test_a_missing_input_is_named_with_the_command_that_makes_it(project, capsys, argv, removed, message):
    """Exit 2 before any work, with one line naming the path, the command that writes it and the flag."""
    if removed:
        target = project / removed
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    before = _files(project)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"lorapipe {argv[0]}: error: {message}\n"
    assert _files(project) == before  # nothing written, nothing removed


def test_a_dataset_of_labeled_rows_alone_needs_no_extracted_text(project, monkeypatch, capsys):
    """Labeled rows and no documents: `lorapipe dataset` builds them (as the pipeline would) instead of
    demanding the extract stage's output; with documents asked for (mode text, or --text-dir named) or
    waiting in data/raw/docs it still names the missing extraction."""
    import lorapipe.stages.dataset

    calls = []
    monkeypatch.setattr(lorapipe.stages.dataset, "run", lambda p, *a, **k: calls.append(a))
    shutil.rmtree(project / "data" / "extracted_text")
    shutil.rmtree(project / "data" / "raw" / "docs")
    (project / "data" / "raw" / "labeled").mkdir(parents=True, exist_ok=True)
    (project / "data" / "raw" / "labeled" / "rows.jsonl").write_text('{"query": "hi", "data": {"a": 1}}\n')
    assert main(["dataset"]) == 0
    assert calls[-1][0] == Path("data/extracted_text")
    assert "no extracted text in data/extracted_text: the labeled rows of data/raw/labeled alone" in (
        capsys.readouterr().out
    )
    assert main(["dataset", "--dataset.mode", "chat"]) == 0 and len(calls) == 2
    assert main(["dataset", "--text-dir", "./data/extracted_text"]) == 0 and len(calls) == 3  # the default, spelt so
    for argv in (["dataset", "--dataset.mode", "text"], ["dataset", "--text-dir", "texts"]):
        assert main(argv) == 2
        assert "not found" in capsys.readouterr().err
    docs = project / "data" / "raw" / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / ".notes.md").write_text("hidden: extract skips it\n")
    (docs / "empty.md").write_text("")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8")
    assert main(["dataset"]) == 0 and len(calls) == 4  # nothing there that extract would convert
    (docs / "manual.md").write_text("# A manual\n")  # a document not yet extracted
    assert main(["dataset"]) == 2
    assert capsys.readouterr().err == (
        "lorapipe dataset: error: data/extracted_text not found: run `dvc repro extract` (or `lorapipe extract`) "
        "first: data/raw/docs holds 1 document(s) to extract; or --dataset.mode chat to build the labeled rows of "
        "data/raw/labeled alone\n"
    )
    assert len(calls) == 4
    # an extraction from before the document came (an empty manifest) is as stale as none
    (project / "data" / "extracted_text").mkdir(parents=True)
    (project / "data" / "extracted_text" / "manifest.jsonl").write_text("")
    assert main(["dataset"]) == 2 and len(calls) == 4
    assert "error: data/extracted_text/manifest.jsonl lists no document: run `dvc repro extract`" in (
        capsys.readouterr().err
    )
    (docs / "manual.md").unlink()
    assert main(["dataset"]) == 0 and len(calls) == 5


def test_a_folder_of_the_users_own_is_named_with_what_it_must_hold(project, capsys):
    """`lorapipe dataset --input-dir X` outside a project: no Hub lookup, the missing piece named."""
    (project / "texts").mkdir()
    shutil.rmtree(project / "models")
    assert main(["dataset", "--input-dir", "texts", "--output-dir", "out"]) == 2
    expected = "texts/manifest.jsonl not found (--text-dir: the extract stage's output, `lorapipe extract`)"
    assert capsys.readouterr().err == f"lorapipe dataset: error: {expected}\n"
    (project / "texts" / "manifest.jsonl").write_text("")
    assert main(["dataset", "--input-dir", "texts", "--output-dir", "out"]) == 2
    assert capsys.readouterr().err == f"lorapipe dataset: error: {_base()}\n"
    assert not (project / "out").exists()


def test_unknown_quant_flag_lists_the_valid_ones(capsys):
    assert main(["export", "--params", str(ROOT / "params.yaml"), "--quant", "Q9_X"]) == 2
    err = capsys.readouterr().err
    assert "unknown quantization ['Q9_X']" in err and "Q4_K_M" in err


def test_text_params_are_taken_as_typed_and_others_as_yaml():
    from argparse import Namespace

    from lorapipe.cli import _overrides

    typed = Namespace(
        **{
            "dataset.system_prompt": "Analyse the query. Answer only with JSON: intent and slots.",
            "dataset.max_seq_len": "256",
            "dataset.val_fraction": "0.2",
        }
    )
    assert _overrides(typed, "dataset") == {
        "dataset.system_prompt": "Analyse the query. Answer only with JSON: intent and slots.",  # not a mapping
        "dataset.max_seq_len": 256,
        "dataset.val_fraction": 0.2,
    }
    assert _overrides(Namespace(**{"dataset.system_prompt": "yes"}), "dataset") == {"dataset.system_prompt": "yes"}


def test_outside_a_project_a_command_runs_with_the_defaults_and_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    assert main(["dataset", "--text-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no params.yaml here: using the defaults" in err
    assert f"{tmp_path / 'nowhere'} not found (--text-dir" in err  # the input is named, not params.yaml
    assert main(["dataset", "--params", "mine.yaml"]) == 2  # a --params file that is missing is still an error
    assert "params file not found: mine.yaml" in capsys.readouterr().err
    assert main(["check", "--params", str(tmp_path)]) == 2  # a folder for the file: named, with the fix
    assert f"{tmp_path} is a folder: name the params file in it" in capsys.readouterr().err


def test_check_reads_params_from_a_pipe(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    read, write = os.pipe()
    os.write(write, b"lora:\n  rank: 8\n")
    os.close(write)
    try:
        assert main(["check", "--params", f"/dev/fd/{read}"]) == 0  # as `--params /dev/stdin` from a shell
    finally:
        os.close(read)
    assert "rank: 8" in capsys.readouterr().out


def test_ask_with_retrieval_puts_the_passage_of_the_question_in_the_prompt(project, capsys, monkeypatch):
    import lorapipe.generation
    from lorapipe.retrieval import build_index, retrieval_messages

    passages = [
        {"id": "docs/lora.md#0", "source": "docs/lora.md", "passage": 0, "text": "LoRA trains thin matrices."},
        {"id": "docs/tower.md#3", "source": "docs/tower.md", "passage": 3, "text": "The tower was finished in 1889."},
        {"id": "docs/bread.md#0", "source": "docs/bread.md", "passage": 0, "text": "Sourdough rises with wild yeast."},
    ]
    build_index(passages, project / "data" / "synth" / "index")
    (project / "data" / "dataset" / "prompts.json").write_text('{"text": "Text.", "qa": "Answer briefly."}')
    asked = []
    monkeypatch.setattr(
        lorapipe.generation,
        "answer_all",
        lambda gguf, requests, max_tokens, schema=None: asked.append((gguf, requests)) or ["1889"],
    )
    question = "When was the tower finished?"
    assert main(["ask", question, "--gguf", "models/gguf/tiny.Q8_0.gguf", "--retrieval", "--top-k", "2"]) == 0
    (gguf, [messages]) = asked[0]
    assert gguf == Path("models/gguf/tiny.Q8_0.gguf")
    assert messages[0] == {"role": "system", "content": "Answer briefly."}  # synth.task's prompt, as evaluated
    assert messages[1]["content"].startswith(
        "Answer the question using these passages.\n\n[1] (docs/tower.md) The tower"
    )
    assert "wild yeast" not in messages[1]["content"]  # shares no word with the question: not retrieved
    found = retrieval_messages("Answer briefly.", question, [{**passages[1], "score": 0.0}])
    assert messages[1]["content"] == found[1]["content"]
    out = capsys.readouterr().out
    assert "A (tiny.Q8_0.gguf, llama.cpp, with the top 2 of 3 passages of data/synth/index): 1889" in out
    assert "[1] docs/tower.md#3 (BM25 " in out
    # an index of no passage (labeled rows alone): refused, not "no passage shares a word"
    build_index([], project / "data" / "synth" / "index")
    assert main(["ask", question, "--gguf", "models/gguf/tiny.Q8_0.gguf", "--retrieval"]) == 2
    assert "data/synth/index holds no passage" in capsys.readouterr().err and len(asked) == 1


def test_ask_answers_with_a_tasks_prompt_under_a_schema(project, capsys, monkeypatch):
    import lorapipe.generation

    (project / "data" / "dataset" / "prompts.json").write_text('{"text": "Text.", "chat": "Analyse as JSON."}')
    (project / "task.schema.json").write_text('{"type": "object", "properties": {"intent": {"type": "string"}}}')
    asked = []
    monkeypatch.setattr(
        lorapipe.generation,
        "answer_all",
        lambda gguf, requests, max_tokens, schema=None: asked.append((requests, schema)) or ['{"intent": "Play"}'],
    )
    argv = ["ask", "play jazz", "--gguf", "models/gguf/tiny.Q8_0.gguf", "--task", "chat"]
    assert main([*argv, "--json-schema", "task.schema.json"]) == 0
    ([messages], schema) = asked[-1]
    assert messages[0] == {"role": "system", "content": "Analyse as JSON."} and schema["type"] == "object"
    assert 'A (tiny.Q8_0.gguf, llama.cpp, under the schema): {"intent": "Play"}' in capsys.readouterr().out
    assert main(argv[:4]) == 0 and asked[-1][0][0][0]["content"] == "Text." and asked[-1][1] is None  # the first
    assert main([*argv[:4], "--task", "qa"]) == 2
    assert "--task 'qa' is not a task of data/dataset/prompts.json; its tasks: text, chat" in capsys.readouterr().err
    assert main([*argv, "--json-schema", "nope.json"]) == 2
    assert "nope.json not found (--json-schema)" in capsys.readouterr().err and len(asked) == 2
    (project / "task.schema.json").write_text('{"type": "object", "propertes": {}}')  # named, as serve names it
    assert main([*argv, "--json-schema", "task.schema.json"]) == 0
    assert "[ask] warning: task.schema.json: unknown keyword 'propertes'" in capsys.readouterr().err
    (project / "data" / "dataset" / "prompts.json").write_text("{}")
    assert main(argv[:4]) == 2
    assert "data/dataset/prompts.json names no task's system prompt" in capsys.readouterr().err


def test_serve_decodes_under_the_schema_the_evaluation_scored(tmp_path, monkeypatch, capsys):
    """lorapipe serve's schema: --json-schema, else params.yaml's eval.json_schema, else none;
    --no-json-schema serves free text; a named file that is missing is refused naming it."""
    import argparse

    from lorapipe.cli import _serve_schema

    monkeypatch.chdir(tmp_path)
    flags = lambda schema=None, off=False: argparse.Namespace(json_schema=schema, no_json_schema=off)  # noqa: E731
    assert _serve_schema(flags()) is None  # no params.yaml: no schema
    (tmp_path / "data/raw/config").mkdir(parents=True)
    (tmp_path / "data/raw/config/task.schema.json").write_text('{"type": "object"}')
    (tmp_path / "params.yaml").write_text("eval:\n  json_schema: data/raw/config/task.schema.json\n")
    assert _serve_schema(flags()) == "data/raw/config/task.schema.json"
    assert "eval.json_schema" in capsys.readouterr().out
    assert _serve_schema(flags(off=True)) is None
    (tmp_path / "other.json").write_text("{}")
    assert _serve_schema(flags("other.json")) == "other.json"
    with pytest.raises(ValueError, match="contradict"):
        _serve_schema(flags("other.json", off=True))
    (tmp_path / "data/raw/config/task.schema.json").unlink()
    with pytest.raises(FileNotFoundError, match="task.schema.json"):
        _serve_schema(flags())


def test_serve_span_constraint_follows_params_unless_a_flag_says(tmp_path, monkeypatch, capsys):
    import argparse

    from lorapipe.cli import _serve_span_constraint, build_parser

    monkeypatch.chdir(tmp_path)
    assert build_parser().parse_args(["serve", "--no-span-constraint"]).span_constraint is False
    flag = lambda value=None: argparse.Namespace(span_constraint=value)  # noqa: E731
    assert _serve_span_constraint(flag(), "s.json") is False  # no params.yaml
    (tmp_path / "data/raw/config").mkdir(parents=True)
    (tmp_path / "data/raw/config/s.json").write_text('{"type": "object"}')
    (tmp_path / "params.yaml").write_text("eval:\n  json_schema: data/raw/config/s.json\n  span_constraint: true\n")
    assert _serve_span_constraint(flag(), "data/raw/config/s.json") is True
    assert "spans of the query" in capsys.readouterr().out
    assert _serve_span_constraint(flag(), None) is False  # --no-json-schema: nothing to limit
    assert _serve_span_constraint(flag(False), "data/raw/config/s.json") is False
    with pytest.raises(ValueError, match="--span-constraint limits"):
        _serve_span_constraint(flag(True), None)


def test_a_stage_run_from_the_cli_names_schema_keywords_json_schema_ignores(tmp_path, monkeypatch, capsys):
    from lorapipe.cli import _warn_schema_keywords
    from lorapipe.params import validate_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "task.schema.json").write_text('{"type": "object", "requried": ["intent"]}')
    params = validate_params({"eval": {"json_schema": "task.schema.json"}})
    _warn_schema_keywords(params, "dataset")
    err = capsys.readouterr().err
    assert "[dataset] warning: eval.json_schema: task.schema.json: unknown keyword 'requried'" in err
    assert "did you mean 'required'?" in err
    (tmp_path / "task.schema.json").write_text("not JSON")  # left to the stage, whose error names it
    _warn_schema_keywords(params, "dataset")
    assert capsys.readouterr().err == ""
