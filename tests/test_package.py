"""The package as a whole: its lazy face (``from lorapipe import ...``), the names other projects'
scripts import, and the import graph of src/ (no cycles, counting imports inside functions).

Run: .venv/bin/pytest tests/test_package.py
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from helpers import SRC, imported_modules, module_file, package_face

import lorapipe

# Names that scripts outside the project import (the field cases in ../shared/fieldcases among
# them); a rename must keep them importable or say so in the changelog.
EXTERNAL_NAMES = [
    ("lorapipe", "extract_documents"),
    ("lorapipe", "build_dataset"),
    ("lorapipe", "train_lora"),
    ("lorapipe.evaluate", "hf_answers"),
    ("lorapipe.models", "bundled_gguf"),
    ("lorapipe.models", "load_tokenizer"),
    ("lorapipe.chat_templates", "modelfile_text"),
    ("lorapipe.io", "read_jsonl"),
    ("lorapipe.io", "write_jsonl"),
    ("lorapipe.rows", "tokenize_row"),
    ("lorapipe.train", "training_rows"),
]


@pytest.mark.parametrize("module, name", EXTERNAL_NAMES)
def test_names_external_scripts_import_stay_importable(module, name):
    assert callable(getattr(importlib.import_module(module), name))


def test_every_name_of_the_face_resolves_to_its_module():
    face = package_face()
    assert sorted(face) == lorapipe.__all__
    for name, module in face.items():
        assert getattr(lorapipe, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lorapipe.nothing_here  # noqa: B018


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the lorapipe modules it imports (module level and inside functions); package
    ``__init__`` files that only re-export are left out of the edges that lead into them."""
    graph = {}
    for path in sorted((src / "lorapipe").rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(path, src) if m != name and module_file(m, src)}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search, each once (as a sorted tuple's list)."""
    cycles, seen = set(), set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.add(tuple(sorted(stack[stack.index(nxt) :])))
            elif nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen.add(node)

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
    return [list(c) for c in sorted(cycles)]


def test_src_has_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_counts_imports_inside_functions(tmp_path):
    """The finder can fail: a cycle made of an import inside a function, as plan <-> train once was."""
    package = tmp_path / "lorapipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plan.py").write_text("from lorapipe.hardware import x\n")
    (package / "hardware.py").write_text("def f():\n    from lorapipe.plan import y\n")
    assert find_cycles(import_graph(tmp_path)) == [["lorapipe.hardware", "lorapipe.plan"]]
