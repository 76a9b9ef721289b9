"""Print, or write into dvc.yaml, each stage's code deps: the project files its command executes
(the import closure that tests/test_stages.py checks), replacing the `src/` entries of its deps.

Run from the project root: .venv/bin/python scripts/stage_deps.py [--write]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import import_closure, stage_entry  # noqa: E402


def code_deps(cmd: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in import_closure(stage_entry(cmd)))


def main(write: bool) -> None:
    text = (ROOT / "dvc.yaml").read_text()
    stages = yaml.safe_load(text)["stages"]
    for name, stage in stages.items():
        code = code_deps(stage["cmd"])
        print(f"{name}: {len(code)} files\n  " + "\n  ".join(code))
        if write:
            block = re.search(rf"(?ms)^  {name}:\n.*?^    deps:\n(.*?)^    params:", text)
            kept = [line for line in block.group(1).splitlines(keepends=True) if "- src/" not in line]
            lines = "".join(f"      - {path}\n" for path in code) + "".join(kept)
            text = text[: block.start(1)] + lines + text[block.end(1) :]
    if write:
        (ROOT / "dvc.yaml").write_text(text)


if __name__ == "__main__":
    main("--write" in sys.argv)
