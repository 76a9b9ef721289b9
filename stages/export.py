"""DVC stage `export`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro export` (or `python stages/export.py` from the project root; `lorapipe export` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_export

if __name__ == "__main__":
    run_export(load_params())
