"""Helpers the tests share (imported as ``from helpers import ...``; fixtures stay in conftest.py).

Run: not a test module; see tests/conftest.py.
"""

from __future__ import annotations

import ast
import json
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE_DOCS = ROOT / "data" / "raw" / "docs"

TEXT = (
    "Low-rank adaptation trains two thin matrices beside each frozen weight matrix. "
    "The product of the two matrices is added to the layer's output, scaled by alpha over rank. "
    "Only the thin matrices receive gradients, so the optimizer state stays small.\n\n"
    "A pipeline records data, code and parameters together. Each stage reads declared inputs and "
    "writes declared outputs, so a change reruns only the stages that depend on it."
)


# The exact files of each model folder the stages write (from the tiny model; litgpt checks exact sets).
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
BASE_FILES = {"config.json", "generation_config.json", "model.safetensors", "lorapipe_params.yaml", *TOKENIZER_FILES}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md", "generation_config.json",
                 "lorapipe_params.yaml", "run.json", *TOKENIZER_FILES}  # fmt: skip
MERGED_FILES = {"config.json", "generation_config.json", "model.safetensors", "merge.json", *TOKENIZER_FILES}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick): for a server a test
    starts, or as an address where nothing answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- what a stage's command executes: the static import closure of its entry file -----------------


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file that defines module `name` (``lorapipe.train`` -> src/lorapipe/train.py), or None."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_face(src: Path = SRC) -> dict[str, str]:
    """The lazy package face's name map (``lorapipe/__init__.py``'s ``_API``: name -> module)."""
    tree = ast.parse((src / "lorapipe" / "__init__.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "_API":
            return ast.literal_eval(node.value)
    return {}


_DYNAMIC_IMPORTS = {"import_module", "__import__", "run_module"}  # importlib, builtins, runpy


def _dynamic_import(node: ast.AST) -> str | None:
    """The module a call such as ``importlib.import_module("lorapipe.x")`` imports, if a constant."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return node.args[0].value if name in _DYNAMIC_IMPORTS and isinstance(node.args[0].value, str) else None


def imported_modules(path: Path, src: Path = SRC) -> set[str]:
    """Names of the ``lorapipe`` modules `path` imports anywhere (module level and inside functions).
    ``from lorapipe import name``, ``from lorapipe import *`` and ``lorapipe.name`` resolve through the
    package face's name map; ``importlib.import_module("lorapipe.x")`` (and ``__import__``,
    ``runpy.run_module``) with a constant name count too."""
    face = package_face(src)
    inside = path.is_relative_to(src)  # an entry script outside src/ (stages/x.py) has no package
    package = path.relative_to(src).with_suffix("").parts[:-1] if inside else ()
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parent = list(package[: len(package) - node.level + 1])
                module = ".".join(parent + ([module] if module else []))
            names.add(module)
            for alias in node.names:
                if alias.name == "*" and module == "lorapipe":
                    names |= set(face.values())
                elif module_file(f"{module}.{alias.name}", src):
                    names.add(f"{module}.{alias.name}")
                elif module == "lorapipe" and alias.name in face:
                    names.add(face[alias.name])
        elif isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "lorapipe":
            names.add(face.get(node.attr, f"lorapipe.{node.attr}"))  # lorapipe.train_lora after `import lorapipe`
        elif (dynamic := _dynamic_import(node)) is not None:
            names.add(dynamic)
    return {name for name in names if name == "lorapipe" or name.startswith("lorapipe.")}


def import_closure(entry: Path, src: Path = SRC) -> set[Path]:
    """Every project file that running `entry` can execute: its lorapipe imports, recursively, with
    the package ``__init__.py`` files each import runs."""
    seen: set[Path] = set()
    todo = [entry]
    if entry.is_relative_to(src):  # `python -m a.b.c` runs a/__init__.py and a/b/__init__.py first
        parts = entry.relative_to(src).with_suffix("").parts
        todo += [f for i in range(1, len(parts)) if (f := module_file(".".join(parts[:i]), src))]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path, src):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found = module_file(".".join(parts[:i]), src)
                if found and found not in seen:
                    todo.append(found)
    return seen


STAGE_PYTHON = "sh scripts/python.sh"  # dvc.yaml's interpreter: the Python that has lorapipe


def stage_entry(cmd: str, root: Path = ROOT) -> Path:
    """The file a dvc.yaml ``cmd`` runs: ``python -m module``, ``python file.py`` or the CLI, where
    ``sh scripts/python.sh`` (the launcher that finds the Python with lorapipe) counts as ``python``."""
    if cmd.startswith(STAGE_PYTHON + " "):
        cmd = "python" + cmd[len(STAGE_PYTHON) :]
    words = cmd.split()
    if words[:2] == ["python", "-m"]:
        found = module_file(words[2], root / "src")
        if found:
            return found
    elif words[0] == "python":
        return root / words[1]
    elif words[0] == "lorapipe":
        return root / "src" / "lorapipe" / "cli.py"
    raise ValueError(f"cannot tell which file `{cmd}` runs")


def uncovered(files: set[Path], deps: list[str], root: Path = ROOT) -> list[str]:
    """The files (relative to `root`) that no dep covers (a folder dep covers the files under it)."""
    dep_paths = [Path(d) for d in deps]
    rels = {path.relative_to(root) for path in files}
    return sorted(str(rel) for rel in rels if not any(rel == dep or dep in rel.parents for dep in dep_paths))


# --- projects, commands, files ---------------------------------------------------------------------


def copy_project(dest: Path) -> Path:
    """Copy the files git would commit (tracked plus untracked, not ignored) into `dest`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run_ok(args: list[str], cwd: Path, env: dict) -> str:
    """Run a command; fail the test with its output's tail unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return output


def git_project(dest: Path, tiny_model_dir: Path, labeled: bool = True, **sections: dict) -> tuple[Path, dict]:
    """A copy of the project in a new git repo at `dest`, with params for the tiny model (each of
    `sections` updates that params section), committed; returns the repo and the environment to run
    `dvc` in (this venv first on PATH, no outside MLflow store)."""
    import os
    import sys

    import yaml

    repo = copy_project(dest)
    if labeled:  # labeled examples beside the documents: dataset.mode auto builds a text and a chat task
        shutil.copy(FIXTURES / "labeled" / "snips_sample.jsonl", repo / "data" / "raw" / "labeled")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["name"] = str(tiny_model_dir)
    params["dataset"].update(max_seq_len=128, overlap_tokens=16)
    params["train"].update(max_steps=4, batch_size=2, log_every=2)
    params["export"].update(quants=["Q8_0"], outtype="f32", name="tiny")
    params["eval"].update(max_samples=4, num_generations=1, max_new_tokens=8, knowledge_questions=2)
    params["eval"].update(knowledge_max_new_tokens=8)
    # No teacher unless a test names one (synth={"base_url": FakeTeacher's url, ...}): passages only.
    params["synth"].update(questions_per_passage=0, passage_tokens=64, overlap_tokens=8)
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LORAPIPE_HOME")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run_ok(["git", "init", "-q", "-b", "main"], repo, env)
    run_ok(["git", "config", "user.name", "lorapipe tests"], repo, env)
    run_ok(["git", "config", "user.email", "tests@lorapipe.invalid"], repo, env)
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "project"], repo, env)
    return repo, env


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def file_set(folder: Path) -> set[str]:
    """The names of the files directly in `folder` (for exact output-folder checks)."""
    return {p.name for p in Path(folder).iterdir() if p.is_file()}


def model_with_template(model_dir: Path, out: Path, template: str) -> Path:
    """A copy of a model folder whose tokenizer carries another chat template: a fixture name
    (tests/fixtures/chat_templates/<name>.jinja, e.g. ``gemma2``, which refuses a system role) or
    the template's text."""
    source = FIXTURES / "chat_templates" / f"{template}.jinja"
    shutil.copytree(model_dir, out)
    (out / "chat_template.jinja").write_text(source.read_text() if "{" not in template else template)
    return out


def small_text_dataset(work: Path, tiny_model_dir: Path) -> Path:
    """`work`/dataset: 5 training and 2 validation text rows of ≤64 tokens (TEXT × 6 cut into chunks
    with an 8-token overlap, a quarter held out by chunk), built by the dataset stage's code."""
    from lorapipe import build_dataset
    from lorapipe.io import write_jsonl

    text = work / "text"
    text.mkdir()
    (text / "a.txt").write_text(TEXT * 6)
    write_jsonl(text / "manifest.jsonl", [{"source": "a.md", "status": "ok", "output": "a.txt"}])
    build_dataset(
        text, tiny_model_dir, work / "dataset", max_seq_len=64, overlap_tokens=8, val_fraction=0.25, split_by="chunk"
    )
    return work / "dataset"
