"""The DVC stages: each is one module run directly by dvc.yaml, and its deps cover every project
file its command can execute (so `dvc repro` reruns a stage whenever code it runs changes), without
listing code it never runs (so an edit reruns only the stages that execute it).

Run: .venv/bin/pytest tests/test_stages.py
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml
from helpers import ROOT, SRC, STAGE_PYTHON, import_closure, stage_entry, uncovered

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def readme_foreach_stage() -> dict:
    """The `foreach` stage the README tells users to add for one adapter per task."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- foreach-stage -->")[1].split("<!-- /foreach-stage -->")[0]
    text = block.split("```yaml")[1].split("```")[0]
    ((name, stage),) = yaml.safe_load(text).items()
    return {f"{name} (README)": {**stage["do"], "cmd": stage["do"]["cmd"].replace("${item}", "chat")}}


STAGES = {**DVC, **readme_foreach_stage()}


def code_deps_missing(stages: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the project files its command executes that its deps do not cover."""
    missing = {}
    for name, stage in stages.items():
        files = import_closure(stage_entry(stage["cmd"], root), root / "src")
        gaps = uncovered(files, stage.get("deps", []), root)
        if gaps:
            missing[name] = gaps
    return missing


def test_every_stage_depends_on_every_file_its_command_executes():
    missing = code_deps_missing(STAGES)
    assert not missing, "add these to the stage's deps in dvc.yaml (or the README's foreach block):\n" + "\n".join(
        f"  {stage}: {', '.join(files)}" for stage, files in missing.items()
    )


def code_deps_not_executed(stages: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the deps that cover project code (under src/, however spelt: ``src``, ``./src/x``)
    holding a file the stage never executes."""
    extra = {}
    for name, stage in stages.items():
        files = {p.resolve() for p in import_closure(stage_entry(stage["cmd"], root), root / "src")}
        for dep in stage.get("deps", []):
            target = (root / dep).resolve()
            if not target.is_relative_to((root / "src").resolve()) and target != root.resolve():
                continue
            code = set(target.rglob("*.py")) if target.is_dir() else {target}
            code = {p for p in code if "__pycache__" not in p.parts and p.is_relative_to((root / "src").resolve())}
            if code - files:
                extra.setdefault(name, []).append(dep)
    return extra


def test_no_stage_depends_on_code_it_does_not_execute():
    """Listing all of src/ would rerun every stage on any edit: code deps are exactly the closure."""
    extra = code_deps_not_executed(STAGES)
    assert not extra, f"deps that list code the stage never runs: {extra}"


def test_a_dep_on_all_of_src_is_caught_however_it_is_spelt():
    for spelling in ("src", "./src", "src/lorapipe", "src/lorapipe/"):
        stage = {**DVC["base"], "deps": [*DVC["base"]["deps"], spelling]}
        assert code_deps_not_executed({"base": stage}) == {"base": [spelling]}, spelling


def test_the_check_fails_when_a_dep_is_removed():
    """The deps check can fail: drop one file from one stage's deps and it is reported."""
    stage = dict(DVC["merge"])
    stage["deps"] = [d for d in stage["deps"] if d != "src/lorapipe/merge.py"]
    assert code_deps_missing({"merge": stage}) == {"merge": ["src/lorapipe/merge.py"]}


def test_the_check_follows_lazy_package_imports_and_imports_inside_functions(tmp_path):
    """`from lorapipe import name` resolves through the package face's name map, and an import
    inside a function counts; so do `lorapipe.name` after `import lorapipe`, `from lorapipe import *`
    and `importlib.import_module("lorapipe.x")`."""
    package = tmp_path / "src" / "lorapipe"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text('_API = {"work": "lorapipe.worker"}\n')
    (package / "stages" / "__init__.py").write_text("")
    (package / "worker.py").write_text("def work():\n    from lorapipe import helper\n")
    (package / "helper.py").write_text("")
    (package / "stages" / "one.py").write_text("def run():\n    from lorapipe import work\n")
    files = import_closure(package / "stages" / "one.py", tmp_path / "src")
    assert {p.relative_to(package).as_posix() for p in files} == {
        "__init__.py",
        "stages/__init__.py",
        "stages/one.py",
        "worker.py",
        "helper.py",
    }
    (package / "other.py").write_text("")
    for code in (
        "import lorapipe\nlorapipe.work()\n",
        "from lorapipe import *\n",
        "import importlib\nimportlib.import_module('lorapipe.worker')\n",
    ):
        (package / "stages" / "two.py").write_text(code)
        files = import_closure(package / "stages" / "two.py", tmp_path / "src")
        assert package / "worker.py" in files and package / "other.py" not in files, code


def test_each_stage_is_run_by_its_own_module_in_one_hop():
    for name, stage in DVC.items():
        assert stage["cmd"] == f"{STAGE_PYTHON} -m lorapipe.stages.{name}", name
        module = SRC / "lorapipe" / "stages" / f"{name}.py"
        lines = module.read_text().splitlines()
        assert len(lines) <= 60, f"{module.name} has {len(lines)} lines: move the work into the library"
        tree = ast.parse(module.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body), name


def test_the_package_face_imports_no_module_eagerly():
    import subprocess
    import sys

    code = (
        "import sys, lorapipe; before = {m for m in sys.modules if m.startswith('lorapipe.')}; "
        "from lorapipe import train_lora, extract_documents; "
        "print(sorted(before), train_lora.__module__, extract_documents.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "lorapipe.train", "lorapipe.extract"]


def test_evaluate_base_leaves_no_out_empty_without_chat_rows(tmp_path, dataset_dir, tiny_model_dir):
    """Documents only (no chat rows, so no answers): every file the stage declares is still non-empty,
    since DVC warns on every command about an empty out (dvc/output.py: `'%s' is empty.`)."""
    from lorapipe import paths
    from lorapipe.params import load_params
    from lorapipe.stages.evaluate_base import run

    from lorapipe.retrieval import build_index

    params = load_params(ROOT / "params.yaml", {"eval.max_samples": 2, "eval.max_new_tokens": 2})
    build_index([], tmp_path / "synth" / "index")  # no passages, no pairs: no knowledge question
    (tmp_path / "synth" / "pairs.jsonl").write_text("")
    run(
        params,
        dataset_dir=dataset_dir,
        base_dir=tiny_model_dir,
        reports_dir=tmp_path / "reports",
        synth_dir=tmp_path / "synth",
        eval_qa=tmp_path / "absent.jsonl",
    )
    declared = [
        next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics") for o in DVC["evaluate_base"][k]
    ]
    written = [paths.BASE_ANSWERS.name, paths.EVAL_BASE.name, paths.KNOWLEDGE_BASE.name]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(written)
    for name in written:
        assert (tmp_path / "reports" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "reports" / paths.BASE_ANSWERS.name).read_text())["answers"] == []
    knowledge = json.loads((tmp_path / "reports" / paths.KNOWLEDGE_BASE.name).read_text())
    assert knowledge["questions"] == [] and knowledge["answers"] == {}
    assert sorted(Path(o).name for o in declared) == sorted(written)


def test_a_local_model_outside_the_tracked_folder_is_warned_of(tmp_path, monkeypatch):
    from lorapipe.stages.base import untracked_local_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/raw/models/mine").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert untracked_local_model("data/raw/models/mine") is None  # the base stage's dep: DVC sees its files
    assert untracked_local_model("smollm2-135m-instruct") is None  # bundled
    warning = untracked_local_model(str(tmp_path / "elsewhere"))
    assert "DVC does not see changes to its files" in warning and "dvc repro -f base" in warning
    assert "data/raw/models" in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["base"]["deps"]
